#include "common/parallel.hpp"

#include "common/cancel.hpp"

#include <cxxabi.h>
#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

namespace flagcore {
namespace {

// FLAGCORE_NUM_THREADS, read once (the first call), as `import flagcore` checked it
// (python/flagcore/_backend.py: an integer in [0, 1024], else a ValueError at import): a value set
// later, or one that is not such an integer, changes nothing (it used to be re-read by every call,
// and "5000" became 1024, "7xyz" 7). Unset or 0: the hardware's threads, at most kMaxThreads.
int default_threads() {
  static const int threads = [] {
    if (const char* env = std::getenv("FLAGCORE_NUM_THREADS")) {
      char* end = nullptr;
      const long v = std::strtol(env, &end, 10);
      if (end != env && *end == '\0' && v > 0 && v <= kMaxThreads) return static_cast<int>(v);
    }
    const unsigned hc = std::thread::hardware_concurrency();
    return hc == 0 ? 1 : std::min(static_cast<int>(hc), kMaxThreads);
  }();
  return threads;
}

std::atomic<int> g_threads{0};

// One parallel_for call: lives on the caller's stack until every helper assigned to it finished.
struct Job {
  const std::function<void(std::size_t)>* fn = nullptr;
  std::size_t n_tasks = 0;
  CancelScope* scope = nullptr;
  std::atomic<std::size_t> next{0};
  std::mutex mutex;  // guards error and running
  std::condition_variable all_done;
  std::exception_ptr error;
  int running = 0;  // helpers assigned and not finished

  void fail(std::exception_ptr e) {
    std::lock_guard<std::mutex> lock(mutex);
    if (!error) error = e;
    next.store(n_tasks, std::memory_order_relaxed);  // stop handing out work
  }
  // caller: the calling thread, which lets a forced unwind through (a daemon Python thread that
  // takes the GIL while the interpreter exits is ended by pthread_exit); parallel_for stops the
  // helpers before it leaves.
  void work(bool caller) {
    for (;;) {
      std::size_t t = next.fetch_add(1, std::memory_order_relaxed);
      if (t >= n_tasks) return;
      try {
        check_cancel();
        (*fn)(t);
      } catch (abi::__forced_unwind&) {
        if (caller) throw;
        fail(std::make_exception_ptr(std::runtime_error("flagcore: worker thread unwound")));
        return;
      } catch (...) {
        fail(std::current_exception());
        return;
      }
    }
  }
  // A helper is done: the last touch of the job by that helper (notify under the lock, so the
  // caller cannot destroy the job before this returns).
  void finish_one() {
    std::lock_guard<std::mutex> lock(mutex);
    if (--running == 0) all_done.notify_all();
  }
};

// A pool thread. Slots are never freed while the process lives (a retired slot is reused by the
// next thread created), so a Worker* held by a caller stays valid.
struct Worker {
  std::thread thread;
  std::condition_variable wake;
  Job* job = nullptr;  // assigned work (guarded by Pool::mutex)
  bool stop = false;   // leave the loop (guarded by Pool::mutex)
  // A hint that job or stop changed, for the spinning phase (read without the lock; job and
  // stop, read under the lock, decide).
  std::atomic<bool> poke{false};
};

// After a job a worker spins this long (watching its poke flag) before it parks on its
// condition variable: back-to-back calls (one aggregation per step, a benchmark loop, the
// several passes of one rule) find it awake instead of paying a futex wake-up, which on a
// virtual machine costs tens of microseconds, a large part of a sub-millisecond call. The
// same idea as OpenMP's spin-before-sleep (GOMP_SPINCOUNT, KMP_BLOCKTIME), kept short.
// FLAGCORE_SPIN_US in the environment sets it (0: park at once, for machines where every core
// is taken, e.g. several ranks per host); read once, when the pool is created.
constexpr int kDefaultSpinUs = 200;
std::chrono::microseconds g_spin{kDefaultSpinUs};

std::chrono::microseconds spin_from_env() {
  if (const char* env = std::getenv("FLAGCORE_SPIN_US")) {
    char* end = nullptr;
    const long v = std::strtol(env, &end, 10);
    if (end != env && *end == '\0' && v >= 0 && v <= 1000000) return std::chrono::microseconds(v);
  }
  return std::chrono::microseconds(kDefaultSpinUs);
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// Spins until w->poke is set or the spin time has passed; true when poked.
bool spin_for_poke(Worker* w) {
  if (g_spin.count() == 0) return false;
  const auto until = std::chrono::steady_clock::now() + g_spin;
  for (;;) {
    for (int i = 0; i < 64; ++i) {
      if (w->poke.load(std::memory_order_acquire)) return true;
      cpu_relax();
    }
    if (std::chrono::steady_clock::now() >= until) return false;
  }
}

thread_local bool t_pool_worker = false;

// The persistent workers. Never deleted: a forked child abandons its parent's pool (the threads
// do not exist there) and creates a fresh one; at exit the idle workers are joined and a worker
// still busy for another thread keeps valid memory until the process ends.
struct Pool {
  std::mutex mutex;
  std::vector<std::unique_ptr<Worker>> slots;
  std::vector<Worker*> idle;  // parked on their condition variable, no job
  std::vector<Worker*> free;  // slots without a thread
  int live = 0;               // workers with a thread (idle or busy)
  bool shutdown = false;      // process exit: no new workers, callers run alone
};

void worker_main(Pool* pool, Worker* w) {
  t_pool_worker = true;
  std::unique_lock<std::mutex> lock(pool->mutex);
  bool spin = false;  // no spinning before the first job: a new worker has one assigned
  for (;;) {
    if (spin && w->job == nullptr && !w->stop) {
      lock.unlock();
      spin_for_poke(w);
      lock.lock();
    }
    while (w->job == nullptr && !w->stop) w->wake.wait(lock);
    w->poke.store(false, std::memory_order_relaxed);
    if (w->job == nullptr) return;  // stop
    Job* job = w->job;
    w->job = nullptr;
    spin = true;
    lock.unlock();
    set_cancel_scope(job->scope);  // the caller's stop flag (the poll stays with the caller)
    job->work(false);
    set_cancel_scope(nullptr);
    lock.lock();
    pool->idle.push_back(w);  // idle before the caller returns: its next call finds it free
    lock.unlock();
    job->finish_one();
    lock.lock();
  }
}

std::mutex g_pool_mutex;  // creation of the pool; held across fork()
std::atomic<Pool*> g_pool{nullptr};

void atfork_prepare() {
  g_pool_mutex.lock();
}
void atfork_parent() {
  g_pool_mutex.unlock();
}
void atfork_child() {
  // Only the forking thread exists here: abandon (leak) the parent's pool, whose threads and
  // locks belong to the parent; the child creates a fresh pool on its first parallel call.
  g_pool.store(nullptr, std::memory_order_relaxed);
  g_pool_mutex.unlock();
}

Pool* get_pool() {
  Pool* p = g_pool.load(std::memory_order_acquire);
  if (p != nullptr) return p;
  std::lock_guard<std::mutex> lock(g_pool_mutex);
  p = g_pool.load(std::memory_order_relaxed);
  if (p == nullptr) {
    static bool registered = false;  // inherited by forked children together with the handlers
    if (!registered) {
      pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
      registered = true;
    }
    g_spin = spin_from_env();
    p = new Pool();
    g_pool.store(p, std::memory_order_release);
  }
  return p;
}

// Stops and joins idle workers until at most `keep` workers live (busy ones are left alone).
void reap(Pool* pool, int keep) {
  std::vector<Worker*> gone;
  {
    std::lock_guard<std::mutex> lock(pool->mutex);
    while (pool->live > keep && !pool->idle.empty()) {
      Worker* w = pool->idle.back();
      pool->idle.pop_back();
      w->stop = true;
      w->poke.store(true, std::memory_order_release);
      --pool->live;
      gone.push_back(w);
    }
  }
  if (gone.empty()) return;
  for (Worker* w : gone) w->wake.notify_one();
  for (Worker* w : gone) w->thread.join();
  std::lock_guard<std::mutex> lock(pool->mutex);
  for (Worker* w : gone) {
    w->stop = false;
    w->thread = std::thread();
    pool->free.push_back(w);
  }
}

int pool_target() {
  return num_threads() - 1;  // helpers beside the calling thread
}

// Process exit: join the parked workers (none is left waiting on a destroyed object).
struct ExitReaper {
  ~ExitReaper() {
    Pool* pool = g_pool.load(std::memory_order_acquire);
    if (pool == nullptr) return;
    {
      std::lock_guard<std::mutex> lock(pool->mutex);
      pool->shutdown = true;
    }
    reap(pool, 0);
  }
} g_exit_reaper;

}  // namespace

void release_idle_threads() {
  Pool* pool = g_pool.load(std::memory_order_acquire);
  if (pool != nullptr && !t_pool_worker) reap(pool, 0);
}

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
  if (Pool* pool = g_pool.load(std::memory_order_acquire)) reap(pool, std::max(pool_target(), 0));
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
  Pool* pool = get_pool();
  Job job;
  job.fn = &fn;
  job.n_tasks = n_tasks;
  job.scope = current_cancel_scope();
  const int target = pool_target();
  std::vector<Worker*> helpers;
  helpers.reserve(static_cast<std::size_t>(threads - 1));
  std::string failure;
  {
    std::lock_guard<std::mutex> lock(pool->mutex);
    // Free workers first; then new ones while the pool is below num_threads() - 1 workers. A
    // nested or concurrent call finding none free runs with fewer helpers (never waits for one).
    while (static_cast<int>(helpers.size()) < threads - 1 && !pool->idle.empty()) {
      helpers.push_back(pool->idle.back());
      pool->idle.pop_back();
    }
    while (static_cast<int>(helpers.size()) < threads - 1 && pool->live < target && !pool->shutdown) {
      Worker* w = nullptr;
      if (!pool->free.empty()) {
        w = pool->free.back();
        pool->free.pop_back();
      } else {
        pool->slots.push_back(std::make_unique<Worker>());
        w = pool->slots.back().get();
      }
      try {
        w->thread = std::thread(worker_main, pool, w);
      } catch (const std::system_error& e) {
        pool->free.push_back(w);
        // Never terminate the process: report, and give back what this call took.
        std::ostringstream os;
        os << "flagcore: could not start worker thread " << (pool->live + 1) << " of " << threads << " ("
           << e.what() << "); lower the thread count with flagcore.set_num_threads";
        failure = os.str();
        break;
      }
      ++pool->live;
      helpers.push_back(w);
    }
    if (failure.empty()) {
      job.running = static_cast<int>(helpers.size());
      for (Worker* w : helpers) {
        w->job = &job;
        w->poke.store(true, std::memory_order_release);
      }
    } else {
      for (Worker* w : helpers) pool->idle.push_back(w);
    }
  }
  if (!failure.empty()) {
    reap(pool, 0);  // a thread failed to start: free the address space of the parked ones too
    throw std::runtime_error(failure);
  }
  for (Worker* w : helpers) w->wake.notify_one();
  // Helpers not yet woken (a busy machine) are taken back once the tasks are all claimed.
  auto take_back = [&] {
    if (helpers.empty()) return;
    std::lock_guard<std::mutex> pool_lock(pool->mutex);
    std::lock_guard<std::mutex> lock(job.mutex);
    for (Worker* w : helpers)
      if (w->job == &job) {
        w->job = nullptr;
        w->poke.store(false, std::memory_order_relaxed);  // a spinning worker keeps spinning
        pool->idle.push_back(w);
        --job.running;
      }
  };
  try {
    job.work(true);
    take_back();
    // Wait for the started helpers, polling for Ctrl-C meanwhile (a helper may run a long task).
    std::unique_lock<std::mutex> lock(job.mutex);
    while (job.running > 0) {
      if (job.all_done.wait_for(lock, CancelScope::kPollInterval, [&] { return job.running == 0; })) break;
      lock.unlock();
      if (job.scope != nullptr && cancel_requested()) job.next.store(n_tasks, std::memory_order_relaxed);
      lock.lock();
    }
  } catch (abi::__forced_unwind&) {
    // This thread is being ended: the helpers must leave the job (on this stack) first.
    job.next.store(n_tasks, std::memory_order_relaxed);
    if (job.scope != nullptr) job.scope->stop.store(true, std::memory_order_relaxed);
    take_back();
    std::unique_lock<std::mutex> lock(job.mutex);
    job.all_done.wait(lock, [&] { return job.running == 0; });
    throw;
  }
  const bool cancelled = job.scope != nullptr && job.scope->stop.load(std::memory_order_relaxed);
  // After an interrupt the parked workers are joined when the CancelScope ends
  // (release_idle_threads), wherever the interrupt was seen.
  if (!cancelled && !t_pool_worker) {
    // set_num_threads lowered the count while some workers were busy: join the extra ones now.
    bool excess = false;
    {
      std::lock_guard<std::mutex> lock(pool->mutex);
      excess = pool->live > std::max(pool_target(), 0);
    }
    if (excess) reap(pool, std::max(pool_target(), 0));
  }
  if (job.error) std::rethrow_exception(job.error);
  if (cancelled) throw Cancelled();
}

}  // namespace flagcore
