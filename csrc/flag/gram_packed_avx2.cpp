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
// L1 together) measured the same up to p = 2048 and slower at 4096, where the float64 update
// of the result per slice weighs more (AMD EPYC Zen 3, 2 threads, best of 6, rotating order,
// ms, 256 vs 512: p = 1024 352.9 vs 350.5, 2048 579.8 vs 600.0, 4096 1355.9 vs 1201.6).
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>

#include "flag/gram_packed.hpp"
#include "flag/gram_packed_driver.hpp"

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

// The kernel the driver (gram_packed_driver.hpp) runs.
struct Kernel {
  static constexpr int MR = simd_avx2::MR, NR = simd_avx2::NR;
  static constexpr int64_t KC = simd_avx2::KC, kBlockStrips = simd_avx2::kBlockStrips;

  // out[s * kc * MR + k * MR + r] = rows[s * MR + r][k0 + k] for s < strips, k < kc, r < MR
  // (zero for rows at or past nrows).
  static void pack(const float* const* rows, int64_t nrows, int64_t k0, int64_t kc, int64_t strips,
                   float* out) {
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

  // g[t * ldg + r] = (first) or += (otherwise) sum_k a[k * MR + r] * b[t][k * MR] (float32 over the
  // slice, then float64) for t < ncols and r < nrows (nrows <= 8 when Half: the rows r < 8). A
  // tile of at most 4 (2) columns, the last one of a row strip when p is not a multiple of 6,
  // multiplies only 4 (2) of them: at p = 64 and 128 the padding columns were 5 % of the
  // multiply-adds (ncols = 4 and 2). Measured (both variants in one process, alternating, 12
  // rounds of 3 calls, 2 threads, ms, min / lower quartile, 6 columns vs narrow): p = 64 14.32 /
  // 15.53 vs 14.14 / 14.79, 128 25.24 / 28.12 vs 24.14 / 26.33, 130 25.50 / 29.73 vs 24.74 /
  // 27.99 (n = 4e5, 2e5, 2e5). The sums of the columns kept are the same operations: same bits.
  template <bool Half>
  static void tile(int64_t kc, const float* __restrict a, const float* const* b, double* __restrict g,
                   int64_t ldg, int nrows, int ncols, bool first, packed::Prefetch& pf) {
    if (ncols > 4)
      tile_cols<Half, 6>(kc, a, b, g, ldg, nrows, ncols, first, pf);
    else if (ncols > 2)
      tile_cols<Half, 4>(kc, a, b, g, ldg, nrows, ncols, first, pf);
    else
      tile_cols<Half, 2>(kc, a, b, g, ldg, nrows, ncols, first, pf);
  }

  // tile for ncols <= NC, multiplying NC columns. The twelve accumulators are named variables
  // (GCC kept an array of them in memory, storing each one back on every step); after the loop
  // they go through an aligned buffer. Not inlined: inlined, the six variants in one function
  // left GCC too few registers, and the 16 x 6 loop read pointers from the stack on every step.
  template <bool Half, int NC>
  __attribute__((noinline)) static void tile_cols(int64_t kc, const float* __restrict a,
                                                  const float* const* b, double* __restrict g, int64_t ldg,
                                                  int nrows, int ncols, bool first, packed::Prefetch& pf) {
    static_assert(NC == 2 || NC == 4 || NC == NR, "tile_cols: 2, 4 or NR columns");
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
  if (t < NC) {                                        \
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
};

}  // namespace

FLAGCORE_GRAM_PACKED_ENTRY_POINTS(Kernel)

}  // namespace simd_avx2
}  // namespace flagcore
