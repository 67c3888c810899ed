// RMSNorm and one layer's decode attention as single ops: see decode_ops.cpp.
#pragma once

#include <torch/extension.h>

namespace submodel {

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps);

// Whether decode_attention's VDPBF16PS path takes bf16 caches of this head shape.
bool bf16_dot_fits(int64_t heads_per_group, int64_t head_dim);

torch::Tensor decode_attention(const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v, torch::Tensor k_cache,
                               torch::Tensor v_cache, const torch::Tensor& slots,
                               const torch::Tensor& positions, const torch::Tensor& cos,
                               const torch::Tensor& sin, bool avx512, bool bf16_dot);

}  // namespace submodel
