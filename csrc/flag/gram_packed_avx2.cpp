// The packed AVX2 micro-kernel of the float32 Gram at large p (contract in gram_packed.hpp, with
// kGramPackedAvx2MR and kGramPackedAvx2KC): the AVX-512 kernel's structure (gram_packed_avx512.cpp)
// for 16 ymm registers. Compiled with -mavx2 -mfma; called only when the CPU reports them.
//
// Strips of 16 rows (two 8-lane vectors), k-major; a 16 x 6 register tile of float32 accumulators
// (12 registers) takes the strip's two vectors and 6 broadcast values of the column side per
// k-step (12 fused multiply-adds, 8 loads), the shape of the BLIS/OpenBLAS Haswell and Zen SGEMM
// kernels. A column tile of 6 need not lie inside one 16-row strip, so each of its columns has
// its own pointer into the packed slice. Slices of 512 columns, as on AVX-512 (float32 partial
// sums of at most 512 products): 256 columns (a column tile and a row strip then fit a 32 KiB
// L1 together) measured the same up to p = 512 and slower above, where the float64 update of the
// result per slice weighs more (AMD EPYC Zen 3, 2 threads, best of 5, ms: p = 1024 347.8 vs
// 333.0, 2048 628.5 vs 537.5, 4096 1784 vs 1300).
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>

#include "common/cancel.hpp"
#include "flag/gram_packed.hpp"

namespace flagcore {
namespace simd_avx2 {
namespace {

constexpr int MR = static_cast<int>(kGramPackedAvx2MR);  // rows per packed strip (two 8-lane vectors)
constexpr int NR = 6;                                    // columns per register tile
constexpr int64_t KC = kGramPackedAvx2KC;
constexpr int64_t kBlockStrips = 8;  // row strips per L2 block (8 x 16 rows x KC floats = 256 KiB)

// In-register transpose of an 8 x 8 block: r[i] holds row i on entry, column i on exit.
inline void transpose8(__m256 r[8]) {
  __m256 t[8], u[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 2; ++i) {
    u[4 * i + 0] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
    u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
  for (int c = 0; c < 4; ++c) {
    r[c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x20);
    r[4 + c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x31);
  }
}

// out[s * kc * MR + k * MR + r] = rows[s * MR + r][k0 + k] for s < strips, k < kc, r < MR
// (zero for rows at or past nrows).
void pack(const float* const* rows, int64_t nrows, int64_t k0, int64_t kc, int64_t strips, float* out) {
  alignas(32) static const int32_t kMaskSrc[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t s = 0; s < strips; ++s)
    for (int h = 0; h < MR / 8; ++h) {
      const int64_t r0 = s * MR + h * 8;
      const float* src[8];
      for (int r = 0; r < 8; ++r) src[r] = r0 + r < nrows ? rows[r0 + r] + k0 : nullptr;
      float* dst = out + s * kc * MR + h * 8;
      int64_t k = 0;
      __m256 v[8];
      for (; k + 8 <= kc; k += 8) {
        for (int r = 0; r < 8; ++r) v[r] = src[r] ? _mm256_loadu_ps(src[r] + k) : _mm256_setzero_ps();
        transpose8(v);
        for (int c = 0; c < 8; ++c) _mm256_store_ps(dst + (k + c) * MR, v[c]);
      }
      if (k < kc) {
        const int rest = static_cast<int>(kc - k);
        const __m256i m = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kMaskSrc + 8 - rest));
        for (int r = 0; r < 8; ++r) v[r] = src[r] ? _mm256_maskload_ps(src[r] + k, m) : _mm256_setzero_ps();
        transpose8(v);
        for (int c = 0; c < rest; ++c) _mm256_store_ps(dst + (k + c) * MR, v[c]);
      }
    }
}

// Software prefetch of the next slice's rows into L2 while the current slice is multiplied, so
// the memory reads of the packing overlap with the arithmetic: one cache line every `every`
// k-steps of the tiles.
struct Prefetch {
  const float* const* rows = nullptr;
  int64_t nrows = 0, k = 0, lines = 0;  // rows to fetch, first column, lines per row
  int64_t row = 0, line = 0;
  int64_t every = 1, count = 1;
  inline void one() {
    if (row >= nrows) return;
    _mm_prefetch(reinterpret_cast<const char*>(rows[row] + k + line * 16), _MM_HINT_T1);
    if (++line == lines) {
      line = 0;
      ++row;
    }
  }
};

// g[t * ldg + r] = (first) or += (otherwise) sum_k a[k * MR + r] * b[t][k * MR] (float32 over the
// slice, then float64) for t < ncols and r < nrows (nrows <= 8 when Half: the rows r < 8). The
// twelve accumulators are named variables (GCC kept an array of them in memory, storing each
// one back on every step); after the loop they go through an aligned buffer.
template <bool Half>
inline void tile(int64_t kc, const float* __restrict a, const float* const* b, double* __restrict g,
                 int64_t ldg, int nrows, int ncols, bool first, Prefetch& pf) {
  __m256 x0 = _mm256_setzero_ps(), x1 = x0, x2 = x0, x3 = x0, x4 = x0, x5 = x0;  // rows 0-7
  __m256 y0 = x0, y1 = x0, y2 = x0, y3 = x0, y4 = x0, y5 = x0;                   // rows 8-15
  const float* const b0 = b[0];
  const float* const b1 = b[1];
  const float* const b2 = b[2];
  const float* const b3 = b[3];
  const float* const b4 = b[4];
  const float* const b5 = b[5];
  int64_t count = pf.count;  // in a register
#define FLAGCORE_COL(t)                                \
  {                                                    \
    const __m256 bt = _mm256_broadcast_ss(b##t + off); \
    x##t = _mm256_fmadd_ps(a0, bt, x##t);              \
    if (!Half) y##t = _mm256_fmadd_ps(a1, bt, y##t);   \
  }
#define FLAGCORE_STEP(o)                                                                            \
  {                                                                                                 \
    const int64_t off = (o);                                                                        \
    const __m256 a0 = _mm256_load_ps(a + off);                                                      \
    const __m256 a1 = Half ? a0 : _mm256_load_ps(a + off + 8);                                      \
    FLAGCORE_COL(0) FLAGCORE_COL(1) FLAGCORE_COL(2) FLAGCORE_COL(3) FLAGCORE_COL(4) FLAGCORE_COL(5) \
  }
  // two k-steps per iteration; the row strip's lines 8 steps ahead are prefetched into L1
  int64_t k = 0;
  for (; k + 2 <= kc; k += 2) {
    const int64_t o = k * MR;
    _mm_prefetch(reinterpret_cast<const char*>(a + o + 8 * MR), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(a + o + 9 * MR), _MM_HINT_T0);
    count -= 2;
    if (__builtin_expect(count <= 0, 0)) {
      count = pf.every;
      pf.one();
    }
    FLAGCORE_STEP(o)
    FLAGCORE_STEP(o + MR)
  }
  if (k < kc) FLAGCORE_STEP(k * MR)
#undef FLAGCORE_STEP
#undef FLAGCORE_COL
  pf.count = count;
  alignas(32) float buf[NR][16];
  _mm256_store_ps(buf[0], x0);
  _mm256_store_ps(buf[1], x1);
  _mm256_store_ps(buf[2], x2);
  _mm256_store_ps(buf[3], x3);
  _mm256_store_ps(buf[4], x4);
  _mm256_store_ps(buf[5], x5);
  if (!Half) {
    _mm256_store_ps(buf[0] + 8, y0);
    _mm256_store_ps(buf[1] + 8, y1);
    _mm256_store_ps(buf[2] + 8, y2);
    _mm256_store_ps(buf[3] + 8, y3);
    _mm256_store_ps(buf[4] + 8, y4);
    _mm256_store_ps(buf[5] + 8, y5);
  }
  // first: the slice's sums are stored (=), later slices add (+=)
  for (int t = 0; t < ncols; ++t) {
    double* d = g + t * ldg;
    int r = 0;
    for (; r + 4 <= nrows; r += 4) {
      const __m256d v = _mm256_cvtps_pd(_mm_load_ps(buf[t] + r));
      _mm256_storeu_pd(d + r, first ? v : _mm256_add_pd(_mm256_loadu_pd(d + r), v));
    }
    for (; r < nrows; ++r) d[r] = first ? double(buf[t][r]) : d[r] + double(buf[t][r]);
  }
}

// One slice (kc columns, packed strips from pk) of the tiles of rows [i0, i1) (i0 on a strip
// boundary; pk's strip 0 holds row i0) stored (first) or added into g (p x p, the layout of
// gram_packed.hpp: entry (i, j) at g[j * p + i]).
void slice_tiles(const float* pk, int64_t kc, int64_t p, int64_t i0, int64_t i1, double* g, bool first,
                 Prefetch& pf) {
  const int64_t rest = p - i0;
  const int64_t sa = (i1 - i0 + MR - 1) / MR;
  const int64_t ntj = (rest + NR - 1) / NR;
  // column c's packed values (stride MR per column of the slice); a column past the data reads
  // column 0 (its products are not stored)
  const auto col = [&](int64_t c) {
    if (c >= rest) c = 0;
    return pk + (c / MR) * kc * MR + c % MR;
  };
  // blocks of kBlockStrips row strips (their packed rows stay in L2) against every column tile
  // at or right of the block's diagonal (each tile's packed columns stay in L1 for the block)
  for (int64_t sb = 0; sb < sa; sb += kBlockStrips) {
    const int64_t se = std::min(sa, sb + kBlockStrips);
    for (int64_t jt = sb * MR / NR; jt < ntj; ++jt) {
      const int64_t c0 = jt * NR;  // first column of the tile (relative to i0)
      const float* b[NR];
      for (int t = 0; t < NR; ++t) b[t] = col(c0 + t);
      const int ncols = static_cast<int>(std::min<int64_t>(NR, rest - c0));
      for (int64_t s = sb; s < se; ++s) {
        const int64_t r0 = s * MR;
        if (c0 + NR - 1 < r0) continue;  // every entry below the diagonal
        const int nrows = static_cast<int>(std::min<int64_t>(MR, i1 - i0 - r0));
        double* d = g + (i0 + c0) * p + i0 + r0;
        // the next tile's lines of g into L2 while this one multiplies (its rows of g are far
        // apart: no hardware prefetcher has them); nothing past g's rows or columns
        const int64_t jn = s + 1 < se ? i0 + c0 : i0 + c0 + NR;
        const int64_t cn = s + 1 < se ? i0 + r0 + MR : i0 + sb * MR;
        for (int64_t t = jn; t < std::min(p, jn + NR); ++t)
          for (int64_t l = 0; l < std::min<int64_t>(MR, p - cn); l += 8)
            _mm_prefetch(reinterpret_cast<const char*>(g + t * p + cn + l), _MM_HINT_T1);
        if (c0 + NR - 1 < r0 + 8)
          tile<true>(kc, pk + s * kc * MR, b, d, p, std::min(nrows, 8), ncols, first, pf);
        else
          tile<false>(kc, pk + s * kc * MR, b, d, p, nrows, ncols, first, pf);
      }
    }
  }
}

}  // namespace

void gram_packed_pack(const float* const* rows, int64_t p, int64_t k0, int64_t kc, int64_t s0, int64_t s1,
                      float* out) {
  pack(rows + s0 * MR, p - s0 * MR, k0, kc, s1 - s0, out + s0 * kc * MR);
}

void gram_packed_slice(const float* pk, int64_t kc, int64_t p, int64_t i0, int64_t i1, double* g,
                       bool first) {
  Prefetch pf;
  pf.every = int64_t(1) << 62;
  pf.count = pf.every;
  slice_tiles(pk + (i0 / MR) * kc * MR, kc, p, i0, i1, g, first, pf);
}

void gram_packed_rows(const float* const* rows, int64_t p, int64_t i0, int64_t i1, int64_t k0, int64_t k1,
                      double* g) {
  const int64_t rest = p - i0;                  // rows i0 .. p - 1 are packed
  const int64_t strips = (rest + MR - 1) / MR;  // packed strips (the column side)
  const int64_t sa = (i1 - i0 + MR - 1) / MR;   // strips of the item's own rows
  const int64_t ntj = (rest + NR - 1) / NR;     // column tiles
  thread_local Scratch<float> pk_s;
  float* pk = pk_s.get(static_cast<size_t>(strips * KC * MR));
  for (int64_t k = k0; k < k1; k += KC) {
    check_cancel();
    const int64_t kc = std::min(KC, k1 - k);
    pack(rows + i0, rest, k, kc, strips, pk);
    Prefetch pf;
    if (k + kc < k1) {
      // k-steps of this slice's tiles (about): the tile pairs at or right of the diagonal
      const int64_t steps = std::max<int64_t>(1, sa * (2 * ntj - sa * MR / NR) / 2 * kc);
      pf.rows = rows + i0;
      pf.nrows = rest;
      pf.k = k + kc;
      pf.lines = (std::min(KC, k1 - k - kc) + 15) / 16;
      pf.every = std::max<int64_t>(1, steps / std::max<int64_t>(1, rest * pf.lines));
    }
    slice_tiles(pk, kc, p, i0, i1, g, k == k0, pf);
  }
}

}  // namespace simd_avx2
}  // namespace flagcore
