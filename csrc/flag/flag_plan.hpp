// Layout of the Flag Aggregator's GPU work (host code, no CUDA needed, so it is tested on CPU
// machines too). The Python layer asks for a plan, allocates ONE workspace buffer of
// plan.bytes on the device with torch, and the CUDA launchers carve it up the same way.
//
// Problems: b independent FA problems; problem q has p_q workers (rows) of n_q elements.
// Columns are cut into "parts" of kGramPartColumns (the count depends on n only, never on the
// GPU, so results are the same on any device): the Gram pass writes one float64 partial per
// (part, upper-triangle entry), and a second kernel adds the parts in a fixed order.
//
// meta (ragged batches, int64, kMetaCols per problem, on the device before the row table):
//   [p, n, row_off, gram_off, part_off, partial_off, col_off]
//   row_off: prefix sum of p (rows, coef/weights/ratios/excluded); gram_off: of p^2;
//   part_off: of parts(n); partial_off: of parts(n) * p (p + 1) / 2; col_off: of n (output).
//
// Workspace (byte offsets, each 256-byte aligned):
//   gram      float64 [sum p^2]           Gram matrices, both triangles
//   partials  float64 [sum parts*tri(p)]  Gram partial sums per part
//   irls      float64 [b * irls_ws_each]  IRLS scratch when it does not fit in shared memory
//   coef, weights, ratios  float64 [sum p]; objective float64 [b, objective_steps] (NaN-padded)
//   iterations, rank  int32 [b];  excluded uint8 [sum p];  rejected uint8 [b]
#pragma once
#include <cstdint>
#include <vector>

#include "common/check.hpp"

namespace flagcore {

constexpr int64_t kGramPartColumns = 32768;
constexpr int kMetaCols = 7;
// The IRLS scratch goes to shared memory up to this size (fits the opt-in limit of sm_80,
// 163 KiB, and sm_90, 227 KiB); beyond (p > 44) it lives in the global workspace.
constexpr int64_t kIrlsSmemMaxBytes = 160 * 1024;
// Largest p the CUDA path takes (the weighted-sum kernel keeps p coefficients in 48 KiB of
// shared memory). Above kJacobiMaxP the IRLS runs on the host (flag_irls_cuda.cu).
constexpr int64_t kCudaMaxP = 6144;
// Objective history kept per problem on the GPU: the first kCudaObjectiveSteps steps (memory
// must follow the work, not max_iter).
constexpr int64_t kCudaObjectiveSteps = 1024;

FLAGCORE_HD inline int64_t gram_parts(int64_t n) {
  return n <= 0 ? 1 : (n + kGramPartColumns - 1) / kGramPartColumns;
}
FLAGCORE_HD inline int64_t tri(int64_t p) {
  return p * (p + 1) / 2;
}
// Threads of the IRLS block for problems of at most p workers.
inline int irls_threads(int64_t p) {
  return p <= 8 ? 128 : (p <= 64 ? 256 : 512);
}

struct FlagCudaPlan {
  int64_t b = 0, rows = 0, cols = 0, p_max = 0, p_min = 0, parts = 0, partials = 0, gram = 0;
  int64_t irls_ws_each = 0;  // doubles of IRLS scratch per problem
  bool irls_smem = true;
  int max_iter = 1;
  int64_t objective_steps = 2;  // entries per problem: min(max_iter, kCudaObjectiveSteps) + 1
  bool irls_on_host = false;    // p_max > kJacobiMaxP: the IRLS runs on the host
  int64_t off_gram = 0, off_partials = 0, off_irls = 0, off_coef = 0, off_weights = 0, off_ratios = 0,
          off_objective = 0, off_iterations = 0, off_rank = 0, off_excluded = 0, off_rejected = 0, bytes = 0;
};

// Ragged: ps, ns of b problems. Fills meta (b * kMetaCols) when it is not null.
FlagCudaPlan flag_cuda_plan(const int64_t* ps, const int64_t* ns, int64_t b, int max_iter, int64_t* meta);
// Uniform: b problems of p x n.
FlagCudaPlan flag_cuda_plan_uniform(int64_t b, int64_t p, int64_t n, int max_iter);

}  // namespace flagcore
