#include "common/cancel.hpp"

#include "common/parallel.hpp"

namespace flagcore {
namespace {
thread_local CancelScope* tls_scope = nullptr;
thread_local char tls_identity = 0;
}  // namespace

CancelScope* current_cancel_scope() noexcept {
  return tls_scope;
}

CancelScope* set_cancel_scope(CancelScope* scope) noexcept {
  CancelScope* prev = tls_scope;
  tls_scope = scope;
  return prev;
}

CancelScopeGuard::CancelScopeGuard(CancelScope& scope) : scope_(&scope) {
  scope.owner = &tls_identity;
  scope.next_poll = std::chrono::steady_clock::now() + CancelScope::kPollInterval;
  prev_ = set_cancel_scope(&scope);
}

CancelScopeGuard::~CancelScopeGuard() {
  set_cancel_scope(prev_);
  if (scope_->stop.load(std::memory_order_relaxed)) release_idle_threads();
}

bool cancel_requested() {
  CancelScope* s = tls_scope;
  if (s == nullptr) return false;
  if (s->stop.load(std::memory_order_relaxed)) return true;
  if (s->poll && s->owner == &tls_identity) {
    const auto now = std::chrono::steady_clock::now();
    if (now >= s->next_poll) {
      s->next_poll = now + CancelScope::kPollInterval;
      if (s->poll()) {
        s->stop.store(true, std::memory_order_relaxed);
        return true;
      }
    }
  }
  return false;
}

}  // namespace flagcore
