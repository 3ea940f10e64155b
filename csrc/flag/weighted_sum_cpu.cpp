#include <algorithm>

#include "common/parallel.hpp"
#include "common/simd.hpp"
#include "flag/gram.hpp"

namespace flagcore {
namespace {

template <typename T>
using WsumFn = void (*)(const T* const*, const double*, int64_t, int64_t, int64_t, double*);

template <typename T>
WsumFn<T> pick_wsum() {
  switch (simd_level()) {
#if defined(FLAGCORE_X86_DISPATCH)
    case SimdLevel::avx512: return static_cast<WsumFn<T>>(&simd_avx512::weighted_sum_accumulate);
    case SimdLevel::avx2: return static_cast<WsumFn<T>>(&simd_avx2::weighted_sum_accumulate);
#endif
    default: return static_cast<WsumFn<T>>(&simd_generic::weighted_sum_accumulate);
  }
}

}  // namespace

template <typename T>
void weighted_sum_cpu(const T* const* rows, const double* coef, int64_t b, int64_t p, int64_t n,
                      T* out) {
  if (b <= 0 || n <= 0) return;
  constexpr int64_t kChunk = 2048;  // 16 KiB of float64 accumulators: stays in L1
  constexpr int64_t kChunksPerTask = 16;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  const int64_t tasks_per_problem = (chunks + kChunksPerTask - 1) / kChunksPerTask;
  const WsumFn<T> kernel = pick_wsum<T>();
  parallel_for(static_cast<size_t>(b * tasks_per_problem), [&](size_t t) {
    const int64_t q = static_cast<int64_t>(t) / tasks_per_problem;
    const int64_t c_begin = (static_cast<int64_t>(t) % tasks_per_problem) * kChunksPerTask;
    const int64_t c_end = std::min(chunks, c_begin + kChunksPerTask);
    double acc[kChunk];
    for (int64_t c = c_begin; c < c_end; ++c) {
      const int64_t k0 = c * kChunk;
      const int64_t len = std::min(kChunk, n - k0);
      std::fill(acc, acc + len, 0.0);
      kernel(rows + q * p, coef + q * p, p, k0, len, acc);
      T* o = out + q * n + k0;
      for (int64_t k = 0; k < len; ++k) o[k] = static_cast<T>(acc[k]);
    }
  });
}

template void weighted_sum_cpu<float>(const float* const*, const double*, int64_t, int64_t,
                                      int64_t, float*);
template void weighted_sum_cpu<double>(const double* const*, const double*, int64_t, int64_t,
                                       int64_t, double*);

}  // namespace flagcore
