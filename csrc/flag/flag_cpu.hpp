// The Flag Aggregator on the CPU: Gram pass, IRLS per problem in p-space, weighted-sum pass.
//
//   rows : b * p row pointers (T = float or double), n contiguous elements each   // [B*P] -> [N]
//   out  : b * n aggregates, type T                                               // [B, N]
//   info : per-problem outputs of flag_irls (flag_irls.hpp), arrays of b entries each:
//          coef/weights/ratios/excluded [B, P], objective [B, max_iter + 1],
//          iterations/rejected/rank [B].
// The data is read twice: once for the Gram matrices, once for the weighted sum.
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

}  // namespace flagcore
