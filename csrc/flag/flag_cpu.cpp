#include "flag/flag_cpu.hpp"

#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include "common/check.hpp"
#include "common/parallel.hpp"
#include "flag/gram.hpp"

namespace flagcore {
namespace {

void check_params(int64_t p, const FlagParams& prm) {
  FLAGCORE_CHECK_ARG(p >= 1, "flag_irls: p must be >= 1, got " << p);
  FLAGCORE_CHECK_ARG(prm.r >= 1, "flag_irls: r must be >= 1, got " << prm.r);
  FLAGCORE_CHECK_ARG(prm.max_iter >= 1, "flag_irls: max_iter must be >= 1, got " << prm.max_iter);
}

FlagIrlsOut slice(const FlagIrlsOut& info, int64_t row0, int64_t q, int64_t steps) {
  return FlagIrlsOut{info.coef + row0,        info.weights + row0,  info.ratios + row0,
                     info.objective + q * steps, info.excluded + row0, info.iterations + q,
                     info.rejected + q,      info.rank + q};
}

// A reusable barrier for the team emulation (C++17 has no std::barrier).
class Barrier {
 public:
  explicit Barrier(int n) : n_(n) {}
  void wait() {
    std::unique_lock<std::mutex> lock(mu_);
    const long gen = gen_;
    if (++count_ == n_) {
      count_ = 0;
      ++gen_;
      cv_.notify_all();
    } else {
      cv_.wait(lock, [&] { return gen_ != gen; });
    }
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int n_;
  int count_ = 0;
  long gen_ = 0;
};

struct ThreadTeam {
  int r, n;
  Barrier* bar;
  int rank() const { return r; }
  int size() const { return n; }
  void sync() const { bar->wait(); }
};

}  // namespace

void flag_irls_batch_cpu(const double* gram, int64_t b, int64_t p, const FlagParams& prm,
                         FlagIrlsOut info) {
  check_params(p, prm);
  const int64_t steps = prm.max_iter + 1;
  parallel_for(static_cast<size_t>(b), [&](size_t qi) {
    const int64_t q = static_cast<int64_t>(qi);
    std::vector<double> work(static_cast<size_t>(flag_irls_workspace(p)));
    flag_irls(gram + q * p * p, static_cast<int>(p), prm, work.data(), slice(info, q * p, q, steps));
  });
}

void flag_irls_team_emulation_cpu(const double* gram, int64_t b, int64_t p, const FlagParams& prm,
                                  FlagIrlsOut info, int threads) {
  check_params(p, prm);
  FLAGCORE_CHECK_ARG(threads >= 1 && threads <= 1024, "flag_irls_team_emulation: threads must be in [1, 1024], got " << threads);
  const int64_t steps = prm.max_iter + 1;
  std::vector<double> work(static_cast<size_t>(flag_irls_workspace(p)));
  for (int64_t q = 0; q < b; ++q) {
    Barrier bar(threads);
    std::vector<std::thread> pool;
    for (int r = 0; r < threads; ++r)
      pool.emplace_back([&, r] {
        flag_irls(ThreadTeam{r, threads, &bar}, gram + q * p * p, static_cast<int>(p), prm,
                  work.data(), slice(info, q * p, q, steps));
      });
    for (auto& th : pool) th.join();
  }
}

template <typename T>
void flag_aggregate_cpu(const T* const* rows, int64_t b, int64_t p, int64_t n,
                        const FlagParams& prm, T* out, FlagIrlsOut info) {
  std::vector<double> gram(static_cast<size_t>(b * p * p));
  gram_cpu<T>(rows, b, p, n, gram.data());
  flag_irls_batch_cpu(gram.data(), b, p, prm, info);
  weighted_sum_cpu<T>(rows, info.coef, b, p, n, out);
}

template <typename T>
void flag_aggregate_ragged_cpu(const T* const* rows, const int64_t* ps, const int64_t* ns,
                               int64_t b, const FlagParams& prm, T* out, FlagIrlsOut info) {
  FLAGCORE_CHECK_ARG(prm.r >= 1 && prm.max_iter >= 1, "flag_aggregate_layers: bad parameters");
  std::vector<int64_t> row0(static_cast<size_t>(b) + 1, 0), col0(static_cast<size_t>(b) + 1, 0),
      g0(static_cast<size_t>(b) + 1, 0);
  for (int64_t q = 0; q < b; ++q) {
    FLAGCORE_CHECK_ARG(ps[q] >= 1 && ns[q] >= 0, "flag_aggregate_layers: problem " << q << " has p = " << ps[q] << ", n = " << ns[q]);
    row0[q + 1] = row0[q] + ps[q];
    col0[q + 1] = col0[q] + ns[q];
    g0[q + 1] = g0[q] + ps[q] * ps[q];
  }
  std::vector<double> gram(static_cast<size_t>(g0[b]));
  // Each problem's Gram is itself parallel over column parts; the problems go in order.
  for (int64_t q = 0; q < b; ++q) gram_cpu<T>(rows + row0[q], 1, ps[q], ns[q], gram.data() + g0[q]);
  const int64_t steps = prm.max_iter + 1;
  parallel_for(static_cast<size_t>(b), [&](size_t qi) {
    const int64_t q = static_cast<int64_t>(qi);
    std::vector<double> work(static_cast<size_t>(flag_irls_workspace(ps[q])));
    flag_irls(gram.data() + g0[q], static_cast<int>(ps[q]), prm, work.data(), slice(info, row0[q], q, steps));
  });
  for (int64_t q = 0; q < b; ++q)
    weighted_sum_cpu<T>(rows + row0[q], info.coef + row0[q], 1, ps[q], ns[q], out + col0[q]);
}

template void flag_aggregate_cpu<float>(const float* const*, int64_t, int64_t, int64_t,
                                        const FlagParams&, float*, FlagIrlsOut);
template void flag_aggregate_cpu<double>(const double* const*, int64_t, int64_t, int64_t,
                                         const FlagParams&, double*, FlagIrlsOut);
template void flag_aggregate_ragged_cpu<float>(const float* const*, const int64_t*, const int64_t*,
                                               int64_t, const FlagParams&, float*, FlagIrlsOut);
template void flag_aggregate_ragged_cpu<double>(const double* const*, const int64_t*, const int64_t*,
                                                int64_t, const FlagParams&, double*, FlagIrlsOut);

}  // namespace flagcore
