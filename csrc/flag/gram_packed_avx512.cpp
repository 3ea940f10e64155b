// The packed AVX-512 micro-kernel of the float32 Gram at large p (contract in gram_packed.hpp).
// Compiled with -mavx512f -mavx512dq -mavx512vl; called only when the CPU reports them.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>

#include "flag/gram_packed.hpp"
#include "flag/gram_packed_driver.hpp"
#include "flag/transpose16_avx512.hpp"

namespace flagcore {
namespace simd_avx512 {
namespace {

constexpr int MR = static_cast<int>(kGramPackedMR);  // rows per packed strip (two 16-lane vectors)
constexpr int NR = 8;                                // columns per register tile
constexpr int64_t KC = kGramPackedKC;
constexpr int64_t kBlockStrips = 4;  // row strips per L2 block (4 x 32 rows x KC floats = 256 KiB)

// The kernel the driver (gram_packed_driver.hpp) runs.
struct Kernel {
  static constexpr int MR = simd_avx512::MR, NR = simd_avx512::NR;
  static constexpr int64_t KC = simd_avx512::KC, kBlockStrips = simd_avx512::kBlockStrips;

  // out[s * kc * MR + k * MR + r] = rows[s * MR + r][k0 + k] for s < strips, k < kc, r < MR
  // (zero for rows at or past nrows).
  static void pack(const float* const* rows, int64_t nrows, int64_t k0, int64_t kc, int64_t strips,
                   float* out) {
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

  // g[t * ldg + r] = (first) or += (otherwise) sum_k a[k * MR + r] * b[0][k * MR + t] (float32
  // over the slice, then float64) for t < ncols and r < nrows (nrows <= 16 when Half: the rows
  // r < 16).
  template <bool Half>
  static void tile(int64_t kc, const float* __restrict a, const float* const* bc, double* __restrict g,
                   int64_t ldg, int nrows, int ncols, bool first, packed::Prefetch& pf) {
    const float* __restrict b = bc[0];  // the tile's columns are consecutive in one strip (NR divides MR)
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
};

}  // namespace

FLAGCORE_GRAM_PACKED_ENTRY_POINTS(Kernel)

}  // namespace simd_avx512
}  // namespace flagcore
