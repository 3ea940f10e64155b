// Gram matrices of stacks of gradients, and weighted sums of their rows (CPU).
//
// gram_cpu
//   rows : b * p pointers (T = float or double); rows[q * p + i] points at the n contiguous
//          elements of worker i of problem q.                                   // [B*P] -> [N]
//   out  : b * p * p doubles, out[q*p*p + i*p + j] = sum_k rows[q*p+i][k] * rows[q*p+j][k],
//          both triangles filled.                                               // [B, P, P]
//   Every input element is read once from memory: columns are processed in cache-sized chunks
//   and every pair of rows is formed from the chunk while it is in cache. Products and sums are
//   in float64. The columns of each problem are cut into a number of parts that depends on n
//   only, and the parts are added in order, so the result does not depend on the thread count.
//
// weighted_sum_cpu
//   coef : b * p doubles                                                        // [B, P]
//   out  : b * n values of type T, out[q*n + k] = sum_i coef[q*p+i] * rows[q*p+i][k],
//          accumulated in float64. Rows whose coefficient is exactly 0 are not read, so a
//          worker excluded for NaN/Inf (coefficient 0) cannot poison the sum.  // [B, N]
#pragma once
#include <cstdint>

namespace flagcore {

template <typename T>
void gram_cpu(const T* const* rows, int64_t b, int64_t p, int64_t n, double* out);

template <typename T>
void weighted_sum_cpu(const T* const* rows, const double* coef, int64_t b, int64_t p, int64_t n,
                      T* out);

// The per-instruction-set micro-kernels: acc (p x p, row-major) += X[:, k0:k1] X[:, k0:k1]^T on
// the upper triangle (i <= j; entries below the diagonal are scratch).
namespace simd_generic {
void gram_accumulate(const float* const* rows, int64_t p, int64_t k0, int64_t k1, double* acc);
void gram_accumulate(const double* const* rows, int64_t p, int64_t k0, int64_t k1, double* acc);
}  // namespace simd_generic
namespace simd_avx2 {
void gram_accumulate(const float* const* rows, int64_t p, int64_t k0, int64_t k1, double* acc);
void gram_accumulate(const double* const* rows, int64_t p, int64_t k0, int64_t k1, double* acc);
}  // namespace simd_avx2
namespace simd_avx512 {
void gram_accumulate(const float* const* rows, int64_t p, int64_t k0, int64_t k1, double* acc);
void gram_accumulate(const double* const* rows, int64_t p, int64_t k0, int64_t k1, double* acc);
}  // namespace simd_avx512

}  // namespace flagcore
