// gather_columns_cpu (contract in rules/columns.hpp). It replaces numpy's x[:, :, cols]
// followed by a float64 cast (two passes on one thread, and a temporary of the data's dtype):
// bench/results/dnc_signguard_sampling_ab_zen4_2026-12-05_s23.json has DnC and SignGuard before
// and after.
#include <algorithm>

#include "common/cancel.hpp"
#include "common/parallel.hpp"
#include "rules/columns.hpp"

namespace flagcore {

template <typename T>
void gather_columns_cpu(const T* const* rows, int64_t b, int64_t p, const int64_t* cols, int64_t k,
                        double* out) {
  constexpr int64_t kRun = 16384;  // columns per task: 128 KiB of output
  const int64_t runs = (k + kRun - 1) / kRun;
  const int64_t m = b * p;
  if (m <= 0 || runs <= 0) return;
  parallel_for(static_cast<size_t>(m * runs), [&](size_t t) {
    check_cancel();
    const int64_t r = static_cast<int64_t>(t) / runs;
    const int64_t j0 = (static_cast<int64_t>(t) % runs) * kRun;
    const int64_t j1 = std::min(k, j0 + kRun);
    const T* x = rows[r];
    double* o = out + r * k;
    for (int64_t j = j0; j < j1; ++j) o[j] = static_cast<double>(x[cols[j]]);
  });
}

template void gather_columns_cpu<float>(const float* const*, int64_t, int64_t, const int64_t*, int64_t,
                                        double*);
template void gather_columns_cpu<double>(const double* const*, int64_t, int64_t, const int64_t*, int64_t,
                                         double*);

}  // namespace flagcore
