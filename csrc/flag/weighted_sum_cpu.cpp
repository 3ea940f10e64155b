// weighted_sum_cpu (contract in flag/gram.hpp): out[q] = sum_i coef[q, i] x[q, i] in float64.
//
// Each task owns one problem and a range of columns whose width depends on n and p only (never
// on the thread count), cut into L1-sized chunks; within a chunk the rows with a nonzero
// coefficient are streamed one after another into float64 accumulators (rules/coordinate.hpp,
// sum_rows), so the additions happen in row order and the result does not depend on the thread
// count. Streaming whole rows keeps the hardware prefetcher on one or two streams, which is
// what makes this run at memory (or L3) speed at large p.
#include <algorithm>
#include <vector>

#include "common/cancel.hpp"
#include "common/parallel.hpp"
#include "flag/gram.hpp"
#include "rules/coordinate.hpp"

namespace flagcore {

template <typename T>
void weighted_sum_cpu(const T* const* rows, const double* coef, int64_t b, int64_t p, int64_t n, T* out) {
  if (b <= 0 || n <= 0) return;
  constexpr int64_t kChunk = 2048;  // 16 KiB of float64 accumulators: stays in L1
  // Rows with a nonzero coefficient, per problem (a zero-coefficient row is never read, so an
  // excluded NaN/Inf worker cannot poison the sum).
  std::vector<std::vector<const T*>> xs(static_cast<size_t>(b));
  std::vector<std::vector<double>> cs(static_cast<size_t>(b));
  int64_t most = 1;
  for (int64_t q = 0; q < b; ++q) {
    for (int64_t i = 0; i < p; ++i)
      if (coef[q * p + i] != 0.0) {
        xs[q].push_back(rows[q * p + i]);
        cs[q].push_back(coef[q * p + i]);
      }
    most = std::max<int64_t>(most, static_cast<int64_t>(xs[q].size()));
  }
  // About 2^18 values per task (tens of tasks from ~1e7 values, so two or three threads finish
  // within a few percent of each other), in whole multiples of 256 columns: at least 1024
  // columns (row segments of 4 KiB of float32 and more keep the prefetchers ahead at large p),
  // at most 8 chunks, and at least two tasks per problem where n allows (n > 256). Before
  // (2^20 values, at least 256 columns) every problem of up to ~1e6 values ran as one task on
  // one thread, and p >= 2048 streamed 256- or 512-column segments. A/B against that, AMD Zen 4,
  // float32, AVX-512, ms (bench/results/kernel_ab_rowsum_zen4_2026-12-05.json): p = 64,
  // n = 16384 on two threads 0.082 -> 0.041; p = 256, n = 4096 0.077 -> 0.043; p = 4096,
  // n = 2048 1.23 -> 0.89 on one thread, 0.66 -> 0.45 on two; p = 1000, n = 1000 0.074 -> 0.047
  // on two, 0.073 -> 0.079 on one; out of cache (p = 15, 30) no difference. Each column's sum
  // adds its rows in row order whatever the width, so the width changes no bit.
  const int64_t cols = at_least_two_tasks(
      n, std::clamp<int64_t>((int64_t(1) << 18) / most / 256 * 256, 1024, 8 * kChunk), 256);
  const int64_t tasks_per_problem = (n + cols - 1) / cols;
  const int64_t tasks = b * tasks_per_problem;
  // Last columns first: the Gram pass that precedes this one in flag_aggregate reads the columns
  // forward, so its last columns may still be in the last-level cache. Each task's output is
  // the same whatever the order.
  parallel_for(static_cast<size_t>(tasks), [&](size_t ti) {
    const int64_t t = tasks - 1 - static_cast<int64_t>(ti);
    const int64_t q = t / tasks_per_problem;
    const int64_t k_begin = (t % tasks_per_problem) * cols;
    const int64_t k_end = std::min(n, k_begin + cols);
    const int64_t m = static_cast<int64_t>(xs[q].size());
    double acc[kChunk];
    for (int64_t k0 = k_begin; k0 < k_end; k0 += kChunk) {
      check_cancel();
      const int64_t len = std::min(kChunk, k_end - k0);
      // the last row group writes out[q, k0:k0+len] (rounded to T) as it forms the sums
      sum_rows_dispatch<T>(xs[q].data(), cs[q].data(), m, k0, len, acc, out + q * n + k0, 0.0);
    }
  });
}

template void weighted_sum_cpu<float>(const float* const*, const double*, int64_t, int64_t, int64_t, float*);
template void weighted_sum_cpu<double>(const double* const*, const double*, int64_t, int64_t, int64_t,
                                       double*);

}  // namespace flagcore
