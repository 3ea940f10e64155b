// A minimal fork-join helper over a persistent pool of std::threads.
//
// parallel_for(n_tasks, fn) runs fn(t) for every t in [0, n_tasks) on up to num_threads()
// threads (the calling thread included) that claim tasks from a shared counter. The result of
// a computation must never depend on which thread ran which task: callers give each task its
// own output slot and combine the slots in task order afterwards. An exception thrown by a
// task is rethrown in the caller after every helper has left the call. A thread that cannot be
// created (resource limits) is reported as std::runtime_error, never std::terminate. Inside a
// CancelScope (csrc/common/cancel.hpp) the helpers share the caller's stop flag and the waiting
// caller keeps polling for Ctrl-C; tasks should call check_cancel() every few milliseconds of
// work.
//
// The helpers come from a process-wide pool of at most num_threads() - 1 workers, created on
// demand; between calls a worker spins for up to 200 us (back-to-back calls find it awake),
// then parks on a condition variable (no CPU used). A call takes only
// free workers and never waits for a busy one: nested calls (a task calling parallel_for) and
// calls from several threads at once run with the free workers, or alone, so they cannot
// deadlock. set_num_threads joins idle workers above the new count. After a call interrupted
// by Ctrl-C (when its CancelScope ends), or one that failed to start a thread, the idle workers
// are joined (no flagcore
// thread stays, running or parked). A forked child starts with an empty pool (pthread_atfork)
// and never waits for its parent's threads. At exit the parked workers are joined.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>

#include "common/cancel.hpp"

namespace flagcore {

// Upper bound of the thread count (set_num_threads throws above it; FLAGCORE_NUM_THREADS and the
// hardware count are capped to it).
constexpr int kMaxThreads = 1024;

int num_threads();
// 0 restores the default (hardware concurrency, or FLAGCORE_NUM_THREADS from the environment).
void set_num_threads(int n);

void parallel_for(std::size_t n_tasks, const std::function<void(std::size_t)>& fn, int max_threads = 0);

// The column width of a problem's tasks: `cols`, or, where that would leave the problem's n
// columns one task, about half of n rounded up to a multiple of `unit` (two tasks where
// n > unit), so that a problem of one task's width still runs on two threads. Depends on n, cols
// and unit only, never on the thread count.
inline int64_t at_least_two_tasks(int64_t n, int64_t cols, int64_t unit) {
  return cols < n ? cols : std::max(unit, ((n + 1) / 2 + unit - 1) / unit * unit);
}

// fn(begin, end) for each fixed block [b * block, min(n, (b + 1) * block)) of [0, n), run by
// parallel_for: the blocks depend on n and block only, never on the thread count.
template <typename F>
void parallel_blocks(int64_t n, int64_t block, F&& fn, int max_threads = 0) {
  const int64_t blocks = n > 0 ? (n + block - 1) / block : 0;
  parallel_for(
      static_cast<std::size_t>(blocks),
      [&](std::size_t b) {
        const int64_t begin = static_cast<int64_t>(b) * block;
        fn(begin, begin + block < n ? begin + block : n);
      },
      max_threads);
}

// dst[0, n) = v on flagcore's threads, in fixed blocks of 2^20 elements with Ctrl-C polled
// before each: a p x p buffer's plain fill (1 GiB at p = 12000, its first touch included) took
// seconds that Ctrl-C could not stop. Any thread count writes the same values.
template <typename T>
void fill_parallel(T* dst, int64_t n, T v) {
  constexpr int64_t kBlock = int64_t(1) << 20;
  if (n <= kBlock) {
    std::fill(dst, dst + std::max<int64_t>(n, 0), v);
    return;
  }
  parallel_blocks(n, kBlock, [&](int64_t b, int64_t e) {
    check_cancel();
    std::fill(dst + b, dst + e, v);
  });
}

// An array of n T's, uninitialised (for buffers filled by fill_parallel or written in full).
template <typename T>
std::unique_ptr<T[]> uninit_array(int64_t n) {
  return std::unique_ptr<T[]>(new T[static_cast<size_t>(std::max<int64_t>(n, 1))]);
}

// Joins the parked workers (busy ones are left alone; a no-op on a pool worker). Called when a
// CancelScope ends cancelled (cancel.hpp); the next parallel_for recreates them.
void release_idle_threads();

}  // namespace flagcore
