// The Flag Aggregator on the CPU: Gram pass, IRLS per problem in p-space, weighted-sum pass.
//
//   rows : b * p row pointers (T = float or double), n contiguous elements each   // [B*P] -> [N]
//   out  : b * n aggregates, type T                                               // [B, N]
//   info : per-problem outputs of flag_irls (flag_irls.hpp), arrays of b entries each:
//          coef/weights/ratios/excluded [B, P], iterations/rejected/rank [B]; info.objective is
//          not used: the objective history of problem q (iterations_q + 1 values, the steps
//          actually taken, so memory follows the work and not max_iter) goes to hist[q].
// The data is read twice: once for the Gram matrices, once for the weighted sum.
//
// Ragged batches (problems of different sizes, e.g. one per layer of a model):
//   ps, ns : p_q and n_q of each of the b problems                                 // [B]
//   rows   : sum_q p_q row pointers, problem q's rows at [R_q, R_q + p_q) where R_q is the
//            prefix sum of p                                                      // [sum p]
//   out    : sum_q n_q values, problem q's aggregate at the prefix sum of n        // [sum n]
//   info   : per-worker arrays (coef, weights, ratios, excluded) of sum_q p_q entries laid out
//            like rows; iterations/rejected/rank [B]; histories in hist as above.
//   rs     : r of each problem (null: prm.r for all)                              // [B]
#pragma once
#include <cstdint>
#include <vector>

#include "flag/flag_irls.hpp"

namespace flagcore {

// Objective values of the steps each problem took (F at the start, then after each step).
using ObjectiveHistory = std::vector<std::vector<double>>;

// Runs flag_irls on b Gram matrices (b * p * p doubles), in parallel over problems (each
// problem single-threaded, so the result does not depend on the thread count).
void flag_irls_batch_cpu(const double* gram, int64_t b, int64_t p, const FlagParams& prm, FlagIrlsOut info,
                         ObjectiveHistory& hist);

template <typename T>
void flag_aggregate_cpu(const T* const* rows, int64_t b, int64_t p, int64_t n, const FlagParams& prm, T* out,
                        FlagIrlsOut info, ObjectiveHistory& hist);

template <typename T>
void flag_aggregate_ragged_cpu(const T* const* rows, const int64_t* ps, const int64_t* ns, int64_t b,
                               const FlagParams& prm, T* out, FlagIrlsOut info, ObjectiveHistory& hist,
                               const int64_t* rs = nullptr);

// Test support: flag_irls on each of the b problems run by a team of `threads` CPU threads with
// a barrier, the way a CUDA block runs it. Results must equal flag_irls_batch_cpu's bitwise;
// a missing sync or a work item given to two threads shows up as a difference.
// The CUDA path's IRLS above kJacobiMaxP, on the host: b problems (problem q has ps[q] workers,
// its Gram at gram + gram_off[q], its per-worker outputs at base + row_off[q], its objective at
// base.objective + q * steps, NaN-padded, the first `steps` values kept), in parallel over
// problems, with the same code and results as flag_irls_batch_cpu.
void flag_irls_planned_cpu(const double* gram, int64_t b, const int64_t* ps, const int64_t* gram_off,
                           const int64_t* row_off, const FlagParams& prm, FlagIrlsOut base, int64_t steps);

// Teams never use the host LAPACK (host_blas = false): this checks the Jacobi path the GPU runs.
void flag_irls_team_emulation_cpu(const double* gram, int64_t b, int64_t p, const FlagParams& prm,
                                  FlagIrlsOut info, ObjectiveHistory& hist, int threads);

}  // namespace flagcore
