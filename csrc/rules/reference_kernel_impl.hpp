// Body of the reference-products kernel (rules/reference.hpp), compiled once per instruction set
// with -ffp-contract=off. The including file defines
//   FLAGCORE_SIMD_NS     namespace of this variant (simd_generic, simd_avx2, simd_avx512)
//   FLAGCORE_VEC_BYTES   bytes per vector register (16, 32, 64)
// Every variant forms the same float64 operations in the same order (column k of a block in
// lane k % 16, a product then an addition, never fused; the 16 lanes added in one fixed tree),
// so the results are the same bits at every level; the wider levels only run more lanes per
// instruction.
#include <cstdint>
#include <cstring>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

#include "rules/reference.hpp"

namespace flagcore {
namespace FLAGCORE_SIMD_NS {
namespace {

constexpr int VB = FLAGCORE_VEC_BYTES;
constexpr int kLanes = 16;      // interleaved float64 sums per row (several chains per level)
constexpr int W = VB / 8;       // float64 lanes per vector
constexpr int NV = kLanes / W;  // vectors per 16 columns
typedef double VD __attribute__((vector_size(VB)));

// 16 columns as NV float64 vectors.
inline void load16(const float* x, VD* out) {
#if FLAGCORE_VEC_BYTES == 64
  out[0] = _mm512_cvtps_pd(_mm256_loadu_ps(x));
  out[1] = _mm512_cvtps_pd(_mm256_loadu_ps(x + 8));
#elif FLAGCORE_VEC_BYTES == 32
  for (int h = 0; h < NV; ++h) out[h] = _mm256_cvtps_pd(_mm_loadu_ps(x + 4 * h));
#elif defined(__SSE2__)
  for (int h = 0; h < NV / 2; ++h) {
    const __m128 f = _mm_loadu_ps(x + 4 * h);
    out[2 * h] = _mm_cvtps_pd(f);
    out[2 * h + 1] = _mm_cvtps_pd(_mm_movehl_ps(f, f));
  }
#else
  typedef float VF __attribute__((vector_size(VB / 2)));
  for (int h = 0; h < NV; ++h) {
    VF f;
    std::memcpy(&f, x + W * h, sizeof(f));
    out[h] = __builtin_convertvector(f, VD);
  }
#endif
}

inline void load16(const double* x, VD* out) {
  std::memcpy(out, x, sizeof(VD) * NV);
}

double lanes_sum(const double* a) {
  return (((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]))) +
         (((a[8] + a[9]) + (a[10] + a[11])) + ((a[12] + a[13]) + (a[14] + a[15])));
}

// Columns [0, len) of x (and v): cross = sum x v (kCross), sq = sum x^2 (kSq). next: the row
// the caller reads after this one (prefetched line by line as this one streams), or null.
template <typename T, bool kCross, bool kSq>
void row_products(const T* x, const double* v, int64_t len, const T* next, double& cross, double& sq) {
  VD c[NV] = {}, s[NV] = {};
  int64_t k = 0;
  for (; k + kLanes <= len; k += kLanes) {
    if (next != nullptr) {
      __builtin_prefetch(next + k, 0, 3);
      if constexpr (sizeof(T) == 8) __builtin_prefetch(next + k + 8, 0, 3);
    }
    VD xv[NV];
    load16(x + k, xv);
    for (int h = 0; h < NV; ++h) {
      if constexpr (kCross) {
        VD vv;
        std::memcpy(&vv, v + k + W * h, sizeof(vv));
        c[h] += xv[h] * vv;
      }
      if constexpr (kSq) s[h] += xv[h] * xv[h];
    }
  }
  double cl[kLanes], sl[kLanes];
  std::memcpy(cl, c, sizeof(cl));
  std::memcpy(sl, s, sizeof(sl));
  for (int l = 0; k < len; ++k, ++l) {
    const double xv = static_cast<double>(x[k]);
    if constexpr (kCross) cl[l] += xv * v[k];
    if constexpr (kSq) sl[l] += xv * xv;
  }
  if constexpr (kCross) cross = lanes_sum(cl);
  if constexpr (kSq) sq = lanes_sum(sl);
}

template <typename T>
void products_block(const T* const* rows, int64_t p, int64_t i0, int64_t i1, const double* v, int64_t k0,
                    int64_t k1, bool sq, double* o) {
  const int64_t len = k1 - k0;
  const double* vb = v != nullptr ? v + k0 : nullptr;
  for (int64_t i = i0; i < i1; ++i) {
    const T* x = rows[i] + k0;
    const T* next = i + 1 < i1 ? rows[i + 1] + k0 : nullptr;
    if (v == nullptr)
      row_products<T, false, true>(x, vb, len, next, o[i], o[p + i]);
    else if (sq)
      row_products<T, true, true>(x, vb, len, next, o[i], o[p + i]);
    else
      row_products<T, true, false>(x, vb, len, next, o[i], o[p + i]);
  }
  if (v != nullptr && i0 == 0) {
    double dummy = 0.0;
    row_products<double, false, true>(vb, vb, len, nullptr, dummy, o[2 * p]);
  }
}

}  // namespace

void reference_block(const float* const* rows, int64_t p, int64_t i0, int64_t i1, const double* v, int64_t k0,
                     int64_t k1, bool sq, double* o) {
  products_block<float>(rows, p, i0, i1, v, k0, k1, sq, o);
}
void reference_block(const double* const* rows, int64_t p, int64_t i0, int64_t i1, const double* v,
                     int64_t k0, int64_t k1, bool sq, double* o) {
  products_block<double>(rows, p, i0, i1, v, k0, k1, sq, o);
}

}  // namespace FLAGCORE_SIMD_NS
}  // namespace flagcore
