// A minimal fork-join helper over std::thread.
//
// parallel_for(n_tasks, fn) runs fn(t) for every t in [0, n_tasks) on up to num_threads()
// threads (the calling thread included) that claim tasks from a shared counter. The result of
// a computation must never depend on which thread ran which task: callers give each task its
// own output slot and combine the slots in task order afterwards. An exception thrown by a
// task is rethrown in the caller after all threads have joined. A thread that cannot be created
// (resource limits) is reported as std::runtime_error, never std::terminate. Inside a CancelScope
// (csrc/common/cancel.hpp) the workers share the caller's stop flag and the waiting caller keeps
// polling for Ctrl-C; tasks should call check_cancel() every few milliseconds of work.
#pragma once
#include <cstddef>
#include <functional>

namespace flagcore {

// Upper bound of the thread count (set_num_threads throws above it; FLAGCORE_NUM_THREADS and the
// hardware count are capped to it).
constexpr int kMaxThreads = 1024;

int num_threads();
// 0 restores the default (hardware concurrency, or FLAGCORE_NUM_THREADS from the environment).
void set_num_threads(int n);

void parallel_for(std::size_t n_tasks, const std::function<void(std::size_t)>& fn, int max_threads = 0);

}  // namespace flagcore
