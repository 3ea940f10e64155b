#include <algorithm>

#include "common/parallel.hpp"
#include "flag/gram.hpp"

namespace flagcore {

template <typename T>
void weighted_sum_cpu(const T* const* rows, const double* coef, int64_t b, int64_t p, int64_t n,
                      T* out) {
  if (b <= 0 || n <= 0) return;
  constexpr int64_t kChunk = 4096;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  parallel_for(static_cast<size_t>(b * chunks), [&](size_t t) {
    const int64_t q = static_cast<int64_t>(t) / chunks;
    const int64_t k0 = (static_cast<int64_t>(t) % chunks) * kChunk;
    const int64_t len = std::min(kChunk, n - k0);
    double acc[kChunk];
    std::fill(acc, acc + len, 0.0);
    for (int64_t i = 0; i < p; ++i) {
      const double c = coef[q * p + i];
      if (c == 0.0) continue;  // excluded (or irrelevant) worker: never read
      const T* x = rows[q * p + i] + k0;
      for (int64_t k = 0; k < len; ++k) acc[k] += c * static_cast<double>(x[k]);
    }
    T* o = out + q * n + k0;
    for (int64_t k = 0; k < len; ++k) o[k] = static_cast<T>(acc[k]);
  });
}

template void weighted_sum_cpu<float>(const float* const*, const double*, int64_t, int64_t,
                                      int64_t, float*);
template void weighted_sum_cpu<double>(const double* const*, const double*, int64_t, int64_t,
                                       int64_t, double*);

}  // namespace flagcore
