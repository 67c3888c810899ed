// Int8 weights under the language masks (issue 17: read fewer bytes per decode step).
//
// A weight [out, in] is held as int8 codes [out, in] and one fp16 scale per group of kQ8Group
// columns of a row ([out, in / kQ8Group]; a GGUF's Q5_0 and Q8_0 blocks carry theirs as fp16):
// w = scale * code. Masks keep the store's layout (uint8 [out, ceil(in/8)], little-endian bits,
// 1 = kept), so a decode step reads 1 byte + 1 bit per weight (+ a scale per 32) instead of 2
// bytes + 1 bit.
//
// masked_linear_q8: y[b] = x[b] @ (W * M[lang[b]])^T + bias, lang[b] = -1 is dense. With AVX-512
// VNNI (Zen 4, Ice Lake and later), x is first coded per group of 32 as int8 with a scale (as
// llama.cpp codes activations for its Q8_0 and Q5_0 dot products); then per pair of groups (64
// weights) and batch row one masked subtract, one VPDPBUSD, and one FMA of the int32 sums by weight
// scale x x scale. VPDPBUSD multiplies unsigned by signed bytes, so the codes enter it offset by
// 128 (code - 128 wraps to code + 128), a masked-off weight as 128 (= 0), and each sum starts from
// -128 x the sum of its x codes. Codes are read from memory once per call for all rows; several
// output rows per tile keep independent chains in flight, and each tile prefetches the next one's
// codes (without it the kernel read DRAM at a third of the rate it reaches: 13 vs 46 G weights/s
// at batch 1, 2 threads, Zen 4). Several bf16 rows with AVX512_BF16 instead widen each output
// row's codes to bf16 weights once per group and take one VDPBF16PS per batch row (tile_bf16):
// the weights are then rounded to bf16 as the full-weights path holds them, and x is not coded, so
// a sequence's numbers differ a little between batch 1 and larger batches. Elsewhere a scalar
// loop computes with x in fp32.
// dequantize_q8_into: out = W * M (or W) in the output's dtype, for prefill's GEMM.
#include "gemv_output.h"
#include "q8_linear.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SUBMODEL_Q8_X86 1
#include <immintrin.h>
#define Q8_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))
#define Q8_BF16 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512bf16")))
#endif

namespace submodel {
namespace {

// x coded for the VNNI tiles, per batch row and pair of groups (64 columns; an odd last group is
// padded with zeros): int8 codes, x ~= scale * code; each 32-bit lane's starting sum, -128 x the
// sum of its 4 codes; and one scale per group, in blocks of 16 groups (zero-padded).
struct CodedX {
  const int8_t* codes;  // [B, pairs * 64]
  const int32_t* start;  // [B, pairs * 16]
  const float* scales;  // [B, blocks * 16]
  int64_t pairs, blocks;
};

constexpr int64_t kPairsPerBlock = 8;  // pairs of groups whose scales a tile converts at once

struct Q8Gemv {
  const float* x;  // [B, in] fp32 (the scalar path; null on the VNNI one)
  const uint16_t* xh;  // [B, in]: x's own bf16 bits (the VDPBF16PS path), or null
  CodedX cx;  // x as int8 codes (the VNNI path)
  const int8_t* codes;  // [out, in]
  const uint16_t* scales;  // [out, in / kQ8Group], fp16 bits
  std::vector<const uint8_t*> masks;  // per batch row: its mask's first row (all ones: dense)
  std::vector<int64_t> mask_stride;  // per batch row: bytes between mask rows (0: dense)
  const void* bias;  // [out] or nullptr, fp32 or bf16
  bool bf16_bias, bf16_y;
  void* y;  // [B, out]
  int64_t in, out, rows;
  bool single_row_tiles;  // 1-2 bf16 rows (fp32 x: 1 row) in tiles of one output row
};

float half_to_float(uint16_t bits) { return float(c10::Half(bits, c10::Half::from_bits())); }

void gemv_generic(const Q8Gemv& g, int64_t o0, int64_t o1) {
  const int64_t groups = g.in / kQ8Group;
  for (int64_t o = o0; o < o1; ++o) {
    const int8_t* w = g.codes + o * g.in;
    const uint16_t* s = g.scales + o * groups;
    for (int64_t b = 0; b < g.rows; ++b) {
      const uint8_t* m = g.masks[b] + o * g.mask_stride[b];
      const float* x = g.x + b * g.in;
      float acc = 0.f;
      for (int64_t k = 0; k < groups; ++k) {
        float part = 0.f;
        for (int64_t i = k * kQ8Group; i < (k + 1) * kQ8Group; ++i) {
          const float keep = float((m[i / 8] >> (i % 8)) & 1u);
          part += keep * float(w[i]) * x[i];
        }
        acc += half_to_float(s[k]) * part;
      }
      store(g, b, o, acc);
    }
  }
}

#ifdef SUBMODEL_Q8_X86
constexpr int kRowsPerTile = 4;  // batch rows per register tile

// 16 of x's values as fp32, from fp32 or bf16 (a bf16 is the top half of its fp32).
Q8_AVX512 inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
Q8_AVX512 inline __m512 load16(const c10::BFloat16* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(
      _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
}

// x's rows coded into CodedX's buffers (zeroed by the caller): per group of kQ8Group, scale =
// max |x| / 127 and codes rounded to nearest even. Read straight from x's own dtype, so no
// converted copy of x is made per call; vectorized, as it runs before every call's GEMV on one
// thread (a scalar loop took 13 us for 4864 columns, a tenth of a from-DRAM down_proj call at
// batch 1 on Zen 4).
template <typename T>
Q8_AVX512 void quantize_x(const T* x, int64_t rows, int64_t in, const CodedX& cx) {
  const __m256i offset = _mm256_set1_epi8(char(128));
  int8_t* codes = const_cast<int8_t*>(cx.codes);
  int32_t* start = const_cast<int32_t*>(cx.start);
  float* scales = const_cast<float*>(cx.scales);
  for (int64_t b = 0; b < rows; ++b, codes += cx.pairs * 64, start += cx.pairs * 16,
               scales += cx.blocks * 16) {
    for (int64_t k = 0; k < in / kQ8Group; ++k) {
      const T* v = x + b * in + k * kQ8Group;
      const __m512 lo = load16(v), hi = load16(v + 16);
      const float top = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(lo), _mm512_abs_ps(hi)));
      const __m512 inv = _mm512_set1_ps(top > 0.f ? 127.f / top : 0.f);
      const __m128i qlo = _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(lo, inv)));
      const __m128i qhi = _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(hi, inv)));
      const __m256i q = _mm256_set_m128i(qhi, qlo);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(codes + k * kQ8Group), q);
      const __m256i sums = _mm256_dpbusd_epi32(_mm256_setzero_si256(), offset, q);  // 128 x sum
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(start + (k / 2) * 16 + (k % 2) * 8),
                          _mm256_sub_epi32(_mm256_setzero_si256(), sums));
      scales[k] = top / 127.f;
    }
  }
}

bool has_vnni() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw");
}

// What a tile of output rows o .. o + R - 1 and batch rows b0 .. b0 + NB - 1 reads: each output
// row's codes and scales, and its mask row for each batch row's language.
template <int R, int NB>
struct TileRows {
  const int8_t* w[R];
  const uint16_t* s[R];
  const uint8_t* m[R][NB];

  TileRows(const Q8Gemv& g, int64_t o, int64_t b0) {
    for (int r = 0; r < R; ++r) {
      w[r] = g.codes + (o + r) * g.in;
      s[r] = g.scales + (o + r) * (g.in / kQ8Group);
      for (int b = 0; b < NB; ++b) m[r][b] = g.masks[b0 + b] + (o + r) * g.mask_stride[b0 + b];
    }
  }
};

// How far ahead a tile of R output rows prefetches codes: the same columns of the tile's two
// tiles on; one-row tiles reach 8 rows ahead (Zen 4, batch 1: 2 rows ahead 7% slower, 4 rows
// 1%). Two tiles, not one (Zen 4, 24 layers from DRAM in 2 MiB pages, interleaved): batch 1 in
// 4-row tiles 1.08x (four tiles 1.05x), 4 bf16 rows of 2 languages 1.04-1.07x, 8 rows of one
// 1.04x, of two 1.00-1.02x. The hint is NTA: codes are read once a step, so they need not
// displace L2 (Zen 4, a decode step's Linears from DRAM over T0: batch 1 1.04-1.08x dense,
// 1.05-1.06x masked; 4 masked rows 1.13-1.17x; T1 no gain; the bf16 kernel's prefetch gains
// nothing from it).
constexpr int64_t prefetch_rows(int R) { return R == 1 ? 8 : 2 * R; }

// The lanes of a block's 16 per-group scales that pair q of the block takes: lanes 0-7 its first
// group's (2q), 8-15 its second's (2q + 1), as VPDPBUSD's sums lie.
Q8_AVX512 inline __m512i pair_lanes(int64_t q) {
  return _mm512_add_epi32(_mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0),
                          _mm512_set1_epi32(int(2 * q)));
}

// A block's 16 fp16 weight scales from p as fp32, of which the first n are the row's (the rest
// zeroed). A plain load, masked only where 16 would pass the scales' end: a masked load that
// misses the cache stalls the stream on Zen 4 (a step's int8 Linears from DRAM 6.4 -> 8.3 ms).
Q8_AVX512 inline __m512 block_scales(const uint16_t* p, int64_t n, const uint16_t* end) {
  const __mmask16 row = __mmask16((1u << n) - 1u);
  const __m256i h = p + 16 <= end ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))
                                  : _mm256_maskz_loadu_epi16(row, p);
  return _mm512_maskz_cvtph_ps(row, h);
}

// The rows one VNNI tile reads besides the weights': each batch row's x codes, start sums and
// scales.
template <int NB>
struct CodedRows {
  const int8_t* codes[NB];
  const int32_t* start[NB];
  const float* scales[NB];

  CodedRows(const CodedX& cx, int64_t b0) {
    for (int b = 0; b < NB; ++b) {
      codes[b] = cx.codes + (b0 + b) * cx.pairs * 64;
      start[b] = cx.start + (b0 + b) * cx.pairs * 16;
      scales[b] = cx.scales + (b0 + b) * cx.blocks * 16;
    }
  }
};

// One pair of groups (columns 64p .. 64p + 63) of a tile's output rows for its batch rows into
// acc; scale[r][b] holds weight scale x x scale of the block's 16 groups, of which `lanes` picks
// the pair's. Tail: the row's last, odd group (columns 64p .. 64p + 31), read with masked loads so
// as not to pass the row's end; x's padding makes lanes 8-15 add nothing.
template <int R, int NB, bool Tail>
Q8_AVX512 inline void pair_of_groups(const TileRows<R, NB>& t, const CodedRows<NB>& x, int64_t p,
                                     int64_t ahead, const __m512 (&scale)[R][NB], __m512i lanes,
                                     __m512 (&acc)[R][NB]) {
  const __m512i offset = _mm512_set1_epi8(char(128));
  const int64_t i = p * 64;
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
    _mm_prefetch(reinterpret_cast<const char*>(t.w[r] + i + ahead), _MM_HINT_NTA);
    const __m512i c = Tail ? _mm512_maskz_loadu_epi8(0xFFFFFFFFull, t.w[r] + i)
                           : _mm512_loadu_si512(t.w[r] + i);
#pragma GCC unroll 4
    for (int b = 0; b < NB; ++b) {
      uint64_t bits = 0;
      std::memcpy(&bits, t.m[r][b] + p * 8, Tail ? 4 : 8);
      const __m512i u = _mm512_mask_sub_epi8(offset, bits, c, offset);
      const __m512i d = _mm512_dpbusd_epi32(_mm512_loadu_si512(x.start[b] + p * 16), u,
                                            _mm512_loadu_si512(x.codes[b] + i));
      acc[r][b] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d),
                                  _mm512_permutexvar_ps(lanes, scale[r][b]), acc[r][b]);
    }
  }
}

// Output rows o .. o + R - 1 for batch rows b0 .. b0 + NB - 1 (see the top of the file). Scales
// are multiplied a block of 8 pairs at a time (one conversion of 16 fp16 weight scales and one
// product with x's per output and batch row), so a pair costs a permute instead of a conversion,
// a permute and a product; the block prefetches its scales and mask bits as the pairs do their
// codes. Zen 4, batch 1, 2 threads: from L2 ~64 -> ~70 G weights/s, a step from DRAM 1.03x.
template <int R, int NB>
Q8_AVX512 void tile(const Q8Gemv& g, int64_t o, int64_t b0) {
  const int64_t groups = g.in / kQ8Group, pairs = groups / 2;
  const TileRows<R, NB> t(g, o, b0);
  const CodedRows<NB> x(g.cx, b0);
  __m512 acc[R][NB];
  for (int r = 0; r < R; ++r) {
    for (int b = 0; b < NB; ++b) acc[r][b] = _mm512_setzero_ps();
  }
  const int64_t ahead = prefetch_rows(R) * g.in;
  const uint16_t* scales_end = g.scales + g.out * groups;
  const int64_t ahead_scales = prefetch_rows(R) * groups;
  int64_t ahead_masks[NB];
  for (int b = 0; b < NB; ++b) ahead_masks[b] = prefetch_rows(R) * g.mask_stride[b0 + b];
  for (int64_t p0 = 0; p0 < g.cx.pairs; p0 += kPairsPerBlock) {
    const int64_t in_block = std::min<int64_t>(16, groups - 2 * p0);
    __m512 scale[R][NB];
    for (int r = 0; r < R; ++r) {
      _mm_prefetch(reinterpret_cast<const char*>(t.s[r] + 2 * p0 + ahead_scales), _MM_HINT_NTA);
      for (int b = 0; b < NB; ++b) {
        _mm_prefetch(reinterpret_cast<const char*>(t.m[r][b] + p0 * 8 + ahead_masks[b]),
                     _MM_HINT_NTA);
      }
      const __m512 ws = block_scales(t.s[r] + 2 * p0, in_block, scales_end);
      for (int b = 0; b < NB; ++b) {
        scale[r][b] = _mm512_mul_ps(ws, _mm512_loadu_ps(x.scales[b] + 2 * p0));
      }
    }
    if (p0 + kPairsPerBlock <= pairs) {
#pragma GCC unroll 8
      for (int64_t q = 0; q < kPairsPerBlock; ++q) {
        pair_of_groups<R, NB, false>(t, x, p0 + q, ahead, scale, pair_lanes(q), acc);
      }
      continue;
    }
    int64_t q = 0;
    for (; p0 + q < pairs; ++q) {
      pair_of_groups<R, NB, false>(t, x, p0 + q, ahead, scale, pair_lanes(q), acc);
    }
    if (groups % 2) {
      pair_of_groups<R, NB, true>(t, x, p0 + q, ahead, scale, pair_lanes(q), acc);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int b = 0; b < NB; ++b) store(g, b0 + b, o + r, _mm512_reduce_add_ps(acc[r][b]));
  }
}

// One fp16 scale as 16 fp32 lanes.
Q8_AVX512 inline __m512 broadcast_half(uint16_t bits) {
  return _mm512_cvtph_ps(_mm256_set1_epi16(short(bits)));
}

bool has_bf16() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512bf16");
}

// Several batch rows in bf16: per group, each output row's 32 codes become bf16 weights once
// (code x scale, rounded to nearest even), then every batch row takes them under its own mask
// bits (a zero-masking move) into one VDPBF16PS against its bf16 x. The VNNI tile re-widens and
// re-scales per batch row; this one per output row, so extra batch rows cost 3 instructions a
// group instead of 7 (8 rows of 4 languages, 8 layers: 11.5 -> 9.0 ms on Zen 4, where bf16
// weights take 6.5). Batch 1 keeps the VNNI tile: one row does not repay the widening. When the
// tile's batch rows share one mask (one language: a prompt chunk's rows, or a batch of one
// sub-model), the widened weights are masked once per output row and each batch row costs
// one instruction a group.
template <int R, int NB, bool Shared>
Q8_BF16 void tile_bf16(const Q8Gemv& g, int64_t o, int64_t b0) {
  const int64_t groups = g.in / kQ8Group;
  const TileRows<R, NB> t(g, o, b0);
  const auto& w = t.w;
  const auto& s = t.s;
  const auto& m = t.m;
  const uint16_t* xh[NB];
  __m512 acc[R][NB];
  for (int r = 0; r < R; ++r) {
    for (int b = 0; b < NB; ++b) acc[r][b] = _mm512_setzero_ps();
  }
  for (int b = 0; b < NB; ++b) xh[b] = g.xh + (b0 + b) * g.in;
  const int64_t ahead = prefetch_rows(R) * g.in;
  for (int64_t k = 0; k < groups; ++k) {
    const int64_t i = k * kQ8Group;
    __m512i wb[R];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      _mm_prefetch(reinterpret_cast<const char*>(w[r] + i + ahead), _MM_HINT_NTA);
      const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[r] + i));
      const __m512 scale = broadcast_half(s[r][k]);
      const __m512 lo = _mm512_mul_ps(
          _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(c))), scale);
      const __m512 hi = _mm512_mul_ps(
          _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(c, 1))), scale);
      wb[r] = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);  // columns i .. i + 31 in order
      if constexpr (Shared) {
        uint32_t bits;
        std::memcpy(&bits, m[r][0] + i / 8, 4);
        wb[r] = _mm512_maskz_mov_epi16(bits, wb[r]);
      }
    }
#pragma GCC unroll 8
    for (int b = 0; b < NB; ++b) {
      const __m512i x = _mm512_loadu_si512(xh[b] + i);
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) {
        __m512i wm = wb[r];
        if constexpr (!Shared) {
          uint32_t bits;
          std::memcpy(&bits, m[r][b] + i / 8, 4);
          wm = _mm512_maskz_mov_epi16(bits, wm);
        }
        acc[r][b] = _mm512_dpbf16_ps(acc[r][b], (__m512bh)wm, (__m512bh)x);
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int b = 0; b < NB; ++b) store(g, b0 + b, o + r, _mm512_reduce_add_ps(acc[r][b]));
  }
}

// The two tile kinds, for rows_of.
struct VnniTile {
  template <int R, int NB>
  static void run(const Q8Gemv& g, int64_t o, int64_t b0) { tile<R, NB>(g, o, b0); }
};

// Whether batch rows b0 .. b0 + nb - 1 all take one mask (a tile can then mask once per row).
bool one_mask(const Q8Gemv& g, int64_t b0, int64_t nb) {
  for (int64_t b = 1; b < nb; ++b) {
    if (g.masks[b0 + b] != g.masks[b0]) return false;
  }
  return true;
}

struct Bf16Tile {
  template <int R, int NB>
  static void run(const Q8Gemv& g, int64_t o, int64_t b0) {
    if (one_mask(g, b0, NB)) return tile_bf16<R, NB, true>(g, o, b0);
    tile_bf16<R, NB, false>(g, o, b0);
  }
};

// Output rows o .. o + R - 1 for every batch row: full tiles of kRowsPerTile, then the rest.
template <typename Kind, int R>
void rows_of(const Q8Gemv& g, int64_t o) {
  int64_t b = 0;
  for (; b + kRowsPerTile <= g.rows; b += kRowsPerTile) {
    Kind::template run<R, kRowsPerTile>(g, o, b);
  }
  switch (g.rows - b) {
    case 3: Kind::template run<R, 3>(g, o, b); break;
    case 2: Kind::template run<R, 2>(g, o, b); break;
    case 1: Kind::template run<R, 1>(g, o, b); break;
    default: break;
  }
}

// Batch rows b .. b + nb - 1 (nb <= 8) for output rows o .. o + R - 1; Shared: all of one mask.
template <int R, bool Shared>
Q8_BF16 void wide_tile(const Q8Gemv& g, int64_t o, int64_t b, int64_t nb) {
  switch (nb) {
    case 8: return tile_bf16<R, 8, Shared>(g, o, b);
    case 7: return tile_bf16<R, 7, Shared>(g, o, b);
    case 6: return tile_bf16<R, 6, Shared>(g, o, b);
    case 5: return tile_bf16<R, 5, Shared>(g, o, b);
    case 4: return tile_bf16<R, 4, Shared>(g, o, b);
    case 3: return tile_bf16<R, 3, Shared>(g, o, b);
    case 2: return tile_bf16<R, 2, Shared>(g, o, b);
    case 1: return tile_bf16<R, 1, Shared>(g, o, b);
    default: break;
  }
}

// More than 4 batch rows: tiles of 2 output rows by up to 8 batch rows, so each output row's
// weights are widened once per 8 batch rows, where tiles of 4 widen them twice (a widening pass
// over a model's weights costs about as much as 3 batch rows). Tiles of one output row by 9-16
// batch rows were slower on Zen 4 (fewer output rows to share each x load). Rows of mixed
// languages gain the same (24 layers, 2 threads, Zen 4, rows of 4 languages: 8 rows 31.0 ->
// 24.9 ms, 16 rows 52.1 -> 47.1); a tile whose rows share one mask masks the weights once.
Q8_BF16 void gemv_bf16_wide(const Q8Gemv& g, int64_t o0, int64_t o1) {
  for (int64_t o = o0; o < o1; o += 2) {
    for (int64_t b = 0; b < g.rows; b += 8) {
      const int64_t nb = std::min<int64_t>(8, g.rows - b);
      const bool shared = one_mask(g, b, nb);
      if (o + 2 <= o1) {
        shared ? wide_tile<2, true>(g, o, b, nb) : wide_tile<2, false>(g, o, b, nb);
      } else {
        shared ? wide_tile<1, true>(g, o, b, nb) : wide_tile<1, false>(g, o, b, nb);
      }
    }
  }
}

Q8_BF16 void gemv_bf16(const Q8Gemv& g, int64_t o0, int64_t o1) {
  if (g.rows > kRowsPerTile) return gemv_bf16_wide(g, o0, o1);
  int64_t o = o0;
  if (g.rows > 2 || !g.single_row_tiles) {
    for (; o + 4 <= o1; o += 4) rows_of<Bf16Tile, 4>(g, o);
  }
  for (; o < o1; ++o) rows_of<Bf16Tile, 1>(g, o);
}

// Batch 1 takes 4 output rows a tile, or 1 where single_row_tiles is set (each thread then
// streams its codes in order; Zen 4, 24 layers from DRAM: 1.13x faster, and 2 bf16 rows in
// gemv_bf16 1.17x, of one language or two); larger batches 2 (4 rows are slower once each
// row's accumulators multiply by the batch rows).
Q8_AVX512 void gemv_avx512(const Q8Gemv& g, int64_t o0, int64_t o1) {
  int64_t o = o0;
  if (g.rows > 1 || !g.single_row_tiles) {
    for (; o + 4 <= o1 && g.rows == 1; o += 4) rows_of<VnniTile, 4>(g, o);
    for (; o + 2 <= o1; o += 2) rows_of<VnniTile, 2>(g, o);
  }
  for (; o < o1; ++o) rows_of<VnniTile, 1>(g, o);
}
#endif

void check_q8(const torch::Tensor& codes, const torch::Tensor& scales, const char* op) {
  TORCH_CHECK(codes.device().is_cpu() && codes.scalar_type() == torch::kInt8 && codes.dim() == 2 &&
                  codes.is_contiguous() && codes.size(1) % kQ8Group == 0,
              op, ": codes must be a contiguous CPU int8 [out, in] tensor with in a multiple of ",
              kQ8Group, ", got ", codes.scalar_type(), " ", codes.sizes());
  TORCH_CHECK(scales.device().is_cpu() && scales.scalar_type() == torch::kHalf &&
                  scales.is_contiguous() && scales.dim() == 2 &&
                  scales.size(0) == codes.size(0) && scales.size(1) == codes.size(1) / kQ8Group,
              op, ": scales must be a contiguous CPU float16 tensor of shape [", codes.size(0),
              ", ", codes.size(1) / kQ8Group, "], got ", scales.scalar_type(), " ", scales.sizes());
}

int64_t grain(int64_t cols) { return std::max<int64_t>(4, (int64_t(1) << 14) / cols); }

struct Dequant {
  const int8_t* codes;
  const uint16_t* scales;  // fp16 bits
  const uint8_t* mask;  // all ones for no mask
  int64_t mask_stride;  // 0 for no mask
  void* out;
  bool bf16;
  int64_t cols;
};

void dequant_generic(const Dequant& d, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* m = d.mask + r * d.mask_stride;
    for (int64_t i = 0; i < d.cols; ++i) {
      const float keep = float((m[i / 8] >> (i % 8)) & 1u);
      const float v = keep * half_to_float(d.scales[r * (d.cols / kQ8Group) + i / kQ8Group]) *
                      float(d.codes[r * d.cols + i]);
      if (d.bf16) {
        static_cast<c10::BFloat16*>(d.out)[r * d.cols + i] = c10::BFloat16(v);
      } else {
        static_cast<float*>(d.out)[r * d.cols + i] = v;
      }
    }
  }
}

#ifdef SUBMODEL_Q8_X86
Q8_AVX512 inline void widen(const int8_t* codes, uint16_t scale, __m512& lo, __m512& hi) {
  const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes));
  const __m512 s = broadcast_half(scale);
  lo = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(c))), s);
  hi = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(c, 1))), s);
}

// fp32 -> bf16, round to nearest even (the values are finite), 16 at a time.
Q8_AVX512 inline __m256i to_bf16(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF)));
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16));
}

Q8_AVX512 void dequant_avx512(const Dequant& d, int64_t r0, int64_t r1) {
  const int64_t groups = d.cols / kQ8Group;
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* m = d.mask + r * d.mask_stride;
    for (int64_t k = 0; k < groups; ++k) {
      const int64_t i = r * d.cols + k * kQ8Group;
      __m512 lo, hi;
      widen(d.codes + i, d.scales[r * groups + k], lo, hi);
      uint32_t bits;
      std::memcpy(&bits, m + k * kQ8Group / 8, 4);
      lo = _mm512_maskz_mov_ps(__mmask16(bits), lo);
      hi = _mm512_maskz_mov_ps(__mmask16(bits >> 16), hi);
      if (d.bf16) {
        auto* o = static_cast<uint16_t*>(d.out) + i;
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(o), to_bf16(lo));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 16), to_bf16(hi));
      } else {
        float* o = static_cast<float*>(d.out) + i;
        _mm512_storeu_ps(o, lo);
        _mm512_storeu_ps(o + 16, hi);
      }
    }
  }
}
#endif

}  // namespace

torch::Tensor masked_linear_q8(const torch::Tensor& x_in, const torch::Tensor& codes,
                               const torch::Tensor& scales, const torch::Tensor& masks,
                               const torch::Tensor& row_lang,
                               const c10::optional<torch::Tensor>& bias, bool avx512,
                               bool single_row_tiles) {
  check_q8(codes, scales, "masked_linear_q8");
  const int64_t out = codes.size(0), in = codes.size(1), nbytes = (in + 7) / 8;
  TORCH_CHECK(x_in.dim() == 2 && x_in.size(1) == in && x_in.device().is_cpu() &&
                  (x_in.scalar_type() == torch::kFloat32 || x_in.scalar_type() == torch::kBFloat16),
              "masked_linear_q8: x must be a CPU float32 or bfloat16 [B, ", in, "] tensor, got ",
              x_in.scalar_type(), " ", x_in.sizes());
  TORCH_CHECK(masks.scalar_type() == torch::kUInt8 && masks.dim() == 3 && masks.size(1) == out &&
                  masks.size(2) == nbytes && masks.stride(2) == 1 && masks.stride(1) == nbytes,
              "masked_linear_q8: masks must be a uint8 [L, ", out, ", ", nbytes,
              "] tensor, each language's contiguous, got ", masks.scalar_type(), " ",
              masks.sizes());
  const int64_t B = x_in.size(0), L = masks.size(0);
  TORCH_CHECK(row_lang.scalar_type() == torch::kInt32 && row_lang.dim() == 1 &&
                  row_lang.size(0) == B,
              "masked_linear_q8: row_lang must be int32 [", B, "]");
  torch::Tensor bias_t = bias.has_value() ? bias->contiguous() : torch::Tensor();
  if (bias_t.defined()) {
    TORCH_CHECK(bias_t.numel() == out, "masked_linear_q8: bias must have ", out, " elements");
  }
  const auto lang = row_lang.contiguous();
  const int32_t* lp = lang.data_ptr<int32_t>();
  const std::vector<uint8_t> ones(nbytes + 4, 0xFF);
  const bool bf16_x = x_in.scalar_type() == torch::kBFloat16;
  bool vnni = false, dp_bf16 = false;
#ifdef SUBMODEL_Q8_X86
  vnni = avx512 && has_vnni();
  dp_bf16 = vnni && bf16_x && B > 1 && has_bf16();  // several bf16 rows: VDPBF16PS
#endif
  // Both AVX-512 paths read x in its own dtype (int8 codes made from it, or its bf16 bits);
  // the scalar one reads it in fp32.
  const auto x = vnni ? x_in.contiguous() : x_in.to(torch::kFloat32).contiguous();
  auto y = torch::empty({B, out}, x_in.options());
  Q8Gemv g;
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(lp[b] >= -1 && lp[b] < L, "masked_linear_q8: row_lang[", b, "] = ", lp[b],
                " is outside [-1, ", L, ")");
    g.masks.push_back(lp[b] < 0 ? ones.data()
                                : masks.data_ptr<uint8_t>() + lp[b] * masks.stride(0));
    g.mask_stride.push_back(lp[b] < 0 ? 0 : nbytes);
  }
  g.xh = dp_bf16 ? static_cast<const uint16_t*>(x.data_ptr()) : nullptr;
  if (dp_bf16) vnni = false;  // the int8 codes of x are not needed
  g.x = vnni || dp_bf16 ? nullptr : x.data_ptr<float>();
  const int64_t pairs = (in / kQ8Group + 1) / 2;
  const int64_t blocks = (pairs + kPairsPerBlock - 1) / kPairsPerBlock;
  std::vector<int8_t> xq(vnni ? B * pairs * 64 : 0, 0);
  std::vector<int32_t> xstart(vnni ? B * pairs * 16 : 0, 0);
  std::vector<float> xs(vnni ? B * blocks * 16 : 0, 0.f);
  g.cx = CodedX{xq.data(), xstart.data(), xs.data(), pairs, blocks};
#ifdef SUBMODEL_Q8_X86
  if (vnni && bf16_x) {
    quantize_x(static_cast<const c10::BFloat16*>(x.data_ptr()), B, in, g.cx);
  } else if (vnni) {
    quantize_x(x.data_ptr<float>(), B, in, g.cx);
  }
#endif
  g.codes = codes.data_ptr<int8_t>();
  g.scales = reinterpret_cast<const uint16_t*>(scales.data_ptr<at::Half>());
  g.bias = bias_t.defined() ? bias_t.data_ptr() : nullptr;
  g.bf16_bias = bias_t.defined() && bias_t.scalar_type() == torch::kBFloat16;
  g.y = y.data_ptr();
  g.bf16_y = x_in.scalar_type() == torch::kBFloat16;
  g.in = in;
  g.out = out;
  g.rows = B;
  g.single_row_tiles = single_row_tiles;
  if (B > 0) {
    at::parallel_for(0, out, grain(in), [&](int64_t o0, int64_t o1) {
#ifdef SUBMODEL_Q8_X86
      if (dp_bf16) return gemv_bf16(g, o0, o1);
      if (vnni) return gemv_avx512(g, o0, o1);
#endif
      gemv_generic(g, o0, o1);
    });
  }
  return y;
}

torch::Tensor dequantize_q8_into(const torch::Tensor& codes, const torch::Tensor& scales,
                                 const c10::optional<torch::Tensor>& mask, torch::Tensor out,
                                 bool avx512) {
  check_q8(codes, scales, "dequantize_q8_into");
  const int64_t rows = codes.size(0), cols = codes.size(1), nbytes = (cols + 7) / 8;
  TORCH_CHECK(out.device().is_cpu() && out.is_contiguous() && out.sizes() == codes.sizes() &&
                  (out.scalar_type() == torch::kFloat32 || out.scalar_type() == torch::kBFloat16),
              "dequantize_q8_into: out must be a contiguous float32 or bfloat16 tensor of shape ",
              codes.sizes());
  const bool has_mask = mask.has_value() && mask->defined();
  if (has_mask) {
    TORCH_CHECK(mask->scalar_type() == torch::kUInt8 && mask->is_contiguous() &&
                    mask->dim() == 2 && mask->size(0) == rows && mask->size(1) == nbytes,
                "dequantize_q8_into: mask must be a contiguous uint8 [", rows, ", ", nbytes, "]");
  }
  const std::vector<uint8_t> ones(nbytes + 4, 0xFF);
  Dequant d{codes.data_ptr<int8_t>(),
            reinterpret_cast<const uint16_t*>(scales.data_ptr<at::Half>()),
            has_mask ? mask->data_ptr<uint8_t>() : ones.data(), has_mask ? nbytes : 0,
            out.data_ptr(), out.scalar_type() == torch::kBFloat16, cols};
  at::parallel_for(0, rows, grain(cols), [&](int64_t r0, int64_t r1) {
#ifdef SUBMODEL_Q8_X86
    if (avx512) return dequant_avx512(d, r0, r1);
#endif
    dequant_generic(d, r0, r1);
  });
  return out;
}

}  // namespace submodel
