// Writing one GEMV output: shared by the bf16/fp32 kernel (masked_linear.cpp) and the int8 one.
#pragma once

#include <torch/extension.h>

namespace submodel {

// y[b, o] = acc + bias[o], in the weights' dtype: writing bf16 here saves torch a conversion op
// per call (~170 per step). G holds y, bias, bf16_y, bf16_bias and out.
template <class G>
inline void store(const G& g, int64_t b, int64_t o, float acc) {
  if (g.bias) {
    acc += g.bf16_bias ? float(static_cast<const c10::BFloat16*>(g.bias)[o])
                       : static_cast<const float*>(g.bias)[o];
  }
  if (g.bf16_y) {
    static_cast<c10::BFloat16*>(g.y)[b * g.out + o] = c10::BFloat16(acc);
  } else {
    static_cast<float*>(g.y)[b * g.out + o] = acc;
  }
}

}  // namespace submodel
