// RMSNorm and one layer's decode attention as single ops: see decode_ops.cpp.
#pragma once

#include <torch/extension.h>

namespace submodel {

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps);

torch::Tensor decode_attention(const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v, torch::Tensor k_cache,
                               torch::Tensor v_cache, const torch::Tensor& slots,
                               const torch::Tensor& positions, const torch::Tensor& cos,
                               const torch::Tensor& sin, bool avx512, bool bf16_dot);

}  // namespace submodel
