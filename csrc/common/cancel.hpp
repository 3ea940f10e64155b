// Cooperative cancellation of long native calls (Ctrl-C).
//
// A binding that runs long native work opens a CancelScope on the calling thread (see
// `Interruptible` in csrc/bindings.cpp): it holds a stop flag and a poll function that asks
// Python whether a signal arrived (PyErr_CheckSignals, with the GIL taken for the moment).
// Native loops call check_cancel() at bounded intervals (every few milliseconds of work):
// - on any thread it throws Cancelled once the stop flag is up;
// - on the scope's owner thread it also runs the poll at most every kPollInterval, and raises
//   the flag (and throws) when the poll says so.
// parallel_for hands the caller's scope to its worker threads and, while the caller waits for
// them, keeps polling, so a signal is seen within ~kPollInterval plus the time between two
// check_cancel() calls of the workers. Outside a scope (plain C++ callers, tests) check_cancel()
// is one thread-local load and never throws.
//
// check_cancel() must not be called while holding a lock that a thread holding the GIL may wait
// for (the poll takes the GIL).
#pragma once
#include <atomic>
#include <chrono>
#include <exception>
#include <functional>

namespace flagcore {

class Cancelled : public std::exception {
 public:
  const char* what() const noexcept override { return "flagcore: native call interrupted"; }
};

struct CancelScope {
  static constexpr std::chrono::milliseconds kPollInterval{50};
  std::atomic<bool> stop{false};
  std::function<bool()> poll;   // owner thread only; true = cancel
  const void* owner = nullptr;  // identity of the owner thread (address of a thread_local)
  std::chrono::steady_clock::time_point next_poll{};
};

// The scope of the current thread (nullptr outside any). Returns the previous one.
CancelScope* current_cancel_scope() noexcept;
CancelScope* set_cancel_scope(CancelScope* scope) noexcept;

// Opens `scope` on the calling thread (it becomes the owner) for the lifetime of the guard. A
// scope that ends cancelled joins flagcore's parked worker threads (release_idle_threads), so
// after a Ctrl-C no flagcore thread stays, wherever in the call the interrupt was seen.
class CancelScopeGuard {
 public:
  explicit CancelScopeGuard(CancelScope& scope);
  ~CancelScopeGuard();
  CancelScopeGuard(const CancelScopeGuard&) = delete;
  CancelScopeGuard& operator=(const CancelScopeGuard&) = delete;

 private:
  CancelScope* scope_;
  CancelScope* prev_;
};

// Polls (owner thread, rate-limited) and returns whether the current call must stop.
bool cancel_requested();

// Throws Cancelled when the current call must stop.
inline void check_cancel() {
  if (current_cancel_scope() != nullptr && cancel_requested()) throw Cancelled();
}

}  // namespace flagcore
