#include "flag/flag_cpu.hpp"

#include <vector>

#include "common/check.hpp"
#include "common/parallel.hpp"
#include "flag/gram.hpp"

namespace flagcore {

void flag_irls_batch_cpu(const double* gram, int64_t b, int64_t p, const FlagParams& prm,
                         FlagIrlsOut info) {
  FLAGCORE_CHECK_ARG(p >= 1, "flag_irls: p must be >= 1, got " << p);
  FLAGCORE_CHECK_ARG(prm.r >= 1, "flag_irls: r must be >= 1, got " << prm.r);
  FLAGCORE_CHECK_ARG(prm.max_iter >= 1, "flag_irls: max_iter must be >= 1, got " << prm.max_iter);
  const int64_t steps = prm.max_iter + 1;
  parallel_for(static_cast<size_t>(b), [&](size_t qi) {
    const int64_t q = static_cast<int64_t>(qi);
    std::vector<double> work(static_cast<size_t>(flag_irls_workspace(p)));
    FlagIrlsOut o{info.coef + q * p,      info.weights + q * p,  info.ratios + q * p,
                  info.objective + q * steps, info.excluded + q * p, info.iterations + q,
                  info.rejected + q,      info.rank + q};
    flag_irls(gram + q * p * p, static_cast<int>(p), prm, work.data(), o);
  });
}

template <typename T>
void flag_aggregate_cpu(const T* const* rows, int64_t b, int64_t p, int64_t n,
                        const FlagParams& prm, T* out, FlagIrlsOut info) {
  std::vector<double> gram(static_cast<size_t>(b * p * p));
  gram_cpu<T>(rows, b, p, n, gram.data());
  flag_irls_batch_cpu(gram.data(), b, p, prm, info);
  weighted_sum_cpu<T>(rows, info.coef, b, p, n, out);
}

template void flag_aggregate_cpu<float>(const float* const*, int64_t, int64_t, int64_t,
                                        const FlagParams&, float*, FlagIrlsOut);
template void flag_aggregate_cpu<double>(const double* const*, int64_t, int64_t, int64_t,
                                         const FlagParams&, double*, FlagIrlsOut);

}  // namespace flagcore
