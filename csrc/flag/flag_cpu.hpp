// The Flag Aggregator on the CPU: Gram pass, IRLS per problem in p-space, weighted-sum pass.
//
//   rows : b * p row pointers (T = float or double), n contiguous elements each   // [B*P] -> [N]
//   out  : b * n aggregates, type T                                               // [B, N]
//   info : per-problem outputs of flag_irls (flag_irls.hpp), arrays of b entries each:
//          coef/weights/ratios/excluded [B, P], objective [B, max_iter + 1],
//          iterations/rejected/rank [B].
// The data is read twice: once for the Gram matrices, once for the weighted sum.
//
// Ragged batches (problems of different sizes, e.g. one per layer of a model):
//   ps, ns : p_q and n_q of each of the b problems                                 // [B]
//   rows   : sum_q p_q row pointers, problem q's rows at [R_q, R_q + p_q) where R_q is the
//            prefix sum of p                                                      // [sum p]
//   out    : sum_q n_q values, problem q's aggregate at the prefix sum of n        // [sum n]
//   info   : per-worker arrays (coef, weights, ratios, excluded) of sum_q p_q entries laid out
//            like rows; objective [B, max_iter + 1]; iterations/rejected/rank [B].
#pragma once
#include <cstdint>

#include "flag/flag_irls.hpp"

namespace flagcore {

// Runs flag_irls on b Gram matrices (b * p * p doubles), in parallel over problems.
void flag_irls_batch_cpu(const double* gram, int64_t b, int64_t p, const FlagParams& prm,
                         FlagIrlsOut info);

template <typename T>
void flag_aggregate_cpu(const T* const* rows, int64_t b, int64_t p, int64_t n,
                        const FlagParams& prm, T* out, FlagIrlsOut info);

template <typename T>
void flag_aggregate_ragged_cpu(const T* const* rows, const int64_t* ps, const int64_t* ns,
                               int64_t b, const FlagParams& prm, T* out, FlagIrlsOut info);

// Test support: flag_irls on each of the b problems run by a team of `threads` CPU threads with
// a barrier, the way a CUDA block runs it. Results must equal flag_irls_batch_cpu's bitwise;
// a missing sync or a work item given to two threads shows up as a difference.
void flag_irls_team_emulation_cpu(const double* gram, int64_t b, int64_t p, const FlagParams& prm,
                                  FlagIrlsOut info, int threads);

}  // namespace flagcore
