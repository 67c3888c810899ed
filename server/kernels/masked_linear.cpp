// Masked Linear kernels for per-language sub-models (DESIGN.md "Engine", issue 7).
//
// A mask is uint8 [out, ceil(in/8)]: bit j of byte b is column 8b+j (little-endian), 1 = kept.
// masked_linear computes y[b] = x[b] @ (W * M[lang[b]])^T for a batch whose rows may each use a
// different language (or none, lang = -1). Rows are grouped by language; for every output row the
// weight row is fetched from memory once, and each group re-reads it from L1 under its own bits
// (AVX-512 masked loads fed straight from the packed bytes), so a mixed batch costs about what a
// single-language batch costs. Work is split over output rows with at::parallel_for (torch's pool).
//
// Paths, picked at run time (set_path forces one): generic (plain C++), avx512 (F/BW/VL/DQ; bf16
// widened to fp32), avx512_bf16 (adds vdpbf16ps for bf16 weights). All accumulate in fp32.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SUBMODEL_X86 1
#include <immintrin.h>
#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
#define AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))
#endif

namespace {

enum Path : int64_t { kGeneric = 0, kAvx512 = 1, kAvx512Bf16 = 2 };

bool cpu_has(const char* name) {
#ifdef SUBMODEL_X86
  __builtin_cpu_init();
  if (!std::strcmp(name, "avx2")) return __builtin_cpu_supports("avx2");
  if (!std::strcmp(name, "fma")) return __builtin_cpu_supports("fma");
  if (!std::strcmp(name, "avx512f")) return __builtin_cpu_supports("avx512f");
  if (!std::strcmp(name, "avx512bw")) return __builtin_cpu_supports("avx512bw");
  if (!std::strcmp(name, "avx512vl")) return __builtin_cpu_supports("avx512vl");
  if (!std::strcmp(name, "avx512dq")) return __builtin_cpu_supports("avx512dq");
  if (!std::strcmp(name, "avx512bf16")) return __builtin_cpu_supports("avx512bf16");
#endif
  (void)name;
  return false;
}

bool path_supported(int64_t path) {
  const bool avx512 =
      cpu_has("avx512f") && cpu_has("avx512bw") && cpu_has("avx512vl") && cpu_has("avx512dq");
  switch (path) {
    case kGeneric: return true;
    case kAvx512: return avx512;
    case kAvx512Bf16: return avx512 && cpu_has("avx512bf16");
    default: return false;
  }
}

int64_t best_path() {
  for (int64_t p : {kAvx512Bf16, kAvx512}) {
    if (path_supported(p)) return p;
  }
  return kGeneric;
}

int64_t g_path = best_path();

// Reads up to 4 mask bytes without running past the end of the row.
inline uint32_t load_bits(const uint8_t* p, int64_t nbytes) {
  uint32_t bits = 0;
  if (nbytes >= 4) {
    std::memcpy(&bits, p, 4);
    return bits;
  }
  for (int64_t k = 0; k < nbytes; ++k) bits |= uint32_t(p[k]) << (8 * k);
  return bits;
}

// A contiguous run of bits from 32-column block `i`, restricted to the valid columns.
inline uint32_t block_bits(const uint8_t* row, int64_t i, int64_t cols) {
  const int64_t n = std::min<int64_t>(32, cols - i);
  const uint32_t valid = n == 32 ? ~0u : ((1u << n) - 1);
  return load_bits(row + i / 8, (n + 7) / 8) & valid;
}

inline uint32_t valid_bits(int64_t i, int64_t cols) {
  const int64_t n = std::min<int64_t>(32, cols - i);
  return n == 32 ? ~0u : ((1u << n) - 1);
}

inline float bf16_to_float(uint16_t v) {
  const uint32_t u = uint32_t(v) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Rows of one batch that share a mask; the all-ones row (stride 0) stands for dense.
struct Group {
  const uint8_t* mask;
  int64_t stride;  // bytes between the mask rows of consecutive output rows
  std::vector<int64_t> rows;
};

struct Gemv {
  const void* x;  // [B, in]: bf16 for avx512_bf16 with bf16 weights, else fp32
  const void* w;  // [out, in]: fp32 or bf16
  const float* bias;  // [out] or nullptr
  float* y;  // [B, out]
  int64_t in, out;
  std::vector<Group> groups;
};

constexpr int kMaxRows = 8;  // batch rows per register block
#ifndef SUBMODEL_PREFETCH
#define SUBMODEL_PREFETCH 2048
#endif
constexpr int64_t kPrefetchBytes = SUBMODEL_PREFETCH;  // how far ahead in W to prefetch

// ---------------------------------------------------------------- generic
template <typename T>
inline float to_float(T v);
template <>
inline float to_float<float>(float v) { return v; }
template <>
inline float to_float<uint16_t>(uint16_t v) { return bf16_to_float(v); }

template <typename T>
void gemv_generic(const Gemv& g, int64_t o0, int64_t o1) {
  const int64_t in = g.in;
  const float* x = static_cast<const float*>(g.x);
  for (int64_t o = o0; o < o1; ++o) {
    const T* w = static_cast<const T*>(g.w) + o * in;
    for (const Group& grp : g.groups) {
      const uint8_t* m = grp.mask + o * grp.stride;
      for (int64_t r : grp.rows) {
        const float* xr = x + r * in;
        float acc[8] = {};
        int64_t i = 0;
        for (; i + 8 <= in; i += 8) {
          const unsigned bits = m[i / 8];
          for (int j = 0; j < 8; ++j) {
            acc[j] += ((bits >> j) & 1) ? to_float(w[i + j]) * xr[i + j] : 0.f;
          }
        }
        float s = 0.f;
        for (; i < in; ++i) {
          if ((m[i / 8] >> (i % 8)) & 1) s += to_float(w[i]) * xr[i];
        }
        for (float a : acc) s += a;
        g.y[r * g.out + o] = s + (g.bias ? g.bias[o] : 0.f);
      }
    }
  }
}

#ifdef SUBMODEL_X86
// ---------------------------------------------------------------- avx512 (fp32 accumulate)
AVX512 inline __m512 load_ps(const float* p, __mmask16 k) { return _mm512_maskz_loadu_ps(k, p); }

AVX512 inline __m512 load_ps(const uint16_t* p, __mmask16 k) {
  const __m256i h = _mm256_maskz_loadu_epi16(k, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// NB batch rows of one group against weight row `w`, 32 columns per step in two fp32 halves.
template <typename T, int NB>
AVX512 void dot_avx512(const Gemv& g, const T* w, const uint8_t* m, const int64_t* rows,
                       int64_t o) {
  const int64_t in = g.in;
  const float* x[NB];
  __m512 lo[NB], hi[NB];
#pragma GCC unroll 8
  for (int b = 0; b < NB; ++b) {
    x[b] = static_cast<const float*>(g.x) + rows[b] * in;
    lo[b] = _mm512_setzero_ps();
    hi[b] = _mm512_setzero_ps();
  }
  int64_t i = 0;
  for (; i + 32 <= in; i += 32) {
    uint32_t bits;
    std::memcpy(&bits, m + i / 8, 4);
    const char* ahead = reinterpret_cast<const char*>(w + i) + kPrefetchBytes;
    _mm_prefetch(ahead, _MM_HINT_T0);
    if (sizeof(T) == 4) _mm_prefetch(ahead + 64, _MM_HINT_T0);
    const __m512 w0 = load_ps(w + i, __mmask16(bits));
    const __m512 w1 = load_ps(w + i + 16, __mmask16(bits >> 16));
#pragma GCC unroll 8
    for (int b = 0; b < NB; ++b) {
      lo[b] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x[b] + i), lo[b]);
      hi[b] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x[b] + i + 16), hi[b]);
    }
  }
  if (i < in) {
    const uint32_t valid = valid_bits(i, in), bits = block_bits(m, i, in);
    const char* ahead = reinterpret_cast<const char*>(w + i) + kPrefetchBytes;
    _mm_prefetch(ahead, _MM_HINT_T0);
    if (sizeof(T) == 4) _mm_prefetch(ahead + 64, _MM_HINT_T0);
    const __m512 w0 = load_ps(w + i, __mmask16(bits));
    const __m512 w1 = load_ps(w + i + 16, __mmask16(bits >> 16));
#pragma GCC unroll 8
    for (int b = 0; b < NB; ++b) {
      lo[b] = _mm512_fmadd_ps(w0, _mm512_maskz_loadu_ps(__mmask16(valid), x[b] + i), lo[b]);
      hi[b] = _mm512_fmadd_ps(w1, _mm512_maskz_loadu_ps(__mmask16(valid >> 16), x[b] + i + 16),
                              hi[b]);
    }
  }
#pragma GCC unroll 8
  for (int b = 0; b < NB; ++b) {
    const float s = _mm512_reduce_add_ps(_mm512_add_ps(lo[b], hi[b]));
    g.y[rows[b] * g.out + o] = s + (g.bias ? g.bias[o] : 0.f);
  }
}

// Same, bf16 weights and bf16 activations: vdpbf16ps does 32 multiply-adds per instruction.
template <int NB>
AVX512BF16 void dot_avx512_bf16(const Gemv& g, const uint16_t* w, const uint8_t* m,
                                const int64_t* rows, int64_t o) {
  const int64_t in = g.in;
  const uint16_t* x[NB];
  __m512 acc[NB];
#pragma GCC unroll 8
  for (int b = 0; b < NB; ++b) {
    x[b] = static_cast<const uint16_t*>(g.x) + rows[b] * in;
    acc[b] = _mm512_setzero_ps();
  }
  int64_t i = 0;
  for (; i + 32 <= in; i += 32) {
    uint32_t bits;
    std::memcpy(&bits, m + i / 8, 4);
    _mm_prefetch(reinterpret_cast<const char*>(w + i) + kPrefetchBytes, _MM_HINT_T0);
    const __m512bh wv = (__m512bh)_mm512_maskz_loadu_epi16(bits, w + i);
#pragma GCC unroll 8
    for (int b = 0; b < NB; ++b) {
      acc[b] = _mm512_dpbf16_ps(acc[b], wv, (__m512bh)_mm512_loadu_si512(x[b] + i));
    }
  }
  if (i < in) {
    const uint32_t valid = valid_bits(i, in), bits = block_bits(m, i, in);
    const __m512bh wv = (__m512bh)_mm512_maskz_loadu_epi16(bits, w + i);
#pragma GCC unroll 8
    for (int b = 0; b < NB; ++b) {
      acc[b] = _mm512_dpbf16_ps(acc[b], wv, (__m512bh)_mm512_maskz_loadu_epi16(valid, x[b] + i));
    }
  }
#pragma GCC unroll 8
  for (int b = 0; b < NB; ++b) {
    const float s = _mm512_reduce_add_ps(acc[b]);
    g.y[rows[b] * g.out + o] = s + (g.bias ? g.bias[o] : 0.f);
  }
}

template <typename Dot>
inline void for_row_blocks(const Gemv& g, int64_t o0, int64_t o1, Dot dot) {
  for (int64_t o = o0; o < o1; ++o) {
    for (const Group& grp : g.groups) {
      const uint8_t* m = grp.mask + o * grp.stride;
      const int64_t n = int64_t(grp.rows.size());
      for (int64_t b = 0; b < n; b += kMaxRows) {
        dot(m, grp.rows.data() + b, std::min<int64_t>(kMaxRows, n - b), o);
      }
    }
  }
}

#define SUBMODEL_DISPATCH_NB(nb, CALL) \
  switch (nb) {                        \
    case 1: CALL(1); break;            \
    case 2: CALL(2); break;            \
    case 3: CALL(3); break;            \
    case 4: CALL(4); break;            \
    case 5: CALL(5); break;            \
    case 6: CALL(6); break;            \
    case 7: CALL(7); break;            \
    default: CALL(8); break;           \
  }

template <typename T>
AVX512 void gemv_avx512(const Gemv& g, int64_t o0, int64_t o1) {
  for_row_blocks(g, o0, o1, [&](const uint8_t* m, const int64_t* rows, int64_t nb, int64_t o) {
    const T* w = static_cast<const T*>(g.w) + o * g.in;
#define CALL(N) dot_avx512<T, N>(g, w, m, rows, o)
    SUBMODEL_DISPATCH_NB(nb, CALL)
#undef CALL
  });
}

AVX512BF16 void gemv_avx512_bf16(const Gemv& g, int64_t o0, int64_t o1) {
  for_row_blocks(g, o0, o1, [&](const uint8_t* m, const int64_t* rows, int64_t nb, int64_t o) {
    const uint16_t* w = static_cast<const uint16_t*>(g.w) + o * g.in;
#define CALL(N) dot_avx512_bf16<N>(g, w, m, rows, o)
    SUBMODEL_DISPATCH_NB(nb, CALL)
#undef CALL
  });
}
#endif  // SUBMODEL_X86

// ---------------------------------------------------------------- mask copies
// dst[r, i] = keep ? src[r, i] : 0, written only where `touch` is set: every column for
// apply_mask_into, the columns where old and new masks differ for swap_masks_.
struct MaskCopy {
  char* dst;
  const char* src;
  const uint8_t *keep, *old;  // mask rows; stride 0 = the all-ones row
  int64_t keep_stride, old_stride, cols, esize;
  bool swap;
};

inline uint32_t touch_bits(const MaskCopy& c, const uint8_t* keep, const uint8_t* old, int64_t i,
                           uint32_t* load) {
  const uint32_t k = block_bits(keep, i, c.cols);
  const uint32_t t = c.swap ? (k ^ block_bits(old, i, c.cols)) : valid_bits(i, c.cols);
  *load = k & t;
  return t;
}

void mask_copy_generic(const MaskCopy& c, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* keep = c.keep + r * c.keep_stride;
    const uint8_t* old = c.old + r * c.old_stride;
    char* dst = c.dst + r * c.cols * c.esize;
    const char* src = c.src + r * c.cols * c.esize;
    for (int64_t i = 0; i < c.cols; i += 32) {
      uint32_t load;
      const uint32_t touch = touch_bits(c, keep, old, i, &load);
      for (int j = 0; j < 32; ++j) {
        if (!((touch >> j) & 1)) continue;
        const int64_t off = (i + j) * c.esize;
        if ((load >> j) & 1) {
          std::memcpy(dst + off, src + off, c.esize);
        } else {
          std::memset(dst + off, 0, c.esize);
        }
      }
    }
  }
}

#ifdef SUBMODEL_X86
AVX512 void mask_copy_avx512(const MaskCopy& c, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* keep = c.keep + r * c.keep_stride;
    const uint8_t* old = c.old + r * c.old_stride;
    char* dst = c.dst + r * c.cols * c.esize;
    const char* src = c.src + r * c.cols * c.esize;
    for (int64_t i = 0; i < c.cols; i += 32) {
      uint32_t load;
      const uint32_t touch = touch_bits(c, keep, old, i, &load);
      if (!touch) continue;
      char* d = dst + i * c.esize;
      const char* s = src + i * c.esize;
      if (c.esize == 2) {
        _mm512_mask_storeu_epi16(d, touch, _mm512_maskz_loadu_epi16(load, s));
      } else {
        _mm512_mask_storeu_epi32(d, __mmask16(touch), _mm512_maskz_loadu_epi32(__mmask16(load), s));
        _mm512_mask_storeu_epi32(d + 64, __mmask16(touch >> 16),
                                 _mm512_maskz_loadu_epi32(__mmask16(load >> 16), s + 64));
      }
    }
  }
}
#endif

// ---------------------------------------------------------------- ops
int64_t grain(int64_t cols, int64_t esize) {
  return std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(1, cols * esize));
}

void check_mask(const torch::Tensor& m, int64_t rows, int64_t cols, const char* what) {
  TORCH_CHECK(m.device().is_cpu() && m.scalar_type() == torch::kUInt8 && m.dim() == 2 &&
                  m.size(0) == rows && m.size(1) == (cols + 7) / 8 && m.is_contiguous(),
              what, " must be a contiguous CPU uint8 tensor of shape [", rows, ", ", (cols + 7) / 8,
              "], got ", m.scalar_type(), " ", m.sizes());
}

torch::Tensor masked_linear(const torch::Tensor& x_in, const torch::Tensor& weight,
                            const torch::Tensor& masks, const torch::Tensor& row_lang,
                            const c10::optional<torch::Tensor>& bias) {
  TORCH_CHECK(weight.device().is_cpu() && weight.dim() == 2 && weight.is_contiguous(),
              "masked_linear: weight must be a contiguous 2-D CPU tensor, got ", weight.sizes());
  const auto dtype = weight.scalar_type();
  TORCH_CHECK(dtype == torch::kFloat32 || dtype == torch::kBFloat16,
              "masked_linear: weight dtype must be float32 or bfloat16, got ", dtype);
  const int64_t out = weight.size(0), in = weight.size(1), nbytes = (in + 7) / 8;
  TORCH_CHECK(x_in.device().is_cpu() && x_in.dim() == 2 && x_in.size(1) == in &&
                  x_in.scalar_type() == dtype,
              "masked_linear: x must be a 2-D CPU ", dtype, " tensor with ", in,
              " columns, got ", x_in.scalar_type(), " ", x_in.sizes());
  const int64_t B = x_in.size(0);
  TORCH_CHECK(masks.device().is_cpu() && masks.scalar_type() == torch::kUInt8 &&
                  masks.dim() == 3 && masks.size(1) == out && masks.size(2) == nbytes &&
                  masks.is_contiguous(),
              "masked_linear: masks must be a contiguous CPU uint8 tensor [L, ", out, ", ", nbytes,
              "], got ", masks.scalar_type(), " ", masks.sizes());
  TORCH_CHECK(row_lang.device().is_cpu() && row_lang.scalar_type() == torch::kInt32 &&
                  row_lang.dim() == 1 && row_lang.size(0) == B,
              "masked_linear: row_lang must be an int32 CPU tensor of length ", B, ", got ",
              row_lang.scalar_type(), " ", row_lang.sizes());
  torch::Tensor bias_f;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == out,
                "masked_linear: bias must have shape [", out, "], got ", bias->sizes());
    bias_f = bias->to(torch::kFloat32).contiguous();
  }

  const int64_t L = masks.size(0);
  const auto lang = row_lang.contiguous();
  const int32_t* lp = lang.data_ptr<int32_t>();
  const std::vector<uint8_t> ones(nbytes + 4, 0xFF);
  Gemv g;
  std::vector<int64_t> group_of(L + 1, -1);
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(lp[b] >= -1 && lp[b] < L, "masked_linear: row_lang[", b, "] = ", lp[b],
                " is outside [-1, ", L, ")");
    int64_t& gi = group_of[lp[b] + 1];
    if (gi < 0) {
      gi = int64_t(g.groups.size());
      if (lp[b] < 0) {
        g.groups.push_back({ones.data(), 0, {}});
      } else {
        g.groups.push_back({masks.data_ptr<uint8_t>() + lp[b] * out * nbytes, nbytes, {}});
      }
    }
    g.groups[gi].rows.push_back(b);
  }

  const bool bf16 = dtype == torch::kBFloat16;
  const bool native_bf16 = bf16 && g_path == kAvx512Bf16;
  const auto x = native_bf16 ? x_in.contiguous() : x_in.to(torch::kFloat32).contiguous();
  auto y = torch::empty({B, out}, x_in.options().dtype(torch::kFloat32));
  g.x = x.data_ptr();
  g.w = weight.data_ptr();
  g.bias = bias_f.defined() ? bias_f.data_ptr<float>() : nullptr;
  g.y = y.data_ptr<float>();
  g.in = in;
  g.out = out;
  if (B == 0) return y.to(dtype);

  at::parallel_for(0, out, grain(in, weight.element_size()), [&](int64_t o0, int64_t o1) {
#ifdef SUBMODEL_X86
    if (native_bf16) return gemv_avx512_bf16(g, o0, o1);
    if (g_path != kGeneric) {
      return bf16 ? gemv_avx512<uint16_t>(g, o0, o1) : gemv_avx512<float>(g, o0, o1);
    }
#endif
    bf16 ? gemv_generic<uint16_t>(g, o0, o1) : gemv_generic<float>(g, o0, o1);
  });
  return bf16 ? y.to(dtype) : y;
}

void run_mask_copy(MaskCopy& c, int64_t rows) {
  at::parallel_for(0, rows, grain(c.cols, c.esize), [&](int64_t r0, int64_t r1) {
#ifdef SUBMODEL_X86
    if (g_path != kGeneric) return mask_copy_avx512(c, r0, r1);
#endif
    mask_copy_generic(c, r0, r1);
  });
}

void check_weight_like(const torch::Tensor& t, const torch::Tensor& weight, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous() && t.sizes() == weight.sizes() &&
                  t.scalar_type() == weight.scalar_type(),
              what, " must be a contiguous CPU ", weight.scalar_type(), " tensor of shape ",
              weight.sizes(), ", got ", t.scalar_type(), " ", t.sizes());
}

void check_weight(const torch::Tensor& weight, const char* op) {
  TORCH_CHECK(weight.device().is_cpu() && weight.dim() == 2 && weight.is_contiguous() &&
                  (weight.element_size() == 2 || weight.element_size() == 4),
              op, ": weight must be a contiguous 2-D CPU tensor of 2- or 4-byte elements, got ",
              weight.scalar_type(), " ", weight.sizes());
}

torch::Tensor apply_mask_into(const torch::Tensor& weight, const torch::Tensor& mask,
                              torch::Tensor out) {
  check_weight(weight, "apply_mask_into");
  const int64_t rows = weight.size(0), cols = weight.size(1);
  check_mask(mask, rows, cols, "apply_mask_into: mask");
  check_weight_like(out, weight, "apply_mask_into: out");
  MaskCopy c{static_cast<char*>(out.data_ptr()), static_cast<const char*>(weight.data_ptr()),
             mask.data_ptr<uint8_t>(), nullptr, mask.size(1), 0, cols,
             int64_t(weight.element_size()), false};
  run_mask_copy(c, rows);
  return out;
}

void swap_masks_(torch::Tensor weight, const torch::Tensor& dense,
                 const c10::optional<torch::Tensor>& old_mask,
                 const c10::optional<torch::Tensor>& new_mask) {
  check_weight(weight, "swap_masks_");
  const int64_t rows = weight.size(0), cols = weight.size(1), nbytes = (cols + 7) / 8;
  check_weight_like(dense, weight, "swap_masks_: dense_source");
  const bool has_old = old_mask.has_value() && old_mask->defined();
  const bool has_new = new_mask.has_value() && new_mask->defined();
  if (has_old) check_mask(*old_mask, rows, cols, "swap_masks_: old_mask");
  if (has_new) check_mask(*new_mask, rows, cols, "swap_masks_: new_mask");
  if (has_old == has_new && (!has_old || old_mask->data_ptr() == new_mask->data_ptr())) return;
  const std::vector<uint8_t> ones(nbytes + 4, 0xFF);
  MaskCopy c{static_cast<char*>(weight.data_ptr()),
             static_cast<const char*>(dense.data_ptr()),
             has_new ? new_mask->data_ptr<uint8_t>() : ones.data(),
             has_old ? old_mask->data_ptr<uint8_t>() : ones.data(),
             has_new ? nbytes : 0,
             has_old ? nbytes : 0,
             cols,
             int64_t(weight.element_size()),
             true};
  run_mask_copy(c, rows);
}

void set_path(int64_t path) {
  TORCH_CHECK(path_supported(path), "kernel path ", path, " is not supported by this CPU");
  g_path = path;
}

int64_t get_path() { return g_path; }

std::vector<std::string> cpu_features() {
  std::vector<std::string> found;
  for (const char* f : {"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512bf16"}) {
    if (cpu_has(f)) found.emplace_back(f);
  }
  return found;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("masked_linear", &masked_linear, "y = x @ (W * M[row_lang])^T, one language per row");
  m.def("apply_mask_into", &apply_mask_into, "out = W * M (one language's packed mask)");
  m.def("swap_masks_", &swap_masks_, "in place: move weight from old_mask to new_mask");
  m.def("set_path", &set_path);
  m.def("get_path", &get_path);
  m.def("path_supported", &path_supported);
  m.def("cpu_features", &cpu_features);
}
