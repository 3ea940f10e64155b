// The values of every gradient at a sample of coordinates, in float64 (DnC's and SignGuard's
// random coordinates), CPU.
#pragma once
#include <cstdint>

namespace flagcore {

// out[(q * p + i) * k + j] = double(rows[q * p + i][cols[j]]) for b * p rows of n values of T;
// cols (k indices, each in [0, n): the caller checks) in any order, sorted ones read each cache
// line at most once per row. Tasks are (row, run of columns) on flagcore's threads; Ctrl-C is
// checked once per task.
template <typename T>
void gather_columns_cpu(const T* const* rows, int64_t b, int64_t p, const int64_t* cols, int64_t k,
                        double* out);

}  // namespace flagcore
