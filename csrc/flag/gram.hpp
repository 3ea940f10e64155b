// Gram matrices of stacks of gradients, and weighted sums of their rows (CPU).
//
// gram_cpu
//   rows : b * p pointers (T = float or double); rows[q * p + i] points at the n contiguous
//          elements of worker i of problem q.                                   // [B*P] -> [N]
//   out  : b * p * p doubles, out[q*p*p + i*p + j] = sum_k rows[q*p+i][k] * rows[q*p+j][k],
//          both triangles filled.                                               // [B, P, P]
//   Every input element is read once from memory: columns are processed in cache-sized chunks
//   and every pair of rows is formed from the chunk while it is in cache. float64 input: products
//   and sums in float64. float32 input: products and partial sums over at most 128 vector steps
//   (the register kernels of small p; 512 columns in the packed kernels) in float32, reduced in
//   float64 (the relative error of an entry stays near 1e-6 of the sum of |products|; on CPUs
//   with AMX-BF16, from p = 56, the products are formed from three
//   bfloat16 parts per value on AMX tiles, in the same accuracy class: gram_amx.hpp); a row
//   whose float32 diagonal is not finite (NaN/Inf data, or values so large that float32
//   products overflow) is recomputed against every row in float64, so only real NaN/Inf data
//   yields a non-finite diagonal. The columns of each problem are cut into a number of parts
//   that depends on n only, and the parts are added in order, so the result does not depend on
//   the thread count.
//
// weighted_sum_cpu
//   coef : b * p doubles                                                        // [B, P]
//   out  : b * n values of type T, out[q*n + k] = sum_i coef[q*p+i] * rows[q*p+i][k],
//          accumulated in float64. Rows whose coefficient is exactly 0 are not read, so a
//          worker excluded for NaN/Inf (coefficient 0) cannot poison the sum.  // [B, N]
#pragma once
#include <cstdint>
#include <string>

namespace flagcore {

template <typename T>
void gram_cpu(const T* const* rows, int64_t b, int64_t p, int64_t n, double* out);

template <typename T>
void weighted_sum_cpu(const T* const* rows, const double* coef, int64_t b, int64_t p, int64_t n, T* out);

// Tests: the packed kernels' shared-slice driver (gram_cpu.cpp, gram_packed_shared; the AVX-512
// kernel's from p = 512) for the AVX2 kernel too, so that CPUs without AVX-512 test that driver.
// mode "auto" (each kernel its own driver) or "on". The results are the same bits either way
// only within a driver: the two drivers sum in different orders.
void set_gram_packed_shared(const std::string& mode);

// The per-instruction-set micro-kernels.
//   gram_accumulate: acc (p x p, row-major) += X[:, k0:k1] X[:, k0:k1]^T on the upper triangle
//     (i <= j; entries below the diagonal are scratch). float64 inputs: float64 products and
//     sums; float32 inputs: float32 products summed in float32 over at most 128 vector steps,
//     then in float64.
// (FA's weighted sum runs on the row-sum kernel of rules/coordinate.hpp, sum_rows.)
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
