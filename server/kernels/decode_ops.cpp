// Decode-step pieces that torch runs as dozens of small ops (a few microseconds of dispatch
// each, ~30% of a batch-1 step on the default model): RMSNorm of the step's rows, and one
// layer's attention for B sequences that each add one token (rotary embedding of q and k,
// k and v written into the cache, attention over the sequence's cached keys).
//
// Both follow the model's torch code value for value where it rounds: RMSNorm in fp32, rounded
// to the dtype before the weight multiplies (as `weight * h.to(x.dtype)`), the rotary terms
// rounded to the dtype one by one (x * cos, rotated * sin, their sum), scores, softmax and the
// weighted sum of values in fp32. Summation order differs, so results agree to float rounding.
// With AVX-512 the dot products, exponentials (a degree-7 polynomial of 2^f and VSCALEFPS) and
// value sums take 16 lanes at a time when the head size is a multiple of 16; elsewhere scalar.
// bf16 caches with AVX512_BF16 take the scores 16 keys at a time: the keys transposed so that
// each lane is one key, then one VDPBF16PS per pair of dims and head (no horizontal sum per key
// and head, the rotated queries being bf16 values already).
#include "decode_ops.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SUBMODEL_DECODE_X86 1
#include <immintrin.h>
#define DEC_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
#define DEC_AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))
#endif

namespace submodel {
namespace {

using bf16 = c10::BFloat16;

// A float rounded to T and back (no-op for float).
template <typename T>
inline float rounded(float v) {
  return float(T(v));
}

template <typename T>
void rms_norm_rows(const T* x, const T* w, T* y, int64_t rows, int64_t n, float eps) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * n;
    float squares = 0.f;
    for (int64_t i = 0; i < n; ++i) squares += float(xr[i]) * float(xr[i]);
    const float inv = 1.f / std::sqrt(squares / float(n) + eps);
    for (int64_t i = 0; i < n; ++i) {
      y[r * n + i] = T(float(w[i]) * rounded<T>(float(xr[i]) * inv));
    }
  }
}

// x rotated by the rotary embedding (the half-split layout: pairs i, i + D/2), as floats.
template <typename T>
void rotate(const T* x, const T* cos, const T* sin, int64_t d, float* out) {
  const int64_t half = d / 2;
  for (int64_t i = 0; i < d; ++i) {
    const float partner = i < half ? -float(x[i + half]) : float(x[i - half]);
    out[i] = rounded<T>(rounded<T>(float(x[i]) * float(cos[i])) +
                        rounded<T>(partner * float(sin[i])));
  }
}

struct Attention {
  const void* q;  // [B, H * D]
  const void* k;  // [B, G * D]
  const void* v;  // [B, G * D]
  void* k_cache;  // [S, G, T, D]: this layer's
  void* v_cache;
  const int64_t* slots;  // [B]
  const int64_t* positions;  // [B]: where the new token goes; it attends to 0..position
  const void* cos;  // [B, D]
  const void* sin;
  void* out;  // [B, H * D]
  int64_t heads, groups, dim, max_len;
  float scale;
};

// Where row b's group g keeps position pos in a cache.
template <typename T>
T* cached(const Attention& a, void* cache, int64_t b, int64_t g, int64_t pos) {
  return static_cast<T*>(cache) + ((a.slots[b] * a.groups + g) * a.max_len + pos) * a.dim;
}

// Rotated k and v of every row and group into the cache (before any row reads it).
template <typename T>
void write_cache(const Attention& a, int64_t rows) {
  std::vector<float> rot(a.dim);
  for (int64_t b = 0; b < rows; ++b) {
    const T* cos = static_cast<const T*>(a.cos) + b * a.dim;
    const T* sin = static_cast<const T*>(a.sin) + b * a.dim;
    for (int64_t g = 0; g < a.groups; ++g) {
      const int64_t at = b * a.groups * a.dim + g * a.dim;
      rotate(static_cast<const T*>(a.k) + at, cos, sin, a.dim, rot.data());
      T* kc = cached<T>(a, a.k_cache, b, g, a.positions[b]);
      T* vc = cached<T>(a, a.v_cache, b, g, a.positions[b]);
      const T* v = static_cast<const T*>(a.v) + at;
      for (int64_t i = 0; i < a.dim; ++i) {
        kc[i] = T(rot[i]);
        vc[i] = v[i];
      }
    }
  }
}

// The rotated queries of row b's group g, pre-scaled: [heads / groups, D] floats.
template <typename T>
std::vector<float> group_queries(const Attention& a, int64_t b, int64_t g) {
  const int64_t per = a.heads / a.groups;
  std::vector<float> q(per * a.dim);
  const T* cos = static_cast<const T*>(a.cos) + b * a.dim;
  const T* sin = static_cast<const T*>(a.sin) + b * a.dim;
  for (int64_t j = 0; j < per; ++j) {
    const T* x = static_cast<const T*>(a.q) + (b * a.heads + g * per + j) * a.dim;
    rotate(x, cos, sin, a.dim, q.data() + j * a.dim);
  }
  return q;
}

template <typename T>
void store_heads(const Attention& a, int64_t b, int64_t g, const float* acc) {
  const int64_t per = a.heads / a.groups;
  T* out = static_cast<T*>(a.out) + (b * a.heads + g * per) * a.dim;
  for (int64_t i = 0; i < per * a.dim; ++i) out[i] = T(acc[i]);
}

// Row b, group g: its heads against the group's cached keys 0..position.
template <typename T>
void attend_generic(const Attention& a, int64_t b, int64_t g) {
  const int64_t per = a.heads / a.groups, len = a.positions[b] + 1, d = a.dim;
  const std::vector<float> q = group_queries<T>(a, b, g);
  std::vector<float> scores(per * len), acc(per * d, 0.f);
  for (int64_t l = 0; l < len; ++l) {
    const T* key = cached<T>(a, a.k_cache, b, g, l);
    for (int64_t j = 0; j < per; ++j) {
      float dot = 0.f;
      for (int64_t i = 0; i < d; ++i) dot += q[j * d + i] * float(key[i]);
      scores[j * len + l] = dot * a.scale;
    }
  }
  for (int64_t j = 0; j < per; ++j) {
    float* s = scores.data() + j * len;
    const float top = *std::max_element(s, s + len);
    float sum = 0.f;
    for (int64_t l = 0; l < len; ++l) sum += (s[l] = std::exp(s[l] - top));
    for (int64_t l = 0; l < len; ++l) s[l] /= sum;
  }
  for (int64_t l = 0; l < len; ++l) {
    const T* value = cached<T>(a, a.v_cache, b, g, l);
    for (int64_t j = 0; j < per; ++j) {
      const float p = scores[j * len + l];
      for (int64_t i = 0; i < d; ++i) acc[j * d + i] += p * float(value[i]);
    }
  }
  store_heads<T>(a, b, g, acc.data());
}

// Up to this many heads per group take attend_bf16 (their accumulators stay in registers).
constexpr int64_t kMaxBf16DotHeads = 8;

#ifdef SUBMODEL_DECODE_X86
DEC_AVX512 inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
DEC_AVX512 inline __m512 load16(const bf16* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// e^x for x <= 0 (softmax terms): 2^n * 2^f with n = round(x log2 e), |f| <= 1/2, 2^f by its
// Taylor polynomial to degree 7 (relative error ~1e-7), 2^n applied by VSCALEFPS.
DEC_AVX512 inline __m512 exp16(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-100.f));
  const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f));
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, n);
  __m512 p = _mm512_set1_ps(1.5252733804059841e-05f);
  for (float c : {1.5403530393381606e-04f, 1.3333558146428441e-03f, 9.6181291076284772e-03f,
                  5.5504108664821580e-02f, 2.4022650695910071e-01f, 6.9314718055994531e-01f,
                  1.0f}) {
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(c));
  }
  return _mm512_scalef_ps(p, n);
}

constexpr int64_t kMaxHeadsPerGroup = 16;

// 16 rows of 16 32-bit elements, transposed in place (r[c] becomes column c): unpacks of 32 and
// 64 bits within 128-bit lanes, then a 4 x 4 transpose of the lanes.
DEC_AVX512 inline void transpose16(__m512i (&r)[16]) {
  __m512i t[16];
  for (int k = 0; k < 8; ++k) {
    t[2 * k] = _mm512_unpacklo_epi32(r[2 * k], r[2 * k + 1]);
    t[2 * k + 1] = _mm512_unpackhi_epi32(r[2 * k], r[2 * k + 1]);
  }
  for (int k = 0; k < 4; ++k) {  // r[4k + m], lane L: column 4L + m of rows 4k .. 4k + 3
    r[4 * k] = _mm512_unpacklo_epi64(t[4 * k], t[4 * k + 2]);
    r[4 * k + 1] = _mm512_unpackhi_epi64(t[4 * k], t[4 * k + 2]);
    r[4 * k + 2] = _mm512_unpacklo_epi64(t[4 * k + 1], t[4 * k + 3]);
    r[4 * k + 3] = _mm512_unpackhi_epi64(t[4 * k + 1], t[4 * k + 3]);
  }
  for (int m = 0; m < 4; ++m) {
    const __m512i ab02 = _mm512_shuffle_i32x4(r[m], r[4 + m], 0x88);
    const __m512i ab13 = _mm512_shuffle_i32x4(r[m], r[4 + m], 0xDD);
    const __m512i cd02 = _mm512_shuffle_i32x4(r[8 + m], r[12 + m], 0x88);
    const __m512i cd13 = _mm512_shuffle_i32x4(r[8 + m], r[12 + m], 0xDD);
    t[m] = _mm512_shuffle_i32x4(ab02, cd02, 0x88);       // column m
    t[4 + m] = _mm512_shuffle_i32x4(ab13, cd13, 0x88);   // column 4 + m
    t[8 + m] = _mm512_shuffle_i32x4(ab02, cd02, 0xDD);   // column 8 + m
    t[12 + m] = _mm512_shuffle_i32x4(ab13, cd13, 0xDD);  // column 12 + m
  }
  for (int c = 0; c < 16; ++c) r[c] = t[c];
}

// The scores of row b's group g (P heads) against keys 0..position, scaled, into scores[j * len
// + l]: per block of 16 keys and 32 dims, the keys' pairs of dims transposed to lanes, then per
// pair one VDPBF16PS per head with that pair of the head's query broadcast.
template <int P>
DEC_AVX512BF16 void bf16_scores(const Attention& a, int64_t b, int64_t g,
                                const std::vector<float>& q, float* scores, int64_t len) {
  const int64_t d = a.dim, pairs = d / 2;
  std::vector<uint32_t> qp(P * pairs);  // head j's pair i: dim 2i in the low half
  for (int j = 0; j < P; ++j) {
    for (int64_t i = 0; i < pairs; ++i) {
      qp[j * pairs + i] = uint32_t(bf16(q[j * d + 2 * i]).x) |
                          uint32_t(bf16(q[j * d + 2 * i + 1]).x) << 16;
    }
  }
  for (int64_t l0 = 0; l0 < len; l0 += 16) {
    const int64_t n = std::min<int64_t>(16, len - l0);
    __m512 acc[P];
    for (int j = 0; j < P; ++j) acc[j] = _mm512_setzero_ps();
    for (int64_t i0 = 0; i0 < pairs; i0 += 16) {  // 32 dims of each key
      __m512i cols[16];
      for (int k = 0; k < 16; ++k) {
        cols[k] = k < n ? _mm512_loadu_si512(cached<bf16>(a, a.k_cache, b, g, l0 + k) + 2 * i0)
                        : _mm512_setzero_si512();
      }
      transpose16(cols);  // cols[c]: pair i0 + c of the 16 keys
      for (int c = 0; c < 16; ++c) {
        for (int j = 0; j < P; ++j) {
          acc[j] = _mm512_dpbf16_ps(acc[j], (__m512bh)cols[c],
                                    (__m512bh)_mm512_set1_epi32(int(qp[j * pairs + i0 + c])));
        }
      }
    }
    const __mmask16 lanes = n == 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1);
    for (int j = 0; j < P; ++j) {
      _mm512_mask_storeu_ps(scores + j * len + l0, lanes,
                            _mm512_mul_ps(acc[j], _mm512_set1_ps(a.scale)));
    }
  }
}

// The weighted sums of row b's group g's values (P heads, weights in scores[j * len + l]) into
// acc[j * d + i]: the weights rounded to bf16, then per two keys their value rows interleaved dim
// by dim and one VDPBF16PS per 16 dims and head, against the head's two weights broadcast.
template <int P>
DEC_AVX512BF16 void bf16_values(const Attention& a, int64_t b, int64_t g, const float* scores,
                                int64_t len, float* acc) {
  const int64_t d = a.dim, pairs = (len + 1) / 2;
  std::vector<uint32_t> weights(P * pairs);  // head j's keys 2t (low half) and 2t + 1, bf16
  for (int j = 0; j < P; ++j) {
    bf16* w = reinterpret_cast<bf16*>(weights.data() + j * pairs);
    for (int64_t l = 0; l < len; ++l) w[l] = bf16(scores[j * len + l]);
    if (len % 2) w[len] = bf16(0.f);
  }
  for (int64_t i0 = 0; i0 < d; i0 += 32) {
    __m512 lo[P], hi[P];
    for (int j = 0; j < P; ++j) lo[j] = hi[j] = _mm512_setzero_ps();
    for (int64_t t = 0; t < pairs; ++t) {
      const __m512i v0 = _mm512_loadu_si512(cached<bf16>(a, a.v_cache, b, g, 2 * t) + i0);
      const __m512i v1 = 2 * t + 1 < len
                             ? _mm512_loadu_si512(cached<bf16>(a, a.v_cache, b, g, 2 * t + 1) + i0)
                             : _mm512_setzero_si512();
      // 32-bit lane 4k + m: dim i0 + 8k + m of both keys (lo), dim i0 + 8k + 4 + m (hi)
      const __m512bh even = (__m512bh)_mm512_unpacklo_epi16(v0, v1);
      const __m512bh odd = (__m512bh)_mm512_unpackhi_epi16(v0, v1);
      for (int j = 0; j < P; ++j) {
        const __m512bh w = (__m512bh)_mm512_set1_epi32(int(weights[j * pairs + t]));
        lo[j] = _mm512_dpbf16_ps(lo[j], even, w);
        hi[j] = _mm512_dpbf16_ps(hi[j], odd, w);
      }
    }
    alignas(64) float l16[16], h16[16];
    for (int j = 0; j < P; ++j) {
      _mm512_store_ps(l16, lo[j]);
      _mm512_store_ps(h16, hi[j]);
      float* out = acc + j * d + i0;
      for (int k = 0; k < 4; ++k) {
        for (int m = 0; m < 4; ++m) {
          out[8 * k + m] = l16[4 * k + m];
          out[8 * k + 4 + m] = h16[4 * k + m];
        }
      }
    }
  }
}

// Each of per rows of scores [per, len] becomes its softmax, in place.
DEC_AVX512 void softmax_rows(float* scores, int64_t per, int64_t len) {
  for (int64_t j = 0; j < per; ++j) {
    float* s = scores + j * len;
    const __m512 top = _mm512_set1_ps(*std::max_element(s, s + len));
    __m512 sums = _mm512_setzero_ps();
    for (int64_t l = 0; l < len; l += 16) {
      const __mmask16 lanes = len - l >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (len - l)) - 1);
      const __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(lanes, s + l), top));
      sums = _mm512_mask_add_ps(sums, lanes, sums, e);
      _mm512_mask_storeu_ps(s + l, lanes, e);
    }
    const __m512 inv = _mm512_set1_ps(1.f / _mm512_reduce_add_ps(sums));
    for (int64_t l = 0; l < len; l += 16) {
      const __mmask16 lanes = len - l >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (len - l)) - 1);
      _mm512_mask_storeu_ps(s + l, lanes, _mm512_mul_ps(_mm512_maskz_loadu_ps(lanes, s + l), inv));
    }
  }
}

template <typename T>
DEC_AVX512 void attend_avx512(const Attention& a, int64_t b, int64_t g) {
  const int64_t per = a.heads / a.groups, len = a.positions[b] + 1, d = a.dim;
  const std::vector<float> q = group_queries<T>(a, b, g);
  std::vector<float> scores(per * len), acc(per * d, 0.f);
  for (int64_t l = 0; l < len; ++l) {
    const T* key = cached<T>(a, a.k_cache, b, g, l);
    __m512 dots[kMaxHeadsPerGroup];
    for (int64_t j = 0; j < per; ++j) dots[j] = _mm512_setzero_ps();
    for (int64_t i = 0; i < d; i += 16) {
      const __m512 k = load16(key + i);
      for (int64_t j = 0; j < per; ++j) {
        dots[j] = _mm512_fmadd_ps(_mm512_loadu_ps(q.data() + j * d + i), k, dots[j]);
      }
    }
    for (int64_t j = 0; j < per; ++j) scores[j * len + l] = _mm512_reduce_add_ps(dots[j]) * a.scale;
  }
  softmax_rows(scores.data(), per, len);
  for (int64_t i = 0; i < d; i += 16) {
    __m512 sum[kMaxHeadsPerGroup];
    for (int64_t j = 0; j < per; ++j) sum[j] = _mm512_setzero_ps();
    for (int64_t l = 0; l < len; ++l) {
      const __m512 v = load16(cached<T>(a, a.v_cache, b, g, l) + i);
      for (int64_t j = 0; j < per; ++j) {
        sum[j] = _mm512_fmadd_ps(_mm512_set1_ps(scores[j * len + l]), v, sum[j]);
      }
    }
    for (int64_t j = 0; j < per; ++j) _mm512_storeu_ps(acc.data() + j * d + i, sum[j]);
  }
  store_heads<T>(a, b, g, acc.data());
}

// Row b, group g of bf16 caches with P heads a group (bf16_dot_fits): bf16_scores, softmax,
// bf16_values.
template <int P>
DEC_AVX512BF16 void attend_bf16(const Attention& a, int64_t b, int64_t g) {
  const int64_t len = a.positions[b] + 1;
  const std::vector<float> q = group_queries<bf16>(a, b, g);
  std::vector<float> scores(P * len), acc(P * a.dim, 0.f);
  bf16_scores<P>(a, b, g, q, scores.data(), len);
  softmax_rows(scores.data(), P, len);
  bf16_values<P>(a, b, g, scores.data(), len, acc.data());
  store_heads<bf16>(a, b, g, acc.data());
}
#endif

template <typename T>
void attend_all(const Attention& a, int64_t rows, bool avx512, bool bf16_dot) {
  write_cache<T>(a, rows);
  const int64_t per = a.heads / a.groups;
  const int64_t work = per * a.dim * (a.positions[0] + 1);  // per item, for the grain
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(1, work));
  // Rows in the order 0, last, 1, last - 1, ...: a prompt's rows attend to ever more keys, and
  // parallel_for hands each thread one contiguous range of items.
  const auto row = [rows](int64_t r) { return r % 2 ? rows - 1 - r / 2 : r / 2; };
  const bool dot = std::is_same_v<T, bf16> && bf16_dot && bf16_dot_fits(per, a.dim);
  at::parallel_for(0, rows * a.groups, grain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = row(i / a.groups), g = i % a.groups;
#ifdef SUBMODEL_DECODE_X86
      if (dot) {
        using Attend = void (*)(const Attention&, int64_t, int64_t);
        static constexpr Attend by_heads[kMaxBf16DotHeads] = {
            attend_bf16<1>, attend_bf16<2>, attend_bf16<3>, attend_bf16<4>,
            attend_bf16<5>, attend_bf16<6>, attend_bf16<7>, attend_bf16<8>};
        by_heads[per - 1](a, b, g);
        continue;
      }
      if (avx512 && a.dim % 16 == 0 && per <= kMaxHeadsPerGroup) {
        attend_avx512<T>(a, b, g);
        continue;
      }
#endif
      attend_generic<T>(a, b, g);
    }
  });
}

void check_cpu(const torch::Tensor& t, const char* what, const char* op) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous(), op, ": ", what,
              " must be a contiguous CPU tensor");
}

}  // namespace

bool bf16_dot_fits(int64_t heads_per_group, int64_t head_dim) {
  return head_dim % 32 == 0 && heads_per_group >= 1 && heads_per_group <= kMaxBf16DotHeads;
}

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  check_cpu(x, "x", "rms_norm");
  check_cpu(weight, "weight", "rms_norm");
  const int64_t n = x.size(-1);
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == n && weight.scalar_type() == x.scalar_type(),
              "rms_norm: weight must be [", n, "] of x's dtype");
  TORCH_CHECK(x.scalar_type() == torch::kFloat32 || x.scalar_type() == torch::kBFloat16,
              "rms_norm: x must be float32 or bfloat16, got ", x.scalar_type());
  auto y = torch::empty_like(x);
  const int64_t rows = n ? x.numel() / n : 0;
  if (x.scalar_type() == torch::kFloat32) {
    rms_norm_rows(x.data_ptr<float>(), weight.data_ptr<float>(), y.data_ptr<float>(), rows, n,
                  float(eps));
  } else {
    rms_norm_rows(static_cast<const bf16*>(x.data_ptr()),
                  static_cast<const bf16*>(weight.data_ptr()), static_cast<bf16*>(y.data_ptr()),
                  rows, n, float(eps));
  }
  return y;
}

torch::Tensor decode_attention(const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v, torch::Tensor k_cache,
                               torch::Tensor v_cache, const torch::Tensor& slots,
                               const torch::Tensor& positions, const torch::Tensor& cos,
                               const torch::Tensor& sin, bool avx512, bool bf16_dot) {
  const char* op = "decode_attention";
  for (const torch::Tensor* t : std::initializer_list<const torch::Tensor*>{
           &q, &k, &v, &k_cache, &v_cache, &slots, &positions, &cos, &sin}) {
    check_cpu(*t, "every argument", op);
  }
  TORCH_CHECK(k_cache.dim() == 4 && v_cache.sizes() == k_cache.sizes(), op,
              ": the caches must be [slots, groups, max_len, head_dim]");
  const int64_t rows = q.size(0), groups = k_cache.size(1), max_len = k_cache.size(2),
                dim = k_cache.size(3);
  const auto dtype = q.scalar_type();
  for (const torch::Tensor* t :
       std::initializer_list<const torch::Tensor*>{&k, &v, &k_cache, &v_cache, &cos, &sin}) {
    TORCH_CHECK(t->scalar_type() == dtype, op, ": q, k, v, the caches, cos and sin must share "
                "a dtype");
  }
  TORCH_CHECK(dtype == torch::kFloat32 || dtype == torch::kBFloat16, op,
              ": float32 or bfloat16 only, got ", dtype);
  TORCH_CHECK(q.dim() == 2 && q.size(1) % (groups * dim) == 0 && dim % 2 == 0, op,
              ": q must be [rows, heads * head_dim] with heads a multiple of the groups");
  TORCH_CHECK(k.sizes() == v.sizes() && k.dim() == 2 && k.size(0) == rows &&
                  k.size(1) == groups * dim, op, ": k and v must be [rows, groups * head_dim]");
  TORCH_CHECK(cos.sizes() == sin.sizes() && cos.dim() == 2 && cos.size(0) == rows &&
                  cos.size(1) == dim, op, ": cos and sin must be [rows, head_dim]");
  TORCH_CHECK(slots.scalar_type() == torch::kInt64 && positions.scalar_type() == torch::kInt64 &&
                  slots.numel() == rows && positions.numel() == rows, op,
              ": slots and positions must be int64 [rows]");
  const int64_t* sp = slots.data_ptr<int64_t>();
  const int64_t* pp = positions.data_ptr<int64_t>();
  for (int64_t b = 0; b < rows; ++b) {
    TORCH_CHECK(sp[b] >= 0 && sp[b] < k_cache.size(0) && pp[b] >= 0 && pp[b] < max_len, op,
                ": row ", b, " has slot ", sp[b], " and position ", pp[b], " outside the cache");
  }
  auto out = torch::empty_like(q);
  const int64_t heads = q.size(1) / dim;
  Attention a{q.data_ptr(), k.data_ptr(), v.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(),
              sp, pp, cos.data_ptr(), sin.data_ptr(), out.data_ptr(), heads, groups, dim,
              max_len, float(1.0 / std::sqrt(double(dim)))};
  if (dtype == torch::kFloat32) {
    attend_all<float>(a, rows, avx512, false);
  } else {
    attend_all<bf16>(a, rows, avx512, bf16_dot);
  }
  return out;
}

}  // namespace submodel
