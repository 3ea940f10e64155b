// Inner products of each gradient with a float64 reference vector (the server's gradient of
// FLTrust, centered clipping's reference outside the data's dtype), CPU.
#pragma once
#include <cstdint>

namespace flagcore {

// For every problem q and row i of rows (b * p pointers to n values of T, problem q's rows at
// q * p): cross[q * p + i] = sum_k x[k] ref[q * n + k], sq[q * p + i] = sum_k x[k]^2 (sq may be
// null), r2[q] = sum_k ref[q * n + k]^2, products and sums in float64. Columns are cut in blocks
// of a fixed width; within a block each sum runs in 16 interleaved lanes (column k in lane k % 16),
// added in a fixed order at the block's end, and the blocks are added in order: the result
// depends on n only, never on the thread count or the instruction set. NaN / Inf values propagate as in any
// sum. ref == nullptr: the squares only (cross and r2 are not written; sq must be given). Ctrl-C is checked
// once per block.
template <typename T>
void reference_products_cpu(const T* const* rows, const double* ref, int64_t b, int64_t p, int64_t n,
                            double* cross, double* r2, double* sq);

// Per-instruction-set block kernels (rules/reference_kernel_impl.hpp): columns [k0, k1) of the
// p rows; o[i] = x_i . v (v not null), o[p + i] = x_i . x_i (sq, or v null), o[2p] = v . v (v
// not null), each over the block in 16 interleaved lanes added in a fixed tree.
#define FLAGCORE_REFERENCE_DECL(NS)                                                                   \
  namespace NS {                                                                                      \
  void reference_block(const float* const* rows, int64_t p, int64_t i0, int64_t i1, const double* v,  \
                       int64_t k0, int64_t k1, bool sq, double* o);                                   \
  void reference_block(const double* const* rows, int64_t p, int64_t i0, int64_t i1, const double* v, \
                       int64_t k0, int64_t k1, bool sq, double* o);                                   \
  }
FLAGCORE_REFERENCE_DECL(simd_generic)
FLAGCORE_REFERENCE_DECL(simd_avx2)
FLAGCORE_REFERENCE_DECL(simd_avx512)
#undef FLAGCORE_REFERENCE_DECL

}  // namespace flagcore
