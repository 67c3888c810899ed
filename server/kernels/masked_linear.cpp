// Masked Linear kernels for per-language sub-models (DESIGN.md "Engine", issue 7).
//
// A mask is uint8 [out, ceil(in/8)]: bit j of byte b is column 8b+j (little-endian), 1 = kept.
// masked_linear computes y[b] = x[b] @ (W * M[lang[b]])^T for a batch whose rows may each use a
// different language (or none, lang = -1). Rows are grouped by language. A block of output rows
// is fetched from memory once; each group re-reads it from cache under its own bits (AVX-512
// masked loads fed straight from the packed bytes), so weights cross the memory bus once per
// call whatever the mix. Work is split over output rows with at::parallel_for (torch's intra-op
// pool), and everything accumulates in fp32.
//
// Paths, picked at run time with __builtin_cpu_supports (set_path forces one): generic (scalar
// C++, any CPU), avx2 (AVX2+FMA; mask bytes expanded to lanes by a table), avx512 (F/BW/VL/DQ;
// bf16 widened to fp32 for the FMAs), avx512bf16 (bf16 weights and x straight into VDPBF16PS:
// half the multiply instructions, no widening). Each is compiled with a per-function target
// attribute, so the build needs no -march flag. Int8 weights: q8_linear.cpp.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include "decode_ops.h"
#include "gemv_output.h"
#include "q8_linear.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SUBMODEL_X86 1
#include <immintrin.h>
#define AVX2 __attribute__((target("avx2,fma")))
#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))
#endif

namespace {

using submodel::store;

enum Path : int64_t { kGeneric = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Bf16 = 3 };

bool cpu_has(const std::string& name) {
#ifdef SUBMODEL_X86
  __builtin_cpu_init();
  if (name == "avx2") return __builtin_cpu_supports("avx2");
  if (name == "fma") return __builtin_cpu_supports("fma");
  if (name == "avx512f") return __builtin_cpu_supports("avx512f");
  if (name == "avx512bw") return __builtin_cpu_supports("avx512bw");
  if (name == "avx512vl") return __builtin_cpu_supports("avx512vl");
  if (name == "avx512dq") return __builtin_cpu_supports("avx512dq");
  if (name == "avx512bf16") return __builtin_cpu_supports("avx512bf16");
  if (name == "avx512vnni") return __builtin_cpu_supports("avx512vnni");
#endif
  (void)name;
  return false;
}

bool path_supported(int64_t path) {
  switch (path) {
    case kGeneric: return true;
    case kAvx2: return cpu_has("avx2") && cpu_has("fma");
    case kAvx512:
      return cpu_has("avx512f") && cpu_has("avx512bw") && cpu_has("avx512vl") &&
             cpu_has("avx512dq");
    case kAvx512Bf16: return path_supported(kAvx512) && cpu_has("avx512bf16");
    default: return false;
  }
}

int64_t best_path() {
  for (int64_t p : {kAvx512Bf16, kAvx512, kAvx2}) {
    if (path_supported(p)) return p;
  }
  return kGeneric;
}

int64_t g_path = best_path();
// Batches of 1-2 rows in tiles of one output row: each thread then reads its weights as one
// sequential stream (Zen 4, 24 layers from DRAM, against 4-row tiles: bf16 batch 1 1.16x, batch
// 2 1.20x, 2 rows of 2 languages 1.30x, fp32 batch 1 1.27x; batch 3 0.98x, batch 4 0.93x, so
// wider batches keep their tiles). Off by default; the engine measures both on its machine
// (kernels.use_fastest_tiles). The int8 kernel's tiles follow it too.
bool g_single_row_tiles = false;

// The mask bits of columns [i, i + n) of one row (n <= 32), never reading past the row's end.
inline uint32_t mask_bits(const uint8_t* row, int64_t i, int64_t n) {
  uint32_t bits = 0;
  if (n == 32) {
    std::memcpy(&bits, row + i / 8, 4);
  } else if (n == 16) {
    uint16_t b16;
    std::memcpy(&b16, row + i / 8, 2);
    bits = b16;
  } else {
    for (int64_t k = 0; k < (n + 7) / 8; ++k) bits |= uint32_t(row[i / 8 + k]) << (8 * k);
    bits &= (1u << n) - 1;
  }
  return bits;
}

// Rows of one batch that share a mask; the all-ones row (stride 0) stands for dense.
struct Group {
  const uint8_t* mask;
  int64_t stride;  // bytes between the mask rows of consecutive output rows
  std::vector<int64_t> rows;
};

struct Gemv {
  const float* x;  // [B, x_stride]: see unpack_order_x for the AVX-512 bf16 layout
  const uint16_t* xh;  // [B, in]: x as bf16, for the avx512bf16 path
  int64_t x_stride;
  const void* w;  // [out, in]: fp32 or bf16
  const void* bias;  // [out] or nullptr: fp32, or bf16 if bf16_bias
  void* y;  // [B, out]: fp32, or bf16 if bf16_y
  bool bf16_bias, bf16_y;
  int64_t in, out, rows;  // rows: the batch size
  std::vector<Group> groups;
};

constexpr int kMaxRows = 8;  // batch rows per register tile
constexpr int kRowBlock = 4;  // output rows fetched together; each group re-reads them from cache

// ---------------------------------------------------------------- generic
inline uint32_t fp32_bits(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  return u;
}
inline uint32_t fp32_bits(uint16_t bf16) { return uint32_t(bf16) << 16; }

inline float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Scalar and branch-free (random mask bits defeat branch prediction).
template <typename T>
void gemv_generic(const Gemv& g, int64_t o0, int64_t o1) {
  for (int64_t o = o0; o < o1; ++o) {
    const T* w = static_cast<const T*>(g.w) + o * g.in;
    for (const Group& grp : g.groups) {
      const uint8_t* m = grp.mask + o * grp.stride;
      for (int64_t b : grp.rows) {
        const float* x = g.x + b * g.x_stride;
        float acc = 0.f;
        for (int64_t i = 0; i < g.in; ++i) {
          const uint32_t keep = 0u - ((m[i / 8] >> (i % 8)) & 1u);
          acc += from_bits(fp32_bits(w[i]) & keep) * x[i];
        }
        store(g, b, o, acc);
      }
    }
  }
}

#ifdef SUBMODEL_X86
// ---------------------------------------------------------------- SIMD driver
// Output rows in blocks of kRowBlock; every group of batch rows re-reads the block from cache.
// Isa::tile<T, R, NB> does R output rows x NB batch rows; Isa::rows(NB) picks R so that the
// R * NB accumulators stay in registers, unless single-row tiles are on for 1-2 batch rows.
template <typename Isa, typename T, int NB>
void rows_tiled(const Gemv& g, const Group& grp, const int64_t* rows, int64_t o, int64_t n) {
  constexpr int R = Isa::rows(NB);
  int64_t k = 0;
  if (NB > 2 || !g_single_row_tiles) {
    for (; k + R <= n; k += R) Isa::template tile<T, R, NB>(g, grp, rows, o + k);
  }
  for (; k < n; ++k) Isa::template tile<T, 1, NB>(g, grp, rows, o + k);
}

template <typename Isa, typename T, int... NB>
constexpr auto rows_table(std::integer_sequence<int, NB...>) {
  return std::array{&rows_tiled<Isa, T, NB + 1>...};
}

template <typename Isa, typename T>
void gemv_tiled(const Gemv& g, int64_t o0, int64_t o1) {
  constexpr auto by_nb = rows_table<Isa, T>(std::make_integer_sequence<int, kMaxRows>{});
  for (int64_t o = o0; o < o1; o += kRowBlock) {
    const int64_t n = std::min<int64_t>(kRowBlock, o1 - o);
    for (const Group& grp : g.groups) {
      const int64_t size = int64_t(grp.rows.size());
      for (int64_t b = 0; b < size; b += kMaxRows) {
        by_nb[std::min<int64_t>(kMaxRows, size - b) - 1](g, grp, grp.rows.data() + b, o, n);
      }
    }
  }
}

// The weight rows, mask rows and x rows of an R x NB tile.
template <typename T, int R, int NB, typename X = float>
inline void tile_setup(const Gemv& g, const Group& grp, const int64_t* rows, int64_t o,
                       const T* (&w)[R], const uint8_t* (&m)[R], const X* (&x)[NB]) {
  for (int r = 0; r < R; ++r) {
    w[r] = static_cast<const T*>(g.w) + (o + r) * g.in;
    m[r] = grp.mask + (o + r) * grp.stride;
  }
  for (int b = 0; b < NB; ++b) {
    if constexpr (std::is_same_v<X, float>) {
      x[b] = g.x + rows[b] * g.x_stride;
    } else {
      x[b] = g.xh + rows[b] * g.in;
    }
  }
}

// ---------------------------------------------------------------- avx2
// kByteLanes[byte][j] is all-ones where bit j of byte is set: one AND masks 8 fp32 lanes.
struct alignas(32) ByteLanes {
  uint32_t v[256][8];
  constexpr ByteLanes() : v() {
    for (int b = 0; b < 256; ++b) {
      for (int j = 0; j < 8; ++j) v[b][j] = ((b >> j) & 1) ? ~0u : 0u;
    }
  }
};
constexpr ByteLanes kByteLanes;

AVX2 inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
AVX2 inline __m256 load8(const uint16_t* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

struct Avx2 {
  static constexpr int rows(int nb) { return nb <= 4 ? 2 : 1; }

  template <typename T, int R, int NB>
  AVX2 static void tile(const Gemv& g, const Group& grp, const int64_t* rows, int64_t o) {
    const T* w[R];
    const uint8_t* m[R];
    const float* x[NB];
    tile_setup<T, R, NB>(g, grp, rows, o, w, m, x);
    __m256 acc[R][NB];
    float tail[R][NB] = {};
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
      for (int b = 0; b < NB; ++b) acc[r][b] = _mm256_setzero_ps();
    }
    const int64_t in = g.in;
    int64_t i = 0;
    for (; i + 8 <= in; i += 8) {
      __m256 wr[R];
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const __m256 lanes = _mm256_load_ps(reinterpret_cast<const float*>(
            kByteLanes.v[m[r][i / 8]]));
        wr[r] = _mm256_and_ps(load8(w[r] + i), lanes);
      }
#pragma GCC unroll 8
      for (int b = 0; b < NB; ++b) {
        const __m256 xb = _mm256_loadu_ps(x[b] + i);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) acc[r][b] = _mm256_fmadd_ps(wr[r], xb, acc[r][b]);
      }
    }
    for (; i < in; ++i) {
      for (int r = 0; r < R; ++r) {
        if (!((m[r][i / 8] >> (i % 8)) & 1)) continue;
        for (int b = 0; b < NB; ++b) tail[r][b] += from_bits(fp32_bits(w[r][i])) * x[b][i];
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
      for (int b = 0; b < NB; ++b) {
        const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(acc[r][b]),
                                     _mm256_extractf128_ps(acc[r][b], 1));
        const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        const __m128 s1 = _mm_add_ss(s2, _mm_movehdup_ps(s2));
        store(g, rows[b], o + r, _mm_cvtss_f32(s1) + tail[r][b]);
      }
    }
  }
};

// ---------------------------------------------------------------- avx512
template <int R, int NB>
AVX512 __attribute__((always_inline)) inline void zero_acc(__m512 (&acc)[R][NB]) {
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int b = 0; b < NB; ++b) acc[r][b] = _mm512_setzero_ps();
  }
}

// y[rows[b], o + r] from the lanes of acc[r][b].
template <int R, int NB>
AVX512 __attribute__((always_inline)) inline void store_acc(const Gemv& g, const int64_t* rows,
                                                            int64_t o, __m512 (&acc)[R][NB]) {
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int b = 0; b < NB; ++b) store(g, rows[b], o + r, _mm512_reduce_add_ps(acc[r][b]));
  }
}

// Multiply-accumulate in 512-bit registers when weights and x share an element type: fp32 into
// FMAs, 16 columns a step; bf16 into VDPBF16PS, 32 columns a step (pairs added into fp32 lanes).
struct Fp32Fma {
  using T = float;
  using V = __m512;
  static constexpr int64_t kStep = 16;
  AVX512 static const T* x_row(const Gemv& g, int64_t b) { return g.x + b * g.x_stride; }
  AVX512 static V load(uint32_t cols, const T* p) { return _mm512_maskz_loadu_ps(cols, p); }
  AVX512 static V keep(uint32_t bits, V w) { return _mm512_maskz_mov_ps(bits, w); }
  AVX512 static __m512 dot(__m512 acc, V w, V x) { return _mm512_fmadd_ps(w, x, acc); }
};

struct Bf16Dot {
  using T = uint16_t;
  using V = __m512i;
  static constexpr int64_t kStep = 32;
  AVX512 static const T* x_row(const Gemv& g, int64_t b) { return g.xh + b * g.in; }
  AVX512 static V load(uint32_t cols, const T* p) { return _mm512_maskz_loadu_epi16(cols, p); }
  AVX512 static V keep(uint32_t bits, V w) { return _mm512_maskz_mov_epi16(bits, w); }
  AVX512 static __m512 dot(__m512 acc, V w, V x) {
    return _mm512_dpbf16_ps(acc, (__m512bh)w, (__m512bh)x);
  }
};

// n <= Ops::kStep columns from i of an R x NB tile: the weights come in under their mask bits
// (a zero-masked load); also prefetches the same columns of the next tile's rows (`ahead`
// elements further on).
template <typename Ops, int R, int NB>
AVX512 __attribute__((always_inline)) inline void masked_step(
    const typename Ops::T* const* w, const uint8_t* const* m, const typename Ops::T* const* x,
    __m512 (&acc)[R][NB], int64_t i, int64_t n, int64_t ahead) {
  typename Ops::V wr[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    _mm_prefetch(reinterpret_cast<const char*>(w[r] + i + ahead), _MM_HINT_T0);
    wr[r] = Ops::load(mask_bits(m[r], i, n), w[r] + i);
  }
  const uint32_t cols = n == 32 ? ~0u : (1u << n) - 1;
#pragma GCC unroll 8
  for (int b = 0; b < NB; ++b) {
    const typename Ops::V xb = Ops::load(cols, x[b] + i);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) acc[r][b] = Ops::dot(acc[r][b], wr[r], xb);
  }
}

// The R x NB tile of both AVX-512 paths: Isa::step takes kStep columns at a time (the last step
// fewer); X is the element type x is read in (fp32, or bf16 bits for VDPBF16PS).
template <typename Isa, typename T, typename X, int64_t kStep, int R, int NB>
AVX512 __attribute__((always_inline)) inline void avx512_tile(const Gemv& g, const Group& grp,
                                                              const int64_t* rows, int64_t o) {
  const T* w[R];
  const uint8_t* m[R];
  const X* x[NB];
  tile_setup<T, R, NB, X>(g, grp, rows, o, w, m, x);
  __m512 acc[R][NB];
  zero_acc(acc);
  const int64_t ahead = R * g.in;
  int64_t i = 0;
  for (; i + kStep <= g.in; i += kStep) Isa::template step<R, NB>(w, m, x, acc, i, kStep, ahead);
  if (i < g.in) Isa::template step<R, NB>(w, m, x, acc, i, g.in - i, ahead);
  store_acc(g, rows, o, acc);
}

struct Avx512 {
  static constexpr int rows(int nb) { return nb <= 4 ? 4 : 2; }

  // fp32 weights: n <= 16 columns from i.
  template <int R, int NB>
  AVX512 __attribute__((always_inline)) static inline void step(
      const float* const* w, const uint8_t* const* m, const float* const* x,
      __m512 (&acc)[R][NB], int64_t i, int64_t n, int64_t ahead) {
    masked_step<Fp32Fma, R, NB>(w, m, x, acc, i, n, ahead);
  }

  // bf16 weights: n <= 32 columns from i under one 32-bit mask. Interleaving with zeros widens
  // bf16 to fp32 in one instruction per 16 values, in the order unpack_order_x gives x.
  template <int R, int NB>
  AVX512 __attribute__((always_inline)) static inline void step(
      const uint16_t* const* w, const uint8_t* const* m, const float* const* x,
      __m512 (&acc)[R][NB], int64_t i, int64_t n, int64_t ahead) {
    __m512 lo[R], hi[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      _mm_prefetch(reinterpret_cast<const char*>(w[r] + i + ahead), _MM_HINT_T0);
      const __m512i v = _mm512_maskz_loadu_epi16(mask_bits(m[r], i, n), w[r] + i);
      lo[r] = _mm512_castsi512_ps(_mm512_unpacklo_epi16(_mm512_setzero_si512(), v));
      hi[r] = _mm512_castsi512_ps(_mm512_unpackhi_epi16(_mm512_setzero_si512(), v));
    }
#pragma GCC unroll 8
    for (int b = 0; b < NB; ++b) {
      const __m512 xl = _mm512_loadu_ps(x[b] + i), xh = _mm512_loadu_ps(x[b] + i + 16);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        acc[r][b] = _mm512_fmadd_ps(lo[r], xl, acc[r][b]);
        acc[r][b] = _mm512_fmadd_ps(hi[r], xh, acc[r][b]);
      }
    }
  }

  // Columns per step: one cache line of weights.
  template <typename T, int R, int NB>
  AVX512 static void tile(const Gemv& g, const Group& grp, const int64_t* rows, int64_t o) {
    avx512_tile<Avx512, T, float, 64 / sizeof(T), R, NB>(g, grp, rows, o);
  }
};

// ---------------------------------------------------------------- avx512bf16 (bf16 weights)
// 32 columns per step: the weights come in under 32 mask bits (a zero-masked load), x as bf16,
// and VDPBF16PS adds the 32 products pairwise into 16 fp32 lanes.
struct Avx512Bf16 {
  static constexpr int rows(int nb) { return nb <= 4 ? 4 : 2; }

  template <int R, int NB>
  AVX512 __attribute__((always_inline)) static inline void step(
      const uint16_t* const* w, const uint8_t* const* m, const uint16_t* const* x,
      __m512 (&acc)[R][NB], int64_t i, int64_t n, int64_t ahead) {
    masked_step<Bf16Dot, R, NB>(w, m, x, acc, i, n, ahead);
  }

  template <typename T, int R, int NB>
  AVX512 static void tile(const Gemv& g, const Group& grp, const int64_t* rows, int64_t o) {
    static_assert(std::is_same_v<T, uint16_t>, "avx512bf16 tiles take bf16 weights");
    avx512_tile<Avx512Bf16, uint16_t, uint16_t, 32, R, NB>(g, grp, rows, o);
  }
};

// Batches mixing languages: one pass loads each weight vector once, and each language's bits are
// applied to it in registers (a zero-masking move) before the multiply. Rows come group by group;
// GS consecutive rows of a tile share a language, so each masked vector serves GS of them.
struct MixRow {
  int64_t row;
  const uint8_t* mask;
  int64_t stride;
};

template <typename Ops, int R, int NB, int GS>
AVX512 void mix_tile(const Gemv& g, const MixRow* rows, int64_t o) {
  using T = typename Ops::T;
  using V = typename Ops::V;
  constexpr int NG = NB / GS;
  const T* w[R];
  const T* x[NB];
  const uint8_t* m[R][NG];
  int64_t ids[NB];
  for (int r = 0; r < R; ++r) w[r] = static_cast<const T*>(g.w) + (o + r) * g.in;
  for (int b = 0; b < NB; ++b) {
    ids[b] = rows[b].row;
    x[b] = Ops::x_row(g, ids[b]);
  }
  for (int k = 0; k < NG; ++k) {
    for (int r = 0; r < R; ++r) m[r][k] = rows[k * GS].mask + (o + r) * rows[k * GS].stride;
  }
  __m512 acc[R][NB];
  zero_acc(acc);
  const int64_t ahead = R * g.in;
  for (int64_t i = 0; i < g.in; i += Ops::kStep) {
    const int64_t n = std::min<int64_t>(Ops::kStep, g.in - i);
    const uint32_t cols = n == 32 ? ~0u : (1u << n) - 1;
    V wr[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      _mm_prefetch(reinterpret_cast<const char*>(w[r] + i + ahead), _MM_HINT_T0);
      wr[r] = Ops::load(cols, w[r] + i);
    }
#pragma GCC unroll 8
    for (int k = 0; k < NG; ++k) {
      V wm[R];
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) wm[r] = Ops::keep(mask_bits(m[r][k], i, n), wr[r]);
#pragma GCC unroll 8
      for (int b = k * GS; b < (k + 1) * GS; ++b) {
        const V xb = Ops::load(cols, x[b] + i);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) acc[r][b] = Ops::dot(acc[r][b], wm[r], xb);
      }
    }
  }
  store_acc(g, ids, o, acc);
}

template <typename Ops, int GS, int NB>
void mix_rows(const Gemv& g, const MixRow* rows, int64_t o0, int64_t o1) {
  constexpr int R = NB <= 4 ? 4 : 2;
  int64_t o = o0;
  if (NB > 2 || !g_single_row_tiles) {
    for (; o + R <= o1; o += R) mix_tile<Ops, R, NB, GS>(g, rows, o);
  }
  for (; o < o1; ++o) mix_tile<Ops, 1, NB, GS>(g, rows, o);
}

// Tiles of GS, 2 GS, ... kMaxRows rows.
template <typename Ops, int GS, int... K>
constexpr auto mix_table(std::integer_sequence<int, K...>) {
  return std::array{&mix_rows<Ops, GS, (K + 1) * GS>...};
}

template <typename Ops, int GS>
void mix_pass(const Gemv& g, const std::vector<MixRow>& rows, int64_t o0, int64_t o1) {
  constexpr auto by_nb = mix_table<Ops, GS>(std::make_integer_sequence<int, kMaxRows / GS>{});
  const int64_t size = int64_t(rows.size());
  for (int64_t o = o0; o < o1; o += kRowBlock) {
    const int64_t o_end = std::min<int64_t>(o + kRowBlock, o1);
    for (int64_t b = 0; b < size; b += kMaxRows) {
      by_nb[std::min<int64_t>(kMaxRows, size - b) / GS - 1](g, rows.data() + b, o, o_end);
    }
  }
}

template <typename Ops>
void gemv_mixed(const Gemv& g, int64_t o0, int64_t o1) {
  std::vector<MixRow> rows;
  bool pairs = true;  // every group an even number of rows: each masked vector serves two
  for (const Group& grp : g.groups) {
    for (int64_t b : grp.rows) rows.push_back({b, grp.mask, grp.stride});
    pairs = pairs && grp.rows.size() % 2 == 0;
  }
  pairs ? mix_pass<Ops, 2>(g, rows, o0, o1) : mix_pass<Ops, 1>(g, rows, o0, o1);
}
#endif  // SUBMODEL_X86

template <typename T>
void gemv(const Gemv& g, int64_t o0, int64_t o1) {
#ifdef SUBMODEL_X86
  // Small groups: one pass beats a pass per group (measured: 4 languages x 2 rows 0.80x of
  // one language against 0.67x); groups of 4+ rows keep their own, fuller tiles.
  const bool small_groups = g.groups.size() > 1 && g.rows < 3 * int64_t(g.groups.size());
  if constexpr (std::is_same_v<T, uint16_t>) {
    if (g_path == kAvx512Bf16 && small_groups) return gemv_mixed<Bf16Dot>(g, o0, o1);
    if (g_path == kAvx512Bf16) return gemv_tiled<Avx512Bf16, T>(g, o0, o1);
  } else {
    if (g_path >= kAvx512 && small_groups) return gemv_mixed<Fp32Fma>(g, o0, o1);
  }
  if (g_path >= kAvx512) return gemv_tiled<Avx512, T>(g, o0, o1);
  if (g_path == kAvx2) return gemv_tiled<Avx2, T>(g, o0, o1);
#endif
  gemv_generic<T>(g, o0, o1);
}

// ---------------------------------------------------------------- mask copies
// dst[r, i] = keep ? src[r, i] : 0, written only where `touch` is set: every column for
// apply_mask_into, the columns where the old and new masks differ for swap_masks_.
struct MaskCopy {
  char* dst;
  const char* src;
  const uint8_t *keep, *old;  // mask rows; stride 0 = the all-ones row
  int64_t keep_stride, old_stride, cols, esize;
  bool swap;
};

// Bits to write and bits to copy (the rest of the written ones become 0) for 32 columns from i.
inline uint32_t touch_bits(const MaskCopy& c, const uint8_t* keep, const uint8_t* old, int64_t i,
                           uint32_t* copy) {
  const int64_t n = std::min<int64_t>(32, c.cols - i);
  const uint32_t k = mask_bits(keep, i, n);
  const uint32_t touch = c.swap ? k ^ mask_bits(old, i, n) : (n == 32 ? ~0u : (1u << n) - 1);
  *copy = k & touch;
  return touch;
}

// Branch-free per element (random mask bits defeat branch prediction): inside a 32-column block
// with anything to write, untouched elements are rewritten with their own value. U: element bits.
template <typename U>
__attribute__((always_inline)) inline void mask_copy_portable(const MaskCopy& c, int64_t r0,
                                                              int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* keep = c.keep + r * c.keep_stride;
    const uint8_t* old = c.old + r * c.old_stride;
    U* dst = reinterpret_cast<U*>(c.dst) + r * c.cols;
    const U* src = reinterpret_cast<const U*>(c.src) + r * c.cols;
    for (int64_t i = 0; i < c.cols; i += 32) {
      uint32_t copy;
      const uint32_t touch = touch_bits(c, keep, old, i, &copy);
      if (!touch) continue;
      const int n = int(std::min<int64_t>(32, c.cols - i));
      for (int j = 0; j < n; ++j) {
        const U take = U(0) - U((copy >> j) & 1);  // all-ones where src is copied
        const U hold = U((touch >> j) & 1) - U(1);  // all-ones where dst stays as it is
        dst[i + j] = U((src[i + j] & take) | (dst[i + j] & hold));
      }
    }
  }
}

void mask_copy_generic(const MaskCopy& c, int64_t r0, int64_t r1) {
  c.esize == 2 ? mask_copy_portable<uint16_t>(c, r0, r1) : mask_copy_portable<uint32_t>(c, r0, r1);
}

#ifdef SUBMODEL_X86
AVX2 void mask_copy_avx2(const MaskCopy& c, int64_t r0, int64_t r1) {
  c.esize == 2 ? mask_copy_portable<uint16_t>(c, r0, r1) : mask_copy_portable<uint32_t>(c, r0, r1);
}
#endif

#ifdef SUBMODEL_X86
AVX512 void mask_copy_avx512(const MaskCopy& c, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* keep = c.keep + r * c.keep_stride;
    const uint8_t* old = c.old + r * c.old_stride;
    char* dst = c.dst + r * c.cols * c.esize;
    const char* src = c.src + r * c.cols * c.esize;
    for (int64_t i = 0; i < c.cols; i += 32) {
      uint32_t copy;
      const uint32_t touch = touch_bits(c, keep, old, i, &copy);
      if (!touch) continue;
      char* d = dst + i * c.esize;
      const char* s = src + i * c.esize;
      if (c.esize == 2) {
        _mm512_mask_storeu_epi16(d, touch, _mm512_maskz_loadu_epi16(copy, s));
      } else {
        _mm512_mask_storeu_epi32(d, __mmask16(touch), _mm512_maskz_loadu_epi32(__mmask16(copy), s));
        _mm512_mask_storeu_epi32(d + 64, __mmask16(touch >> 16),
                                 _mm512_maskz_loadu_epi32(__mmask16(copy >> 16), s + 64));
      }
    }
  }
}
#endif

// ---------------------------------------------------------------- ops
int64_t grain(int64_t cols, int64_t esize) {
  return std::max<int64_t>(kRowBlock, (int64_t(1) << 15) / std::max<int64_t>(1, cols * esize));
}

void run_mask_copy(const MaskCopy& c, int64_t rows) {
  at::parallel_for(0, rows, grain(c.cols, c.esize), [&](int64_t r0, int64_t r1) {
#ifdef SUBMODEL_X86
    if (g_path >= kAvx512) return mask_copy_avx512(c, r0, r1);
    if (g_path == kAvx2) return mask_copy_avx2(c, r0, r1);
#endif
    mask_copy_generic(c, r0, r1);
  });
}

void check_mask(const torch::Tensor& m, int64_t rows, int64_t cols, const char* what) {
  TORCH_CHECK(m.device().is_cpu() && m.scalar_type() == torch::kUInt8 && m.dim() == 2 &&
                  m.size(0) == rows && m.size(1) == (cols + 7) / 8 && m.is_contiguous(),
              what, " must be a contiguous CPU uint8 tensor of shape [", rows, ", ",
              (cols + 7) / 8, "], got ", m.scalar_type(), " ", m.sizes());
}

void check_weight(const torch::Tensor& weight, const char* op) {
  TORCH_CHECK(weight.device().is_cpu() && weight.dim() == 2 && weight.is_contiguous() &&
                  (weight.element_size() == 2 || weight.element_size() == 4),
              op, ": weight must be a contiguous 2-D CPU tensor of 2- or 4-byte elements, got ",
              weight.scalar_type(), " ", weight.sizes());
}

void check_weight_like(const torch::Tensor& t, const torch::Tensor& weight, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous() && t.sizes() == weight.sizes() &&
                  t.scalar_type() == weight.scalar_type(),
              what, " must be a contiguous CPU ", weight.scalar_type(), " tensor of shape ",
              weight.sizes(), ", got ", t.scalar_type(), " ", t.sizes());
}

// x as fp32 for the AVX-512 bf16 step: zero-padded to a multiple of 32 columns, and in each block
// of 32 the order in which unpacklo/unpackhi widen the weights: per 128-bit lane L, values
// 8L..8L+3 go to the first 16 slots, 8L+4..8L+7 to the last 16.
torch::Tensor unpack_order_x(const torch::Tensor& x_in) {
  const auto src = x_in.to(torch::kFloat32).contiguous();
  const int64_t rows = src.size(0), in = src.size(1), padded = (in + 31) / 32 * 32;
  auto x = torch::zeros({rows, padded}, src.options());
  const float* s = src.data_ptr<float>();
  float* d = x.data_ptr<float>();
  for (int64_t b = 0; b < rows; ++b) {
    for (int64_t i = 0; i < in; ++i) {
      const int64_t j = i % 32, lane = j / 8, k = j % 8;
      d[b * padded + i - j + (k < 4 ? 0 : 16) + lane * 4 + k % 4] = s[b * in + i];
    }
  }
  return x;
}

torch::Tensor masked_linear(const torch::Tensor& x_in, const torch::Tensor& weight,
                            const torch::Tensor& masks, const torch::Tensor& row_lang,
                            const c10::optional<torch::Tensor>& bias) {
  check_weight(weight, "masked_linear");
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
                  masks.stride(2) == 1 && masks.stride(1) == nbytes,
              "masked_linear: masks must be a CPU uint8 tensor [L, ", out, ", ", nbytes,
              "], each language's contiguous, got ", masks.scalar_type(), " ", masks.sizes());
  TORCH_CHECK(row_lang.device().is_cpu() && row_lang.scalar_type() == torch::kInt32 &&
                  row_lang.dim() == 1 && row_lang.size(0) == B,
              "masked_linear: row_lang must be an int32 CPU tensor of length ", B, ", got ",
              row_lang.scalar_type(), " ", row_lang.sizes());
  torch::Tensor bias_t;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == out,
                "masked_linear: bias must have shape [", out, "], got ", bias->sizes());
    bias_t = bias->scalar_type() == torch::kBFloat16 ? bias->contiguous()
                                                     : bias->to(torch::kFloat32).contiguous();
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
        g.groups.push_back({masks.data_ptr<uint8_t>() + lp[b] * masks.stride(0), nbytes, {}});
      }
    }
    g.groups[gi].rows.push_back(b);
  }

  const bool bf16 = dtype == torch::kBFloat16;
  const bool dp = bf16 && g_path == kAvx512Bf16;
  const auto xh = dp ? x_in.contiguous() : torch::Tensor();
  const auto x = dp ? torch::Tensor()
                    : bf16 && g_path == kAvx512 ? unpack_order_x(x_in)
                                                : x_in.to(torch::kFloat32).contiguous();
  auto y = torch::empty({B, out}, x_in.options());
  g.x = dp ? nullptr : x.data_ptr<float>();
  g.xh = dp ? reinterpret_cast<const uint16_t*>(xh.data_ptr()) : nullptr;
  g.x_stride = dp ? in : x.size(1);
  g.w = weight.data_ptr();
  g.bias = bias_t.defined() ? bias_t.data_ptr() : nullptr;
  g.bf16_bias = bias_t.defined() && bias_t.scalar_type() == torch::kBFloat16;
  g.y = y.data_ptr();
  g.bf16_y = bf16;
  g.in = in;
  g.out = out;
  g.rows = B;
  if (B > 0) {
    at::parallel_for(0, out, grain(in, weight.element_size()), [&](int64_t o0, int64_t o1) {
      bf16 ? gemv<uint16_t>(g, o0, o1) : gemv<float>(g, o0, o1);
    });
  }
  return y;
}

torch::Tensor apply_mask_into(const torch::Tensor& weight, const torch::Tensor& mask,
                              torch::Tensor out) {
  check_weight(weight, "apply_mask_into");
  const int64_t rows = weight.size(0), cols = weight.size(1);
  check_mask(mask, rows, cols, "apply_mask_into: mask");
  check_weight_like(out, weight, "apply_mask_into: out");
  const MaskCopy c{static_cast<char*>(out.data_ptr()), static_cast<const char*>(weight.data_ptr()),
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
  const MaskCopy c{static_cast<char*>(weight.data_ptr()),
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

void set_single_row_tiles(bool on) { g_single_row_tiles = on; }

bool get_single_row_tiles() { return g_single_row_tiles; }

torch::Tensor masked_linear_q8(const torch::Tensor& x, const torch::Tensor& codes,
                               const torch::Tensor& scales, const torch::Tensor& masks,
                               const torch::Tensor& row_lang,
                               const c10::optional<torch::Tensor>& bias) {
  return submodel::masked_linear_q8(x, codes, scales, masks, row_lang, bias, g_path >= kAvx512,
                                    g_single_row_tiles);
}

torch::Tensor dequantize_q8_into(const torch::Tensor& codes, const torch::Tensor& scales,
                                 const c10::optional<torch::Tensor>& mask, torch::Tensor out) {
  return submodel::dequantize_q8_into(codes, scales, mask, out, g_path >= kAvx512);
}

torch::Tensor decode_attention(const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v, torch::Tensor k_cache,
                               torch::Tensor v_cache, const torch::Tensor& slots,
                               const torch::Tensor& positions, const torch::Tensor& cos,
                               const torch::Tensor& sin) {
  return submodel::decode_attention(q, k, v, k_cache, v_cache, slots, positions, cos, sin,
                                    g_path >= kAvx512, g_path == kAvx512Bf16);
}

bool decode_attention_bf16_dot(int64_t heads_per_group, int64_t head_dim) {
  return g_path == kAvx512Bf16 && submodel::bf16_dot_fits(heads_per_group, head_dim);
}

std::vector<std::string> cpu_features() {
  std::vector<std::string> found;
  for (const char* f :
       {"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512bf16",
        "avx512vnni"}) {
    if (cpu_has(f)) found.emplace_back(f);
  }
  return found;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("masked_linear", &masked_linear, "y = x @ (W * M[row_lang])^T, one language per row");
  m.def("apply_mask_into", &apply_mask_into, "out = W * M (one language's packed mask)");
  m.def("swap_masks_", &swap_masks_, "in place: move weight from old_mask to new_mask");
  m.def("masked_linear_q8", &masked_linear_q8,
        "y = x @ (W * M[row_lang])^T with W = int8 codes x per-32 scales");
  m.def("dequantize_q8_into", &dequantize_q8_into, "out = W * M (or W), W = codes x scales");
  m.def("rms_norm", &submodel::rms_norm, "weight * (x / rms(x)), per row, fp32 inside");
  m.def("decode_attention", &decode_attention,
        "one layer's attention for rows adding one token each (rotary, cache write, attend)");
  m.def("decode_attention_bf16_dot", &decode_attention_bf16_dot,
        "whether decode_attention takes bf16 caches of this head shape through VDPBF16PS");
  m.def("set_path", &set_path);
  m.def("get_path", &get_path);
  m.def("set_single_row_tiles", &set_single_row_tiles);
  m.def("get_single_row_tiles", &get_single_row_tiles);
  m.def("path_supported", &path_supported);
  m.def("cpu_features", &cpu_features);
}
