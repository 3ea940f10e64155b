// The packed AVX-512 micro-kernel of the float32 Gram at large p (contract in gram_packed.hpp).
// Compiled with -mavx512f -mavx512dq -mavx512vl; called only when the CPU reports them.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>

#include "common/cancel.hpp"
#include "flag/gram_packed.hpp"
#include "flag/transpose16_avx512.hpp"

namespace flagcore {
namespace simd_avx512 {
namespace {

constexpr int MR = static_cast<int>(kGramPackedMR);  // rows per packed strip (two 16-lane vectors)
constexpr int NR = 8;                                // columns per register tile
constexpr int64_t KC = kGramPackedKC;
constexpr int64_t kBlockStrips = 4;  // row strips per L2 block (4 x 32 rows x KC floats = 256 KiB)

// out[s * kc * MR + k * MR + r] = rows[s * MR + r][k0 + k] for s < strips, k < kc, r < MR
// (zero for rows at or past nrows).
void pack(const float* const* rows, int64_t nrows, int64_t k0, int64_t kc, int64_t strips, float* out) {
  for (int64_t s = 0; s < strips; ++s)
    for (int h = 0; h < MR / 16; ++h) {
      const int64_t r0 = s * MR + h * 16;
      const float* src[16];
      for (int r = 0; r < 16; ++r) src[r] = r0 + r < nrows ? rows[r0 + r] + k0 : nullptr;
      float* dst = out + s * kc * MR + h * 16;
      int64_t k = 0;
      __m512 v[16];
      for (; k + 16 <= kc; k += 16) {
        for (int r = 0; r < 16; ++r) v[r] = src[r] ? _mm512_loadu_ps(src[r] + k) : _mm512_setzero_ps();
        transpose16(v);
        for (int c = 0; c < 16; ++c) _mm512_store_ps(dst + (k + c) * MR, v[c]);
      }
      if (k < kc) {
        const int rest = static_cast<int>(kc - k);
        const __mmask16 m = static_cast<__mmask16>((1u << rest) - 1u);
        for (int r = 0; r < 16; ++r)
          v[r] = src[r] ? _mm512_maskz_loadu_ps(m, src[r] + k) : _mm512_setzero_ps();
        transpose16(v);
        for (int c = 0; c < rest; ++c) _mm512_store_ps(dst + (k + c) * MR, v[c]);
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

// g[t * ldg + r] = (first) or += (otherwise) sum_k a[k * MR + r] * b[k * MR + t] (float32 over
// the slice, then float64) for t < ncols and r < nrows (nrows <= 16 when Half: the rows r < 16).
template <bool Half>
inline void tile(int64_t kc, const float* __restrict a, const float* __restrict b, double* __restrict g,
                 int64_t ldg, int nrows, int ncols, bool first, Prefetch& pf) {
  __m512 c0[NR], c1[NR];
  for (int t = 0; t < NR; ++t) {
    c0[t] = _mm512_setzero_ps();
    c1[t] = _mm512_setzero_ps();
  }
  int64_t count = pf.count;  // in a register (pf.count in memory cost a load and a store per step)
  const auto step = [&](const float* ak, const float* bk) {
    const __m512 a0 = _mm512_load_ps(ak);
    if (Half) {
#pragma GCC unroll 8
      for (int t = 0; t < NR; ++t) c0[t] = _mm512_fmadd_ps(a0, _mm512_set1_ps(bk[t]), c0[t]);
    } else {
      const __m512 a1 = _mm512_load_ps(ak + 16);
#pragma GCC unroll 8
      for (int t = 0; t < NR; ++t) {
        const __m512 bt = _mm512_set1_ps(bk[t]);
        c0[t] = _mm512_fmadd_ps(a0, bt, c0[t]);
        c1[t] = _mm512_fmadd_ps(a1, bt, c1[t]);
      }
    }
  };
  // two k-steps per iteration: the loop's own instructions (counters, branch) once per two
  // 16-FMA steps; the row strip's two rows 8 steps ahead (4 lines) are prefetched
  int64_t k = 0;
  for (; k + 2 <= kc; k += 2) {
    const float* ak = a + k * MR;
    const float* bk = b + k * MR;
    _mm_prefetch(reinterpret_cast<const char*>(ak + 8 * MR), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(ak + 8 * MR + 16), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(ak + 9 * MR), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(ak + 9 * MR + 16), _MM_HINT_T0);
    count -= 2;
    if (__builtin_expect(count <= 0, 0)) {
      count = pf.every;
      pf.one();
    }
    step(ak, bk);
    step(ak + MR, bk + MR);
  }
  if (k < kc) step(a + k * MR, b + k * MR);
  pf.count = count;
  // first: the slice's sums are stored (=), later slices add (+=)
  const auto add = [first](double* dst, __m256 v, int lanes) {
    if (lanes <= 0) return;
    const __mmask8 m = lanes >= 8 ? __mmask8(0xFF) : static_cast<__mmask8>((1u << lanes) - 1u);
    const __m512d w = _mm512_cvtps_pd(v);
    _mm512_mask_storeu_pd(dst, m, first ? w : _mm512_add_pd(_mm512_maskz_loadu_pd(m, dst), w));
  };
  for (int t = 0; t < ncols; ++t) {
    double* d = g + t * ldg;
    add(d, _mm512_castps512_ps256(c0[t]), nrows);
    add(d + 8, _mm512_extractf32x8_ps(c0[t], 1), nrows - 8);
    if (!Half) {
      add(d + 16, _mm512_castps512_ps256(c1[t]), nrows - 16);
      add(d + 24, _mm512_extractf32x8_ps(c1[t], 1), nrows - 24);
    }
  }
}

}  // namespace

namespace {

// One slice (kc columns, packed strips from pk) of the tiles of rows [i0, i1) (i0 on a strip
// boundary; pk's strip 0 holds row i0) stored (first) or added into g (p x p, the layout of
// gram_packed.hpp: entry (i, j) at g[j * p + i]).
void slice_tiles(const float* pk, int64_t kc, int64_t p, int64_t i0, int64_t i1, double* g, bool first,
                 Prefetch& pf) {
  const int64_t rest = p - i0;
  const int64_t sa = (i1 - i0 + MR - 1) / MR;
  const int64_t ntj = (rest + NR - 1) / NR;
  // blocks of kBlockStrips row strips (their packed rows stay in L2) against every column tile
  // at or right of the block's diagonal (each tile's packed columns stay in L1 for the block)
  for (int64_t sb = 0; sb < sa; sb += kBlockStrips) {
    const int64_t se = std::min(sa, sb + kBlockStrips);
    for (int64_t jt = sb * MR / NR; jt < ntj; ++jt) {
      const int64_t c0 = jt * NR;  // first column of the tile (relative to i0)
      const float* b = pk + (c0 / MR) * kc * MR + c0 % MR;
      const int ncols = static_cast<int>(std::min<int64_t>(NR, rest - c0));
      for (int64_t s = sb; s < se; ++s) {
        const int64_t r0 = s * MR;
        if (c0 + NR - 1 < r0) continue;  // every entry below the diagonal
        const int nrows = static_cast<int>(std::min<int64_t>(MR, i1 - i0 - r0));
        double* d = g + (i0 + c0) * p + i0 + r0;
        // the next tile's lines of g into L2 while this one multiplies (its rows of g are far
        // apart: no hardware prefetcher has them); its first row jn and column cn of g, nothing
        // past g's rows or columns
        const int64_t jn = s + 1 < se ? i0 + c0 : i0 + c0 + NR;
        const int64_t cn = s + 1 < se ? i0 + r0 + MR : i0 + sb * MR;
        for (int64_t t = jn; t < std::min(p, jn + NR); ++t)
          for (int64_t l = 0; l < std::min<int64_t>(MR, p - cn); l += 8)
            _mm_prefetch(reinterpret_cast<const char*>(g + t * p + cn + l), _MM_HINT_T1);
        if (c0 + NR - 1 < r0 + 16)
          tile<true>(kc, pk + s * kc * MR, b, d, p, std::min(nrows, 16), ncols, first, pf);
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
      // k-steps of this slice's tiles (about): the strip pairs at or right of the diagonal
      const int64_t steps = std::max<int64_t>(1, sa * (2 * ntj - sa * (MR / NR)) / 2 * kc);
      pf.rows = rows + i0;
      pf.nrows = rest;
      pf.k = k + kc;
      pf.lines = (std::min(KC, k1 - k - kc) + 15) / 16;
      pf.every = std::max<int64_t>(1, steps / std::max<int64_t>(1, rest * pf.lines));
    }
    slice_tiles(pk, kc, p, i0, i1, g, k == k0, pf);
  }
}

}  // namespace simd_avx512
}  // namespace flagcore
