#include "flag/flag_plan.hpp"

#include "common/check.hpp"
#include "flag/flag_irls.hpp"

namespace flagcore {
namespace {

// Sizes in int64 with overflow refused (2^62 workers gave negative byte counts, and a
// 1-byte workspace was then accepted).
int64_t mul(int64_t a, int64_t b) {
  int64_t r = 0;
  FLAGCORE_CHECK_ARG(!__builtin_mul_overflow(a, b, &r),
                     "flag_cuda_plan: sizes too large (" << a << " * " << b << " overflows int64)");
  return r;
}
int64_t add(int64_t a, int64_t b) {
  int64_t r = 0;
  FLAGCORE_CHECK_ARG(!__builtin_add_overflow(a, b, &r),
                     "flag_cuda_plan: sizes too large (" << a << " + " << b << " overflows int64)");
  return r;
}

int64_t align256(int64_t x) {
  return add(x, 255) / 256 * 256;
}

void check_p(int64_t p) {
  FLAGCORE_CHECK_ARG(p <= kCudaMaxP,
                     "flag_aggregate: the CUDA path takes p <= " << kCudaMaxP << ", got p = " << p);
}

// Every p was checked (check_p) by the caller, before its p * p.
void finish(FlagCudaPlan& pl) {
  pl.irls_on_host = pl.p_max > kJacobiMaxP;
  pl.irls_ws_each = pl.irls_on_host ? 0 : flag_irls_workspace(pl.p_max);
  pl.irls_smem = !pl.irls_on_host && pl.irls_ws_each * 8 <= kIrlsSmemMaxBytes;
  pl.objective_steps = (pl.max_iter < kCudaObjectiveSteps ? pl.max_iter : kCudaObjectiveSteps) + 1;
  int64_t o = 0;
  auto take = [&](int64_t bytes) {
    const int64_t at = o;
    o = align256(add(o, bytes));
    return at;
  };
  pl.off_gram = take(mul(pl.gram, 8));
  pl.off_partials = take(mul(pl.partials, 8));
  pl.off_irls = take(pl.irls_smem ? 0 : mul(mul(pl.b, pl.irls_ws_each), 8));
  pl.off_coef = take(mul(pl.rows, 8));
  pl.off_weights = take(mul(pl.rows, 8));
  pl.off_ratios = take(mul(pl.rows, 8));
  pl.off_objective = take(mul(mul(pl.b, pl.objective_steps), 8));
  pl.off_iterations = take(mul(pl.b, 4));
  pl.off_rank = take(mul(pl.b, 4));
  pl.off_excluded = take(pl.rows);
  pl.off_rejected = take(pl.b);
  pl.bytes = o;
}

}  // namespace

FlagCudaPlan flag_cuda_plan(const int64_t* ps, const int64_t* ns, int64_t b, int max_iter, int64_t* meta) {
  FLAGCORE_CHECK_ARG(b >= 1, "flag_cuda_plan: need at least one problem");
  FLAGCORE_CHECK_ARG(max_iter >= 1, "flag_cuda_plan: max_iter must be >= 1, got " << max_iter);
  FlagCudaPlan pl;
  pl.b = b;
  pl.max_iter = max_iter;
  pl.p_min = ps[0];
  for (int64_t q = 0; q < b; ++q) {
    const int64_t p = ps[q], n = ns[q];
    FLAGCORE_CHECK_ARG(p >= 1 && n >= 0,
                       "flag_cuda_plan: problem " << q << " has p = " << p << ", n = " << n);
    if (meta) {
      int64_t* m = meta + q * kMetaCols;
      m[0] = p;
      m[1] = n;
      m[2] = pl.rows;
      m[3] = pl.gram;
      m[4] = pl.parts;
      m[5] = pl.partials;
      m[6] = pl.cols;
    }
    check_p(p);
    pl.rows = add(pl.rows, p);
    pl.cols = add(pl.cols, n);
    pl.gram = add(pl.gram, p * p);
    pl.parts = add(pl.parts, gram_parts(n));
    pl.partials = add(pl.partials, mul(gram_parts(n), tri(p)));
    if (p > pl.p_max) pl.p_max = p;
    if (p < pl.p_min) pl.p_min = p;
  }
  finish(pl);
  return pl;
}

FlagCudaPlan flag_cuda_plan_uniform(int64_t b, int64_t p, int64_t n, int max_iter) {
  FLAGCORE_CHECK_ARG(b >= 1 && p >= 1 && n >= 0,
                     "flag_cuda_plan: bad sizes b = " << b << ", p = " << p << ", n = " << n);
  FLAGCORE_CHECK_ARG(max_iter >= 1, "flag_cuda_plan: max_iter must be >= 1, got " << max_iter);
  FlagCudaPlan pl;
  pl.b = b;
  pl.max_iter = max_iter;
  pl.p_max = pl.p_min = p;
  check_p(p);
  pl.rows = mul(b, p);
  pl.cols = mul(b, n);
  pl.gram = mul(b, p * p);
  pl.parts = mul(b, gram_parts(n));
  pl.partials = mul(pl.parts, tri(p));
  finish(pl);
  return pl;
}

}  // namespace flagcore
