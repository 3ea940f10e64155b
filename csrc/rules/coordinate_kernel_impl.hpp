// Body of the coordinate-wise block kernel, compiled once per instruction set. The including
// file defines
//   FLAGCORE_SIMD_NS     namespace of this variant (simd_generic, simd_avx2, simd_avx512)
//   FLAGCORE_VEC_BYTES   bytes per vector register (16, 32, 64)
// A block holds L consecutive columns of every active row (row i's L values are contiguous in
// memory, so a row is loaded with plain vector loads); each comparator of the network is a
// vector min and max over the block, so L columns are sorted at once without branches.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "rules/coordinate.hpp"

namespace flagcore {
namespace FLAGCORE_SIMD_NS {
namespace {

constexpr int VB = FLAGCORE_VEC_BYTES;
constexpr int NV = 2;  // vectors per row per block (two independent chains per comparator)

template <typename T>
struct Vec;
template <>
struct Vec<float> {
  typedef float type __attribute__((vector_size(VB)));
};
template <>
struct Vec<double> {
  typedef double type __attribute__((vector_size(VB)));
};

template <typename T>
void block_kernel(const T* const* rows, int pe, const int* comp, int ncomp, CoordRule rule,
                  CoordCounts c, int64_t k0, int64_t k1, T* out, uint8_t* bad) {
  typedef typename Vec<T>::type vec;
  constexpr int W = VB / int(sizeof(T));  // lanes per vector
  constexpr int L = NV * W;               // columns per block
  alignas(64) vec buf[kMaxNetwork][NV];
  vec nan_probe[kMaxNetwork][NV];  // x * 0 summed: NaN exactly when some x is NaN or Inf
  for (int i = 0; i < pe; ++i)
    for (int u = 0; u < NV; ++u) nan_probe[i][u] = vec{} * T(0);
  const int m1 = (pe - 1) / 2, m2 = pe / 2;

  for (int64_t k = k0; k < k1; k += L) {
    const int valid = static_cast<int>(std::min<int64_t>(L, k1 - k));
    if (valid == L) {
      for (int i = 0; i < pe; ++i) {
        std::memcpy(buf[i], rows[i] + k, sizeof(buf[i]));
        for (int u = 0; u < NV; ++u) nan_probe[i][u] += buf[i][u] * T(0);
      }
    } else {
      for (int i = 0; i < pe; ++i) {
        T* dst = reinterpret_cast<T*>(buf[i]);
        std::memcpy(dst, rows[i] + k, sizeof(T) * static_cast<size_t>(valid));
        std::fill(dst + valid, dst + L, T(0));
        for (int u = 0; u < NV; ++u) nan_probe[i][u] += buf[i][u] * T(0);
      }
    }
    for (int ci = 0; ci < ncomp; ++ci) {
      vec* a = buf[comp[2 * ci]];
      vec* b = buf[comp[2 * ci + 1]];
      for (int u = 0; u < NV; ++u) {
        const vec x = a[u], y = b[u];
        const auto lt = x < y;
        a[u] = lt ? x : y;
        b[u] = lt ? y : x;
      }
    }
    const T* s = reinterpret_cast<const T*>(buf);  // s[i * L + w]: i-th smallest of column w
    T* o = out + k;
    if (rule == CoordRule::median) {
      for (int w = 0; w < valid; ++w)
        o[w] = static_cast<T>(midpoint(double(s[m1 * L + w]), double(s[m2 * L + w])));
    } else if (rule == CoordRule::trimmed_mean || rule == CoordRule::mean) {
      const int t = rule == CoordRule::mean ? 0 : c.t;
      double acc[L];
      for (int w = 0; w < L; ++w) acc[w] = 0.0;
      for (int i = t; i < pe - t; ++i)
        for (int w = 0; w < L; ++w) acc[w] += double(s[i * L + w]);
      const double inv = 1.0 / double(pe - 2 * t);
      for (int w = 0; w < valid; ++w) {
        const double m = acc[w] * inv;  // overflowed only for float64 values near DBL_MAX
        o[w] = static_cast<T>(std::isfinite(m) ? m : mean_of(s + w, L, t, pe - t, pe - 2 * t));
      }
    } else {
      for (int w = 0; w < valid; ++w) o[w] = static_cast<T>(reduce_sorted(s + w, L, rule, c));
    }
  }
  for (int i = 0; i < pe; ++i)
    for (int u = 0; u < NV; ++u)
      for (int w = 0; w < W; ++w)
        if (std::isnan(nan_probe[i][u][w])) bad[i] = 1;
}

// pe > kMaxNetwork: gather each column and sort it.
template <typename T>
void sort_kernel(const T* const* rows, int pe, CoordRule rule, CoordCounts c, int64_t k0,
                 int64_t k1, T* out, uint8_t* bad) {
  std::vector<T> v(static_cast<size_t>(pe));
  for (int64_t k = k0; k < k1; ++k) {
    for (int i = 0; i < pe; ++i) {
      v[i] = rows[i][k];
      if (!std::isfinite(v[i])) bad[i] = 1;
    }
    std::sort(v.begin(), v.end());
    out[k] = static_cast<T>(reduce_sorted(v.data(), 1, rule, c));
  }
}

template <typename T>
void dispatch(const T* const* rows, int pe, const int* comp, int ncomp, CoordRule rule,
              CoordCounts c, int64_t k0, int64_t k1, T* out, uint8_t* bad) {
  if (pe <= kMaxNetwork)
    block_kernel<T>(rows, pe, comp, ncomp, rule, c, k0, k1, out, bad);
  else
    sort_kernel<T>(rows, pe, rule, c, k0, k1, out, bad);
}

}  // namespace

void coordinate_block(const float* const* rows, int pe, const int* comp, int ncomp, CoordRule rule,
                      CoordCounts c, int64_t k0, int64_t k1, float* out, uint8_t* bad) {
  dispatch<float>(rows, pe, comp, ncomp, rule, c, k0, k1, out, bad);
}
void coordinate_block(const double* const* rows, int pe, const int* comp, int ncomp, CoordRule rule,
                      CoordCounts c, int64_t k0, int64_t k1, double* out, uint8_t* bad) {
  dispatch<double>(rows, pe, comp, ncomp, rule, c, k0, k1, out, bad);
}

}  // namespace FLAGCORE_SIMD_NS
}  // namespace flagcore
