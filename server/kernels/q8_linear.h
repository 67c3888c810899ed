// Int8 weights under the language masks: see q8_linear.cpp.
#pragma once

#include <torch/extension.h>

namespace submodel {

constexpr int64_t kQ8Group = 32;  // columns sharing one scale

torch::Tensor masked_linear_q8(const torch::Tensor& x, const torch::Tensor& codes,
                               const torch::Tensor& scales, const torch::Tensor& masks,
                               const torch::Tensor& row_lang,
                               const c10::optional<torch::Tensor>& bias, bool avx512,
                               bool single_row_tiles);

torch::Tensor dequantize_q8_into(const torch::Tensor& codes, const torch::Tensor& scales,
                                 const c10::optional<torch::Tensor>& mask, torch::Tensor out,
                                 bool avx512);

}  // namespace submodel
