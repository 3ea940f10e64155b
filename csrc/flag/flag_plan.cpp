#include "flag/flag_plan.hpp"

#include "common/check.hpp"
#include "flag/flag_irls.hpp"

namespace flagcore {
namespace {

int64_t align256(int64_t x) {
  return (x + 255) / 256 * 256;
}

void finish(FlagCudaPlan& pl) {
  FLAGCORE_CHECK_ARG(pl.p_max <= kCudaMaxP,
                     "flag_aggregate: the CUDA path takes p <= " << kCudaMaxP << ", got p = " << pl.p_max);
  pl.irls_on_host = pl.p_max > kJacobiMaxP;
  pl.irls_ws_each = pl.irls_on_host ? 0 : flag_irls_workspace(pl.p_max);
  pl.irls_smem = !pl.irls_on_host && pl.irls_ws_each * 8 <= kIrlsSmemMaxBytes;
  pl.objective_steps = (pl.max_iter < kCudaObjectiveSteps ? pl.max_iter : kCudaObjectiveSteps) + 1;
  int64_t o = 0;
  auto take = [&](int64_t bytes) {
    const int64_t at = o;
    o = align256(o + bytes);
    return at;
  };
  pl.off_gram = take(pl.gram * 8);
  pl.off_partials = take(pl.partials * 8);
  pl.off_irls = take(pl.irls_smem ? 0 : pl.b * pl.irls_ws_each * 8);
  pl.off_coef = take(pl.rows * 8);
  pl.off_weights = take(pl.rows * 8);
  pl.off_ratios = take(pl.rows * 8);
  pl.off_objective = take(pl.b * pl.objective_steps * 8);
  pl.off_iterations = take(pl.b * 4);
  pl.off_rank = take(pl.b * 4);
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
    pl.rows += p;
    pl.cols += n;
    pl.gram += p * p;
    pl.parts += gram_parts(n);
    pl.partials += gram_parts(n) * tri(p);
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
  pl.rows = b * p;
  pl.cols = b * n;
  pl.gram = b * p * p;
  pl.parts = b * gram_parts(n);
  pl.partials = pl.parts * tri(p);
  finish(pl);
  return pl;
}

}  // namespace flagcore
