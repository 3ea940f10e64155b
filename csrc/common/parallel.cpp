#include "common/parallel.hpp"

#include "common/cancel.hpp"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <vector>

namespace flagcore {
namespace {

int default_threads() {
  if (const char* env = std::getenv("FLAGCORE_NUM_THREADS")) {
    int v = std::atoi(env);
    if (v > 0) return std::min(v, kMaxThreads);
  }
  unsigned hc = std::thread::hardware_concurrency();
  return hc == 0 ? 1 : std::min(static_cast<int>(hc), kMaxThreads);
}

std::atomic<int> g_threads{0};

}  // namespace

int num_threads() {
  int t = g_threads.load(std::memory_order_relaxed);
  return t > 0 ? t : default_threads();
}

void set_num_threads(int n) {
  if (n < 0 || n > kMaxThreads) {
    std::ostringstream os;
    os << "set_num_threads: n must be in [0, " << kMaxThreads << "], got " << n;
    throw std::invalid_argument(os.str());
  }
  g_threads.store(n, std::memory_order_relaxed);
}

void parallel_for(std::size_t n_tasks, const std::function<void(std::size_t)>& fn, int max_threads) {
  if (n_tasks == 0) return;
  int threads = max_threads > 0 ? std::min(max_threads, num_threads()) : num_threads();
  threads = static_cast<int>(std::min<std::size_t>(static_cast<std::size_t>(threads), n_tasks));
  if (threads <= 1) {
    for (std::size_t t = 0; t < n_tasks; ++t) {
      check_cancel();
      fn(t);
    }
    return;
  }
  CancelScope* scope = current_cancel_scope();
  std::atomic<std::size_t> next{0};
  std::exception_ptr error;
  std::mutex mutex;  // guards error and running
  std::condition_variable all_done;
  int running = 0;
  auto fail = [&](std::exception_ptr e) {
    std::lock_guard<std::mutex> lock(mutex);
    if (!error) error = e;
    next.store(n_tasks, std::memory_order_relaxed);  // stop handing out work
  };
  auto work = [&]() {
    for (;;) {
      std::size_t t = next.fetch_add(1, std::memory_order_relaxed);
      if (t >= n_tasks) return;
      try {
        check_cancel();
        fn(t);
      } catch (...) {
        fail(std::current_exception());
        return;
      }
    }
  };
  auto worker = [&]() {
    set_cancel_scope(scope);  // the caller's stop flag (the poll stays with the caller)
    work();
    set_cancel_scope(nullptr);
    std::lock_guard<std::mutex> lock(mutex);
    if (--running == 0) all_done.notify_all();
  };
  std::vector<std::thread> pool;
  pool.reserve(static_cast<std::size_t>(threads - 1));
  for (int i = 1; i < threads; ++i) {
    try {
      {
        std::lock_guard<std::mutex> lock(mutex);
        ++running;
      }
      pool.emplace_back(worker);
    } catch (const std::system_error& e) {
      {
        std::lock_guard<std::mutex> lock(mutex);
        --running;
      }
      // Never terminate the process: stop, join what started, and report.
      std::ostringstream os;
      os << "flagcore: could not start worker thread " << i << " of " << threads << " (" << e.what()
         << "); lower the thread count with flagcore.set_num_threads";
      fail(std::make_exception_ptr(std::runtime_error(os.str())));
      break;
    }
  }
  work();
  // Wait for the workers, polling for Ctrl-C meanwhile (a worker may run a long task).
  {
    std::unique_lock<std::mutex> lock(mutex);
    while (running > 0) {
      if (all_done.wait_for(lock, CancelScope::kPollInterval, [&] { return running == 0; })) break;
      lock.unlock();
      if (scope != nullptr && cancel_requested()) next.store(n_tasks, std::memory_order_relaxed);
      lock.lock();
    }
  }
  for (auto& th : pool) th.join();
  if (error) std::rethrow_exception(error);
  if (scope != nullptr && scope->stop.load(std::memory_order_relaxed)) throw Cancelled();
}

}  // namespace flagcore
