// Body of the Gram micro-kernel, compiled once per instruction set. The including file defines
//   FLAGCORE_SIMD_NS  namespace of this variant (simd_generic, simd_avx2, simd_avx512)
//   FLAGCORE_VLEN     float64 lanes per vector register (2, 4, 8)
//   FLAGCORE_TILE     rows per register tile (the tile is TILE x TILE pairs of rows)
// GCC/Clang vector extensions keep the code portable while pinning the vectorisation: each
// tile keeps TILE*TILE vector accumulators in registers and loads 2*TILE vectors per step.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "flag/gram.hpp"

namespace flagcore {
namespace FLAGCORE_SIMD_NS {
namespace {

constexpr int V = FLAGCORE_VLEN;
constexpr int TL = FLAGCORE_TILE;
typedef double vd __attribute__((vector_size(V * 8)));

inline vd load(const double* p) {
  vd v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// Diag: a tile on the diagonal (ri == rj, MR == NR): only the pairs i <= j, and the rows are
// loaded once (the upper triangle is all the callers read).
template <int MR, int NR, bool Diag, typename T>
inline void tile(const T* const* ri, const T* const* rj, int64_t k0, int64_t k1, double* acc, int64_t ld) {
  static_assert(!Diag || MR == NR, "a diagonal tile is square");
  vd s[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) s[i][j] = vd{0};
  int64_t k = k0;
  for (; k + V <= k1; k += V) {
    vd a[MR], b[NR];
    for (int i = 0; i < MR; ++i) a[i] = load(ri[i] + k);
    for (int j = 0; j < NR; ++j) b[j] = Diag ? a[j] : load(rj[j] + k);
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j)
        if (!Diag || i <= j) s[i][j] += a[i] * b[j];
  }
  double t[MR][NR] = {};
  for (; k < k1; ++k)
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j)
        if (!Diag || i <= j) t[i][j] += double(ri[i][k]) * double(rj[j][k]);
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) {
      if (Diag && i > j) continue;
      double sum = t[i][j];
      for (int l = 0; l < V; ++l) sum += s[i][j][l];
      acc[i * ld + j] += sum;
    }
}

// float32 inputs: products and short partial sums in float32 vectors of VF lanes, flushed into
// float64 every kFlushSteps vector steps, so each float32 partial sum holds at most kFlushSteps
// products (relative error ~ kFlushSteps * 2^-24 of the sum of |products| in the worst case,
// ~1e-6 typical; the packed kernels above this range hold 512).
// A product that overflows float32 (|x| > ~1e19) shows up as a non-finite diagonal, and
// gram_cpu recomputes such rows in float64.
//
// The columns go in chunks of exactly one flush block (kFlushSteps * VF columns): the rows of a
// tile pair (2 * TF rows, 4-8 KiB each) stay in L1/L2 while the tile runs, and all p rows of the
// chunk (p * 8 KiB with 16 lanes, p * 4 KiB with 8) stay in L2 while every tile pair of the
// triangle passes over them. Each tile keeps MR x NR float32 accumulators in registers; at the
// end of the block they are widened and added to float64 vector accumulators in memory (one per
// pair of rows, lanes reduced once per call), so the float64 work is 1/kFlushSteps of the multiply-adds.
// Diagonal tiles form only the pairs i <= j and load their rows once (loading them again as the
// "other" rows, as before, made p = 15 up to a fifth slower on numpy's arrays, whose rows start
// 16 bytes past a cache line: every 64-byte load spans two lines, and loads, not multiply-adds,
// were the limit there; same bits). While a chunk is computed, the next chunk of every row is
// prefetched (one cache line per row and vector step, spread over the tile pairs), because the
// hardware prefetchers follow few of the p concurrent row streams across page boundaries.
// Chunks, blocks and tiles depend on p and the column range only, never on the thread count.
#ifndef FLAGCORE_VF32
#define FLAGCORE_VF32 (2 * FLAGCORE_VLEN)
#endif
#ifndef FLAGCORE_TILE32
#define FLAGCORE_TILE32 FLAGCORE_TILE
#endif
constexpr int VF = FLAGCORE_VF32;
constexpr int VH = VF / 2;  // float64 lanes of one widened half
constexpr int TF = FLAGCORE_TILE32;
static_assert(TF >= 1 && TF <= 6, "the float32 tile table covers tiles up to 6 x 6");
// 128 vector steps (2048 columns with 16 lanes, 1024 with 8). With 32 (the first choice) the
// flushes and the short prefetch lead cost up to a fifth of the time: A/B in alternating
// processes on an AMD EPYC (Zen 4, AVX-512), 2 threads, n = 6e7 / p, best of 5, two rounds, ms,
// 32 vs 128 steps: AVX-512 p = 15 9.9 vs 8.1, 30 13.9-14.4 vs 11.4-11.6, 48 21.0-21.1 vs
// 17.4-17.6; AVX2 p = 15 11.8 vs 9.0, 30 16.2 vs 13.1, 36 21.2-21.4 vs 15.7-15.9 (256 steps: no
// better at p >= 20, slower on AVX2 at 30-36; 512: slower). Not measured on Intel.
// FLAGCORE_FLUSH_STEPS and FLAGCORE_PREFETCH_ROWS (like FLAGCORE_VF32 and FLAGCORE_TILE32) are
// compile-time knobs for A/B experiments (bench/kernel_ab.py); builds use the defaults.
#ifndef FLAGCORE_FLUSH_STEPS
#define FLAGCORE_FLUSH_STEPS 128
#endif
#ifndef FLAGCORE_PREFETCH_ROWS
#define FLAGCORE_PREFETCH_ROWS 8
#endif
constexpr int kFlushSteps = FLAGCORE_FLUSH_STEPS;
static_assert(kFlushSteps >= 1, "FLAGCORE_FLUSH_STEPS must be positive");
constexpr int64_t kChunk32 = int64_t(kFlushSteps) * VF;
constexpr int kMaxPrefetchRows = FLAGCORE_PREFETCH_ROWS;
static_assert(kMaxPrefetchRows >= 1, "FLAGCORE_PREFETCH_ROWS must be positive");
typedef float vf2 __attribute__((vector_size(VF * 4)));
typedef float vfh __attribute__((vector_size(VH * 4)));
typedef double vdh __attribute__((vector_size(VH * 8)));

inline vf2 loadf(const float* p) {
  vf2 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// The VF float32 lanes widened to float64 and added pairwise: lanes l and l + VH (two
// vcvtps2pd of half-width halves; a memcpy split makes GCC go through 128-bit pieces).
template <size_t... L>
inline vdh widen_sum_impl(const vf2& s, std::index_sequence<L...>) {
  const vfh lo = __builtin_shufflevector(s, s, static_cast<int>(L)...);
  const vfh hi = __builtin_shufflevector(s, s, static_cast<int>(L + VH)...);
#if defined(__AVX512F__)
  if constexpr (VH == 8) {  // GCC 12 lowers the 8-lane __builtin_convertvector in 4-lane pieces
    const __m512d a = _mm512_maskz_cvtps_pd(0xFF, reinterpret_cast<const __m256&>(lo));
    const __m512d b = _mm512_maskz_cvtps_pd(0xFF, reinterpret_cast<const __m256&>(hi));
    const __m512d sum = _mm512_add_pd(a, b);
    return reinterpret_cast<const vdh&>(sum);
  }
#endif
  return __builtin_convertvector(lo, vdh) + __builtin_convertvector(hi, vdh);
}
inline vdh widen_sum(const vf2& s) {
  return widen_sum_impl(s, std::make_index_sequence<VH>{});
}

// One chunk [k0, k1) (k1 - k0 <= kChunk32) of a tile pair: dv[i * ldv + j] (float64 vectors)
// += the block's float32 vector partial sums; the columns after the last whole vector step go
// in float64 into tail[i * ldt + j]. pf: rows whose next chunk is prefetched meanwhile.
template <int MR, int NR, bool Diag>
inline void tile_f32(const float* const* ri, const float* const* rj, int64_t k0, int64_t k1, vdh* dv,
                     int64_t ldv, double* tail, int64_t ldt, const float* const* pf, int npf) {
  static_assert(!Diag || MR == NR, "a diagonal tile is square");
  vf2 s[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) s[i][j] = vf2{0};
  int64_t k = k0;
  for (; k + VF <= k1; k += VF) {
    for (int r = 0; r < npf; ++r) __builtin_prefetch(pf[r] + k, 0, 2);
    vf2 a[MR];
    for (int i = 0; i < MR; ++i) a[i] = loadf(ri[i] + k);
    for (int j = 0; j < NR; ++j) {
      const vf2 b = Diag ? a[j] : loadf(rj[j] + k);
      for (int i = 0; i < MR; ++i)
        if (!Diag || i <= j) s[i][j] += a[i] * b;
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j)
      if (!Diag || i <= j) dv[i * ldv + j] += widen_sum(s[i][j]);
  for (; k < k1; ++k)
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j)
        if (!Diag || i <= j) tail[i * ldt + j] += double(ri[i][k]) * double(rj[j][k]);
}

inline void tile_f32_any(int mi, int nj, bool diag, const float* const* ri, const float* const* rj,
                         int64_t k0, int64_t k1, vdh* dv, int64_t ldv, double* tail, int64_t ldt,
                         const float* const* pf, int npf) {
  // clang-format off: the tile table, full tiles first
#define FLAGCORE_TILE_CASE(M, N)                                                                         \
  case M * 8 + N:                                                                                        \
    if constexpr (M <= TF && N <= TF) {                                                                  \
      if (!diag) tile_f32<M, N, false>(ri, rj, k0, k1, dv, ldv, tail, ldt, pf, npf);                    \
      else if constexpr (M == N) tile_f32<M, N, true>(ri, rj, k0, k1, dv, ldv, tail, ldt, pf, npf);     \
    }                                                                                                    \
    return;
  switch (mi * 8 + nj) {
    FLAGCORE_TILE_CASE(1, 1) FLAGCORE_TILE_CASE(1, 2) FLAGCORE_TILE_CASE(1, 3) FLAGCORE_TILE_CASE(1, 4)
    FLAGCORE_TILE_CASE(1, 5) FLAGCORE_TILE_CASE(1, 6)
    FLAGCORE_TILE_CASE(2, 1) FLAGCORE_TILE_CASE(2, 2) FLAGCORE_TILE_CASE(2, 3) FLAGCORE_TILE_CASE(2, 4)
    FLAGCORE_TILE_CASE(2, 5) FLAGCORE_TILE_CASE(2, 6)
    FLAGCORE_TILE_CASE(3, 1) FLAGCORE_TILE_CASE(3, 2) FLAGCORE_TILE_CASE(3, 3) FLAGCORE_TILE_CASE(3, 4)
    FLAGCORE_TILE_CASE(3, 5) FLAGCORE_TILE_CASE(3, 6)
    FLAGCORE_TILE_CASE(4, 1) FLAGCORE_TILE_CASE(4, 2) FLAGCORE_TILE_CASE(4, 3) FLAGCORE_TILE_CASE(4, 4)
    FLAGCORE_TILE_CASE(4, 5) FLAGCORE_TILE_CASE(4, 6)
    FLAGCORE_TILE_CASE(5, 1) FLAGCORE_TILE_CASE(5, 2) FLAGCORE_TILE_CASE(5, 3) FLAGCORE_TILE_CASE(5, 4)
    FLAGCORE_TILE_CASE(5, 5) FLAGCORE_TILE_CASE(5, 6)
    FLAGCORE_TILE_CASE(6, 1) FLAGCORE_TILE_CASE(6, 2) FLAGCORE_TILE_CASE(6, 3) FLAGCORE_TILE_CASE(6, 4)
    FLAGCORE_TILE_CASE(6, 5) FLAGCORE_TILE_CASE(6, 6)
    default: break;
  }
#undef FLAGCORE_TILE_CASE
  // clang-format on
}

// float32: acc (p x p, upper triangle) += X[:, k0:k1] X[:, k0:k1]^T. The float64 vector
// accumulators live in a thread-local scratch for the call; their lanes are added in order at
// the end, after the scalar tail sums.
void accumulate_f32(const float* const* rows, int64_t p, int64_t k0, int64_t k1, double* acc) {
  const int64_t tiles = (p + TF - 1) / TF;
  const int64_t pairs = tiles * (tiles + 1) / 2;
  thread_local std::vector<vdh> dv_store;
  thread_local std::vector<double> tail_store;
  const size_t pp = static_cast<size_t>(p * p);
  if (dv_store.size() < pp) dv_store.resize(pp);
  if (tail_store.size() < pp) tail_store.resize(pp);
  vdh* dv = dv_store.data();
  double* tail = tail_store.data();
  for (int64_t i = 0; i < p; ++i)
    for (int64_t j = i; j < p; ++j) {
      dv[i * p + j] = vdh{0};
      tail[i * p + j] = 0.0;
    }
  // Tile pair t prefetches rows t, t + pairs, ... of the next chunk.
  const int per_pair = static_cast<int>(std::min<int64_t>(kMaxPrefetchRows, (p + pairs - 1) / pairs));
  const float* pf[kMaxPrefetchRows];
  for (int64_t c0 = k0; c0 < k1; c0 += kChunk32) {
    const int64_t c1 = std::min(c0 + kChunk32, k1);
    const bool next = c1 + kChunk32 <= k1;  // a whole next chunk: prefetch it
    int64_t t = 0;
    for (int64_t I = 0; I < p; I += TF) {
      const int mi = static_cast<int>(std::min<int64_t>(TF, p - I));
      for (int64_t J = I; J < p; J += TF, ++t) {
        const int nj = static_cast<int>(std::min<int64_t>(TF, p - J));
        int npf = 0;
        if (next)
          for (int64_t r = t; r < p && npf < per_pair; r += pairs) pf[npf++] = rows[r] + kChunk32;
        tile_f32_any(mi, nj, I == J, rows + I, rows + J, c0, c1, dv + I * p + J, p, tail + I * p + J, p, pf,
                     npf);
      }
    }
  }
  for (int64_t i = 0; i < p; ++i)
    for (int64_t j = i; j < p; ++j) {
      double s = tail[i * p + j];
      for (int l = 0; l < VH; ++l) s += dv[i * p + j][l];
      acc[i * p + j] += s;
    }
}

template <typename T>
inline void tile_any(int mi, int nj, bool diag, const T* const* ri, const T* const* rj, int64_t k0,
                     int64_t k1, double* acc, int64_t ld) {
  // clang-format off: one row of the 4 x 4 tile table per line
#define FLAGCORE_TILE_CASE(M, N)                                                        \
  case M * 8 + N:                                                                       \
    if constexpr (M <= TL && N <= TL) {                                                 \
      if (!diag) tile<M, N, false, T>(ri, rj, k0, k1, acc, ld);                         \
      else if constexpr (M == N) tile<M, N, true, T>(ri, rj, k0, k1, acc, ld);          \
    }                                                                                   \
    return;
  switch (mi * 8 + nj) {
    FLAGCORE_TILE_CASE(1, 1) FLAGCORE_TILE_CASE(1, 2) FLAGCORE_TILE_CASE(1, 3) FLAGCORE_TILE_CASE(1, 4)
    FLAGCORE_TILE_CASE(2, 1) FLAGCORE_TILE_CASE(2, 2) FLAGCORE_TILE_CASE(2, 3) FLAGCORE_TILE_CASE(2, 4)
    FLAGCORE_TILE_CASE(3, 1) FLAGCORE_TILE_CASE(3, 2) FLAGCORE_TILE_CASE(3, 3) FLAGCORE_TILE_CASE(3, 4)
    FLAGCORE_TILE_CASE(4, 1) FLAGCORE_TILE_CASE(4, 2) FLAGCORE_TILE_CASE(4, 3) FLAGCORE_TILE_CASE(4, 4)
    default: break;
  }
#undef FLAGCORE_TILE_CASE
  // clang-format on
}

// Columns per chunk (float64): the chunk of all p rows should stay in L2 (~256 KiB) while every
// tile passes over it.
inline int64_t chunk_columns(int64_t p, int64_t elem_size) {
  int64_t c = (256 * 1024) / std::max<int64_t>(1, p * elem_size);
  c = std::max<int64_t>(64, std::min<int64_t>(8192, c));
  return c - c % 16;
}

template <typename T>
void accumulate(const T* const* rows, int64_t p, int64_t k0, int64_t k1, double* acc) {
  const int64_t ch = chunk_columns(p, static_cast<int64_t>(sizeof(T)));
  for (int64_t c0 = k0; c0 < k1; c0 += ch) {
    const int64_t c1 = std::min(c0 + ch, k1);
    for (int64_t I = 0; I < p; I += TL) {
      const int mi = static_cast<int>(std::min<int64_t>(TL, p - I));
      for (int64_t J = I; J < p; J += TL) {
        const int nj = static_cast<int>(std::min<int64_t>(TL, p - J));
        tile_any<T>(mi, nj, I == J, rows + I, rows + J, c0, c1, acc + I * p + J, p);
      }
    }
  }
}

}  // namespace

void gram_accumulate(const float* const* rows, int64_t p, int64_t k0, int64_t k1, double* acc) {
  accumulate_f32(rows, p, k0, k1, acc);
}
void gram_accumulate(const double* const* rows, int64_t p, int64_t k0, int64_t k1, double* acc) {
  accumulate<double>(rows, p, k0, k1, acc);
}

}  // namespace FLAGCORE_SIMD_NS
}  // namespace flagcore
