// The part of the packed FMA Gram kernels that does not depend on the instruction set: the
// software prefetch of the next slice, the walk over a slice's register tiles, and the slices of
// a work item (contract in gram_packed.hpp). Included by gram_packed_avx512.cpp and
// gram_packed_avx2.cpp, each compiled with its own instruction set: everything here has internal
// linkage (an unnamed namespace), so the two copies are never merged by the linker.
//
// A kernel K provides
//   K::MR, K::NR        rows per packed strip, columns per register tile (tiles whose columns
//                       all lie left of the strip's first half are skipped, those whose columns
//                       lie left of its second half run on the first MR / 2 rows)
//   K::KC               columns per slice
//   K::kBlockStrips     row strips per L2 block
//   K::pack(rows, nrows, k0, kc, strips, out)     out[s * kc * MR + k * MR + r] = rows[s * MR + r][k0 + k]
//                                                  (zero for rows at or past nrows)
//   K::tile<Half>(kc, a, b, g, ldg, nrows, ncols, first, pf)
//                       g[t * ldg + r] (=) first or (+=) sum_k a[k * MR + r] * b[t][k * MR], float32
//                       over the slice, then float64, for t < ncols, r < nrows (< MR / 2 when Half)
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "common/cancel.hpp"
#include "flag/gram_packed.hpp"

namespace flagcore {
namespace {
namespace packed {

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

// One slice (kc columns, packed strips from pk) of the tiles of rows [i0, i1) (i0 on a strip
// boundary; pk's strip 0 holds row i0) stored (first) or added into g (p x p, the layout of
// gram_packed.hpp: entry (i, j) at g[j * p + i]).
template <class K>
void slice_tiles(const float* pk, int64_t kc, int64_t p, int64_t i0, int64_t i1, double* g, bool first,
                 Prefetch& pf) {
  constexpr int MR = K::MR, NR = K::NR;
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
  // at or right of the block's diagonal (each tile's packed columns stay in L1 for the block).
  // A strip's column tiles start at its own first row r0 (when NR does not divide MR, strips
  // differ in r0 mod NR): tile jt of strip s covers columns [jt * NR + r0 % NR, + NR), so no
  // tile holds columns left of the strip's diagonal block, and the strips of a block at the
  // same jt read nearly the same columns. Every entry still comes from one tile, the same
  // multiply-adds in the same order: the layout of the tiles changes no bit. (AVX2, 16-row
  // strips and 6-column tiles: a cost model of the tiles, counting 4 cycles per step for a tile
  // of fewer than 8 accumulators (the fused multiply-add's latency), puts the cycles per needed
  // pair at 1.20 / 1.14 / 1.05 with tiles on multiples of 6 and 1.19 / 1.10 / 1.05 this way at
  // p = 64 / 128 / 256; measured, both in one process alternating, 12 rounds of 3 calls, best,
  // ms: 2 threads 13.58 / 23.38 / 42.72 vs 13.36 / 22.87 / 42.17, one thread 27.10 / 46.15 /
  // 83.47 vs 26.76 / 45.59 / 82.63, n = 4e5 / 2e5 / 1e5. With AVX-512's 32-row strips and
  // 8-column tiles r0 % NR is 0: nothing changes there.)
  const auto first_col = [&](int64_t jt, int64_t s) { return jt * NR + (s * MR) % NR; };
  for (int64_t sb = 0; sb < sa; sb += K::kBlockStrips) {
    const int64_t se = std::min<int64_t>(sa, sb + K::kBlockStrips);
    for (int64_t jt = sb * MR / NR; jt < ntj; ++jt) {
      for (int64_t s = sb; s < se; ++s) {
        const int64_t r0 = s * MR;
        const int64_t c0 = first_col(jt, s);           // first column of the tile (relative to i0)
        if (c0 + NR - 1 < r0 || c0 >= rest) continue;  // every entry below the diagonal, or no column
        const float* b[NR];
        for (int t = 0; t < NR; ++t) b[t] = col(c0 + t);
        const int ncols = static_cast<int>(std::min<int64_t>(NR, rest - c0));
        const int nrows = static_cast<int>(std::min<int64_t>(MR, i1 - i0 - r0));
        double* d = g + (i0 + c0) * p + i0 + r0;
        // the next tile's lines of g into L2 while this one multiplies (its rows of g are far
        // apart: no hardware prefetcher has them); its first row jn and column cn of g, nothing
        // past g's rows or columns
        const int64_t jn = i0 + (s + 1 < se ? first_col(jt, s + 1) : first_col(jt + 1, sb));
        const int64_t cn = s + 1 < se ? i0 + r0 + MR : i0 + sb * MR;
        for (int64_t t = jn; t < std::min(p, jn + NR); ++t)
          for (int64_t l = 0; l < std::min<int64_t>(MR, p - cn); l += 8)
            _mm_prefetch(reinterpret_cast<const char*>(g + t * p + cn + l), _MM_HINT_T1);
        if (c0 + NR - 1 < r0 + MR / 2)
          K::template tile<true>(kc, pk + s * kc * MR, b, d, p, std::min(nrows, MR / 2), ncols, first, pf);
        else
          K::template tile<false>(kc, pk + s * kc * MR, b, d, p, nrows, ncols, first, pf);
      }
    }
  }
}

// gram_packed_pack: strips [s0, s1) of the slice at column k0 of all p rows.
template <class K>
void pack_strips(const float* const* rows, int64_t p, int64_t k0, int64_t kc, int64_t s0, int64_t s1,
                 float* out) {
  K::pack(rows + s0 * K::MR, p - s0 * K::MR, k0, kc, s1 - s0, out + s0 * kc * K::MR);
}

// gram_packed_slice: a packed slice of all rows, rows [i0, i1) against [i0, p).
template <class K>
void slice(const float* pk, int64_t kc, int64_t p, int64_t i0, int64_t i1, double* g, bool first) {
  Prefetch pf;
  pf.every = int64_t(1) << 62;
  pf.count = pf.every;
  slice_tiles<K>(pk + (i0 / K::MR) * kc * K::MR, kc, p, i0, i1, g, first, pf);
}

// gram_packed_rows: one work item, its own slices packed per slice.
template <class K>
void rows(const float* const* rows, int64_t p, int64_t i0, int64_t i1, int64_t k0, int64_t k1, double* g) {
  constexpr int MR = K::MR, NR = K::NR;
  constexpr int64_t KC = K::KC;
  const int64_t rest = p - i0;                  // rows i0 .. p - 1 are packed
  const int64_t strips = (rest + MR - 1) / MR;  // packed strips (the column side)
  const int64_t sa = (i1 - i0 + MR - 1) / MR;   // strips of the item's own rows
  const int64_t ntj = (rest + NR - 1) / NR;     // column tiles
  thread_local Scratch<float> pk_s;
  float* pk = pk_s.get(static_cast<size_t>(strips * KC * MR));
  for (int64_t k = k0; k < k1; k += KC) {
    check_cancel();
    const int64_t kc = std::min(KC, k1 - k);
    K::pack(rows + i0, rest, k, kc, strips, pk);
    Prefetch pf;
    if (k + kc < k1) {
      // k-steps of this slice's tiles (about): the tiles at or right of the diagonal
      const int64_t steps = std::max<int64_t>(1, sa * (2 * ntj - sa * MR / NR) / 2 * kc);
      pf.rows = rows + i0;
      pf.nrows = rest;
      pf.k = k + kc;
      pf.lines = (std::min(KC, k1 - k - kc) + 15) / 16;
      pf.every = std::max<int64_t>(1, steps / std::max<int64_t>(1, rest * pf.lines));
    }
    slice_tiles<K>(pk, kc, p, i0, i1, g, k == k0, pf);
  }
}

}  // namespace packed
}  // namespace
}  // namespace flagcore

// The three functions of gram_packed.hpp for kernel K, in the including file's namespace.
#define FLAGCORE_GRAM_PACKED_ENTRY_POINTS(K)                                                                 \
  void gram_packed_pack(const float* const* rows, int64_t p, int64_t k0, int64_t kc, int64_t s0, int64_t s1, \
                        float* out) {                                                                        \
    packed::pack_strips<K>(rows, p, k0, kc, s0, s1, out);                                                    \
  }                                                                                                          \
  void gram_packed_slice(const float* pk, int64_t kc, int64_t p, int64_t i0, int64_t i1, double* g,          \
                         bool first) {                                                                       \
    packed::slice<K>(pk, kc, p, i0, i1, g, first);                                                           \
  }                                                                                                          \
  void gram_packed_rows(const float* const* rows, int64_t p, int64_t i0, int64_t i1, int64_t k0, int64_t k1, \
                        double* g) {                                                                         \
    packed::rows<K>(rows, p, i0, i1, k0, k1, g);                                                             \
  }
