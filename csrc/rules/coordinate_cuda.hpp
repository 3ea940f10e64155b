// Coordinate-wise rules on the GPU (compiled only with FLAGCORE_WITH_CUDA). Same rules, counts
// and tie conventions as coordinate_cpu (rules/coordinate.hpp): the per-column math is the
// shared reduce_sorted.
//
// coordinate_cuda
//   x           : device pointer; worker i of problem q at x + q*stride_b + i*stride_p, n
//                 contiguous values                                      // [B, P, N] (strided)
//   spec        : rule, f, keep (f_eff = max(f - e, 0), e = p - popcount(active_mask[q]))
//   out         : device, b * n values                                   // [B, N]
//   active_mask : device, b uint64; bit i set = worker i takes part      // [B]
//   flags       : device, b * p int32, set to 1 (never cleared) when an active worker holds
//                 a NaN/Inf; the caller then clears its bit and launches again  // [B, P]
//   stream      : a cudaStream_t passed as an integer (the caller's current stream)
// p <= kCoordMaxP. One thread per column sorts its values in registers (a bitonic network on the
// next power of two, unrolled); reads are coalesced across the threads of a warp.
#pragma once
#include <cstdint>

#include "rules/coordinate.hpp"

namespace flagcore {
namespace cuda {

constexpr int kCoordMaxP = 64;

template <typename T>
void coordinate_cuda(const T* x, int64_t b, int64_t p, int64_t n, int64_t stride_b, int64_t stride_p,
                     const CoordSpec& spec, T* out, const uint64_t* active_mask, int32_t* flags,
                     std::uintptr_t stream);

}  // namespace cuda
}  // namespace flagcore
