#include "flag/flag_cpu.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>
#include <new>
#include <sstream>
#include <system_error>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "common/blas.hpp"
#include "common/cancel.hpp"
#include "common/check.hpp"
#include "common/parallel.hpp"
#include "flag/gram.hpp"

namespace flagcore {
namespace {

// fn: the entry point named in the error (the caller's).
void check_params(int64_t p, const FlagParams& prm, const char* fn = "flag_irls") {
  FLAGCORE_CHECK_ARG(p >= 1, fn << ": p must be >= 1, got " << p);
  FLAGCORE_CHECK_ARG(p <= 46340, fn << ": p must be <= 46340 (p * p must fit an int), got " << p);
  FLAGCORE_CHECK_ARG(prm.r >= 1, fn << ": r must be >= 1, got " << prm.r);
  // the objective history holds max_iter + 1 values (the Python API's bound too)
  FLAGCORE_CHECK_ARG(prm.max_iter >= 1 && prm.max_iter <= kFlagMaxIter,
                     fn << ": max_iter must be in [1, " << kFlagMaxIter << "], got " << prm.max_iter);
  FLAGCORE_CHECK_ARG(prm.lam >= 0.0 && prm.lam <= kFlagMaxLam,
                     fn << ": lam must be in [0, " << kFlagMaxLam << "], got " << prm.lam);
}

// Per-problem outputs; the objective goes to `obj` (capacity `cap`).
FlagIrlsOut slice(const FlagIrlsOut& info, int64_t row0, int64_t q, double* obj, int64_t cap) {
  return FlagIrlsOut{info.coef + row0,    info.weights + row0, info.ratios + row0, obj, info.excluded + row0,
                     info.iterations + q, info.rejected + q,   info.rank + q,      cap};
}

// Uninitialised scratch that grows on demand and is reused by the thread's next problem: the
// IRLS writes before it reads, and pages it never touches (the pairwise matrices when lam = 0,
// the tail of a long objective history) are never committed. Large buffers are 2 MiB aligned
// and offered to the kernel as transparent huge pages: at p = 1024 the IRLS touches ~64 MiB
// afresh on every call (see trim), 16k page faults in 4 KiB pages against 32 in huge pages.
struct Scratch {
  struct Free {
    void operator()(double* q) const { std::free(q); }
  };
  std::unique_ptr<double[], Free> buf;
  int64_t size = 0;
  double* get(int64_t n) {
    if (n > size) {
      buf.reset();
      size = 0;
      const size_t bytes = static_cast<size_t>(n) * sizeof(double);
      constexpr size_t kHuge = size_t(2) << 20;
      double* q = nullptr;
      if (bytes >= kHuge) {
        q = static_cast<double*>(std::aligned_alloc(kHuge, (bytes + kHuge - 1) / kHuge * kHuge));
#if defined(__linux__) && defined(MADV_HUGEPAGE)
        if (q != nullptr) madvise(q, bytes, MADV_HUGEPAGE);  // advice only: failure is harmless
#endif
      } else {
        q = static_cast<double*>(std::malloc(bytes));
      }
      if (q == nullptr) throw std::bad_alloc();
      buf.reset(q);
      size = n;
    }
    return buf.get();
  }
  // Large buffers are not kept past the problem: a thread-local of the caller's thread would
  // otherwise hold them for the life of the process.
  void trim() {
    if (size > kKeepDoubles) {
      buf.reset();
      size = 0;
    }
  }
  static constexpr int64_t kKeepDoubles = int64_t(8) << 20;  // 64 MiB
};

// Threads each of b problems run in parallel may use inside its eigensolver (blas::InnerThreads):
// the threads left over when there are fewer problems than threads, at least the problem's own.
int inner_threads(int64_t b) {
  const int nt = num_threads();
  return b <= 0 || b >= nt ? 1 : static_cast<int>(nt / b);  // b = 0: an empty batch, no work
}

// One problem on this thread; its objective history (the steps taken) into hist.
void run_one(const double* gram, int p, const FlagParams& prm, const FlagIrlsOut& info, int64_t row0,
             int64_t q, std::vector<double>& hist, int inner) {
  thread_local Scratch work, obj;
  blas::InnerThreads threads(inner);
  const int64_t cap = int64_t(prm.max_iter) + 1;
  double* ws = work.get(flag_irls_workspace(p));
  double* ob = obj.get(cap);
  struct Trim {
    Scratch& a;
    Scratch& b;
    ~Trim() {
      a.trim();
      b.trim();
    }
  } trim{work, obj};
  flag_irls(gram, p, prm, ws, slice(info, row0, q, ob, cap));
  const int64_t used = int64_t(info.iterations[q]) + 1;
  hist.assign(ob, ob + (used < cap ? used : cap));
}

// A reusable barrier for the team emulation (C++17 has no std::barrier). abort() releases every
// waiter, now and later, with BarrierAborted: a team that lost a member (a thread that could not
// be started, an exception, Ctrl-C) must not wait for it forever.
struct BarrierAborted : std::exception {
  const char* what() const noexcept override { return "flagcore: team barrier aborted"; }
};

class Barrier {
 public:
  explicit Barrier(int n) : n_(n) {}
  void wait() {
    std::unique_lock<std::mutex> lock(mu_);
    if (aborted_) throw BarrierAborted();
    const long gen = gen_;
    if (++count_ == n_) {
      count_ = 0;
      ++gen_;
      cv_.notify_all();
    } else {
      cv_.wait(lock, [&] { return gen_ != gen || aborted_; });
      if (gen_ == gen) throw BarrierAborted();
    }
  }
  void abort() {
    std::lock_guard<std::mutex> lock(mu_);
    aborted_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int n_;
  int count_ = 0;
  long gen_ = 0;
  bool aborted_ = false;
};

// Its threads leave a barrier together only when none throws: poll() is a no-op.
struct ThreadTeam {
  static constexpr bool host_blas = false;
  int r, n;
  Barrier* bar;
  void poll() const {}
  int rank() const { return r; }
  int size() const { return n; }
  void sync() const { bar->wait(); }
};

}  // namespace

void flag_irls_batch_cpu(const double* gram, int64_t b, int64_t p, const FlagParams& prm, FlagIrlsOut info,
                         ObjectiveHistory& hist) {
  check_params(p, prm);
  hist.assign(static_cast<size_t>(b), {});
  const int inner = inner_threads(b);
  parallel_for(static_cast<size_t>(b), [&](size_t qi) {
    const int64_t q = static_cast<int64_t>(qi);
    run_one(gram + q * p * p, static_cast<int>(p), prm, info, q * p, q, hist[qi], inner);
  });
}

void flag_irls_planned_cpu(const double* gram, int64_t b, const int64_t* ps, const int64_t* gram_off,
                           const int64_t* row_off, const FlagParams& prm, FlagIrlsOut base, int64_t steps) {
  for (int64_t q = 0; q < b; ++q) check_params(ps[q], prm);
  std::fill(base.objective, base.objective + b * steps, NAN);
  const int inner = inner_threads(b);
  parallel_for(static_cast<size_t>(b), [&](size_t qi) {
    const int64_t q = static_cast<int64_t>(qi);
    std::vector<double> hist;
    run_one(gram + gram_off[q], static_cast<int>(ps[q]), prm, base, row_off[q], q, hist, inner);
    std::copy(hist.begin(), hist.begin() + std::min<int64_t>(steps, int64_t(hist.size())),
              base.objective + q * steps);
  });
}

void flag_irls_team_emulation_cpu(const double* gram, int64_t b, int64_t p, const FlagParams& prm,
                                  FlagIrlsOut info, ObjectiveHistory& hist, int threads) {
  check_params(p, prm);
  // at most a CUDA block's usual size: every member is an OS thread with its own stack, and with
  // 1024 of them under an address-space limit glibc aborted the process when a started member
  // could not get its thread-local storage (a failure no caller can catch)
  FLAGCORE_CHECK_ARG(threads >= 1 && threads <= 256,
                     "flag_irls_team_emulation: threads must be in [1, 256], got " << threads);
  const int64_t cap = int64_t(prm.max_iter) + 1;
  std::vector<double> work(static_cast<size_t>(flag_irls_workspace(p)));
  std::vector<double> obj(static_cast<size_t>(cap));
  hist.assign(static_cast<size_t>(b), {});
  for (int64_t q = 0; q < b; ++q) {
    check_cancel();
    Barrier bar(threads);
    std::mutex mu;
    std::condition_variable cv;
    int done = 0;
    std::exception_ptr err;  // the first member's exception
    const auto member = [&](int r) {
      try {
        flag_irls(ThreadTeam{r, threads, &bar}, gram + q * p * p, static_cast<int>(p), prm, work.data(),
                  slice(info, q * p, q, obj.data(), cap));
      } catch (...) {
        {
          std::lock_guard<std::mutex> lock(mu);
          if (!err) err = std::current_exception();
        }
        bar.abort();
      }
      std::lock_guard<std::mutex> lock(mu);
      ++done;
      cv.notify_all();
    };
    std::vector<std::thread> pool;
    pool.reserve(static_cast<size_t>(threads));
    // Every exit joins the members started so far: a thread that cannot be started (resource
    // limits) or a Ctrl-C (polled while the members run) aborts the barrier first.
    const auto stop_all = [&] {
      bar.abort();
      for (auto& th : pool) th.join();
    };
    try {
      for (int r = 0; r < threads; ++r) pool.emplace_back(member, r);
    } catch (const std::system_error& e) {
      stop_all();
      std::ostringstream os;
      os << "flag_irls_team_emulation: could not start thread " << pool.size() + 1 << " of " << threads
         << " (" << e.what() << ")";
      throw std::runtime_error(os.str());
    }
    try {
      std::unique_lock<std::mutex> lock(mu);
      while (done < threads) {
        cv.wait_for(lock, std::chrono::milliseconds(20));
        lock.unlock();
        check_cancel();
        lock.lock();
      }
    } catch (...) {
      stop_all();
      throw;
    }
    for (auto& th : pool) th.join();
    if (err) std::rethrow_exception(err);
    hist[static_cast<size_t>(q)].assign(obj.begin(), obj.begin() + (info.iterations[q] + 1));
  }
}

template <typename T>
void flag_aggregate_cpu(const T* const* rows, int64_t b, int64_t p, int64_t n, const FlagParams& prm, T* out,
                        FlagIrlsOut info, ObjectiveHistory& hist) {
  check_params(p, prm, "flag_aggregate");
  const auto gram = uninit_array<double>(b * p * p);  // gram_cpu writes every entry (gram.hpp)
  gram_cpu<T>(rows, b, p, n, gram.get());
  flag_irls_batch_cpu(gram.get(), b, p, prm, info, hist);
  weighted_sum_cpu<T>(rows, info.coef, b, p, n, out);
}

template <typename T>
void flag_aggregate_ragged_cpu(const T* const* rows, const int64_t* ps, const int64_t* ns, int64_t b,
                               const FlagParams& prm, T* out, FlagIrlsOut info, ObjectiveHistory& hist,
                               const int64_t* rs) {
  FLAGCORE_CHECK_ARG(prm.r >= 1 && prm.max_iter >= 1, "flag_aggregate_layers: bad parameters");
  std::vector<int64_t> row0(static_cast<size_t>(b) + 1, 0), col0(static_cast<size_t>(b) + 1, 0),
      g0(static_cast<size_t>(b) + 1, 0);
  for (int64_t q = 0; q < b; ++q) {
    FLAGCORE_CHECK_ARG(ps[q] >= 1 && ns[q] >= 0,
                       "flag_aggregate_layers: problem " << q << " has p = " << ps[q] << ", n = " << ns[q]);
    row0[q + 1] = row0[q] + ps[q];
    col0[q + 1] = col0[q] + ns[q];
    g0[q + 1] = g0[q] + ps[q] * ps[q];
  }
  // every layer's parameters are checked before the Grams' memory is taken
  for (int64_t q = 0; q < b; ++q) {
    FlagParams pq = prm;
    if (rs != nullptr) pq.r = rs[q];
    check_params(ps[q], pq, "flag_aggregate_layers");
  }
  const auto gram_buf = uninit_array<double>(g0[b]);  // gram_cpu writes every entry (gram.hpp)
  // Each problem's Gram is itself parallel over column parts; the problems go in order.
  for (int64_t q = 0; q < b; ++q) gram_cpu<T>(rows + row0[q], 1, ps[q], ns[q], gram_buf.get() + g0[q]);
  hist.assign(static_cast<size_t>(b), {});
  const int inner = inner_threads(b);
  parallel_for(static_cast<size_t>(b), [&](size_t qi) {
    const int64_t q = static_cast<int64_t>(qi);
    FlagParams pq = prm;
    if (rs != nullptr) pq.r = rs[q];
    run_one(gram_buf.get() + g0[q], static_cast<int>(ps[q]), pq, info, row0[q], q, hist[qi], inner);
  });
  for (int64_t q = 0; q < b; ++q)
    weighted_sum_cpu<T>(rows + row0[q], info.coef + row0[q], 1, ps[q], ns[q], out + col0[q]);
}

template void flag_aggregate_cpu<float>(const float* const*, int64_t, int64_t, int64_t, const FlagParams&,
                                        float*, FlagIrlsOut, ObjectiveHistory&);
template void flag_aggregate_cpu<double>(const double* const*, int64_t, int64_t, int64_t, const FlagParams&,
                                         double*, FlagIrlsOut, ObjectiveHistory&);
template void flag_aggregate_ragged_cpu<float>(const float* const*, const int64_t*, const int64_t*, int64_t,
                                               const FlagParams&, float*, FlagIrlsOut, ObjectiveHistory&,
                                               const int64_t*);
template void flag_aggregate_ragged_cpu<double>(const double* const*, const int64_t*, const int64_t*, int64_t,
                                                const FlagParams&, double*, FlagIrlsOut, ObjectiveHistory&,
                                                const int64_t*);

}  // namespace flagcore
