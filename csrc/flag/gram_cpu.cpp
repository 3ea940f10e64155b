#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "common/parallel.hpp"
#include "common/simd.hpp"
#include "flag/gram.hpp"

namespace flagcore {
namespace {

// Parts per problem depend on n only (not on the thread count), so results are reproducible
// on any machine with the same instruction set.
constexpr int64_t kMinPartColumns = 32768;
constexpr int64_t kMaxParts = 32;

int64_t parts_for(int64_t n) {
  if (n <= 0) return 1;
  return std::max<int64_t>(1, std::min<int64_t>(kMaxParts, (n + kMinPartColumns - 1) / kMinPartColumns));
}

template <typename T>
using AccumulateFn = void (*)(const T* const*, int64_t, int64_t, int64_t, double*);

template <typename T>
AccumulateFn<T> pick_kernel() {
  switch (simd_level()) {
#if defined(FLAGCORE_X86_DISPATCH)
    case SimdLevel::avx512: return static_cast<AccumulateFn<T>>(&simd_avx512::gram_accumulate);
    case SimdLevel::avx2: return static_cast<AccumulateFn<T>>(&simd_avx2::gram_accumulate);
#endif
    default: return static_cast<AccumulateFn<T>>(&simd_generic::gram_accumulate);
  }
}

template <typename T>
void gram_cpu_impl(const T* const* rows, int64_t b, int64_t p, int64_t n, double* out) {
  if (b <= 0 || p <= 0) return;
  const int64_t parts = parts_for(n);
  const int64_t pp = p * p;
  const AccumulateFn<T> kernel = pick_kernel<T>();
  std::vector<double> partial(static_cast<size_t>(b * parts * pp), 0.0);
  parallel_for(static_cast<size_t>(b * parts), [&](size_t t) {
    const int64_t q = static_cast<int64_t>(t) / parts;
    const int64_t part = static_cast<int64_t>(t) % parts;
    const int64_t k0 = n * part / parts;
    const int64_t k1 = n * (part + 1) / parts;
    kernel(rows + q * p, p, k0, k1, partial.data() + t * pp);
  });
  for (int64_t q = 0; q < b; ++q) {
    double* g = out + q * pp;
    for (int64_t i = 0; i < p; ++i)
      for (int64_t j = i; j < p; ++j) {
        double s = 0.0;
        for (int64_t part = 0; part < parts; ++part) s += partial[(q * parts + part) * pp + i * p + j];
        g[i * p + j] = s;
        g[j * p + i] = s;
      }
  }
}

}  // namespace

// Rare path for float32 input: rows whose diagonal came out non-finite are recomputed in float64
// against every row (finite data whose float32 products overflowed gets its exact value; real
// NaN/Inf data stays non-finite).
void refine_nonfinite_rows(const float* const* rows, int64_t b, int64_t p, int64_t n, double* out) {
  std::vector<std::pair<int64_t, int64_t>> bad;
  for (int64_t q = 0; q < b; ++q)
    for (int64_t i = 0; i < p; ++i)
      if (!std::isfinite(out[q * p * p + i * p + i])) bad.emplace_back(q, i);
  if (bad.empty()) return;
  std::vector<double> vals(bad.size() * static_cast<size_t>(p));
  parallel_for(bad.size(), [&](size_t t) {
    const int64_t q = bad[t].first, i = bad[t].second;
    const float* xi = rows[q * p + i];
    for (int64_t j = 0; j < p; ++j) {
      const float* xj = rows[q * p + j];
      double s = 0.0;
      for (int64_t k = 0; k < n; ++k) s += double(xi[k]) * double(xj[k]);
      vals[t * p + j] = s;
    }
  });
  for (size_t t = 0; t < bad.size(); ++t) {
    double* g = out + bad[t].first * p * p;
    const int64_t i = bad[t].second;
    for (int64_t j = 0; j < p; ++j) {
      g[i * p + j] = vals[t * p + j];
      g[j * p + i] = vals[t * p + j];
    }
  }
}

template <>
void gram_cpu<float>(const float* const* rows, int64_t b, int64_t p, int64_t n, double* out) {
  gram_cpu_impl<float>(rows, b, p, n, out);
  refine_nonfinite_rows(rows, b, p, n, out);
}

template <>
void gram_cpu<double>(const double* const* rows, int64_t b, int64_t p, int64_t n, double* out) {
  gram_cpu_impl<double>(rows, b, p, n, out);
}



}  // namespace flagcore
