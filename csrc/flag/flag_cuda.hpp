// The Flag Aggregator on a CUDA GPU: raw device pointers, sizes and a stream (a cudaStream_t
// passed as an integer); no framework headers. The caller (Python, through bindings.cpp)
// validates, allocates the output and ONE workspace of plan.bytes (flag_plan.hpp) on the device,
// and passes torch's current stream. Nothing here synchronises with the host.
//
// Inputs (DeviceProblems): b problems, problem q = p_q rows of n_q elements of one dtype
// (float32, float16 or bfloat16), each row contiguous, living on the current device:
//   uniform (table == nullptr): row i of problem q at base + q*stride_b + i*stride_p elements
//                                                                          // [B, P, N], strided
//   ragged: table = device int64 [b * kMetaCols meta | sum_q p_q row addresses]
//                                                                          // [B*7 + R]
// Outputs
//   out   : aggregates in the input dtype, problem q at q*n (uniform) or col_off_q  // [B, N] / [sum n]
//   ws    : plan.bytes; after the call it holds the Gram matrices and every IRLS output at
//           the plan's offsets (coef/weights/ratios/excluded per worker, objective/iterations/
//           rejected/rank per problem), read by Python only when return_info asks for them.
// Steps, all on `stream`:
//   gram_cuda         (b, p, n) -> float64 (b, p, p): float32 products summed in float32 over at
//                     most 32 columns, then float64 (warp reduce-scatter, block sum, part sum in a
//                     fixed order): deterministic, every input element read once from memory.
//                     p <= 8: all pairs in registers per thread; 8 < p <= 16 with 16-byte
//                     aligned rows: one block per part, the rows streamed through shared memory
//                     (cp.async) to three warp groups, one per tile pair ("staged"); otherwise
//                     8 x 8 tile pairs per block (the rows of a part re-read from L2, once from DRAM).
//                     Pinned only (kernel = blocked, any p; not yet run on a GPU): 64 x 64 tile
//                     pairs, 32-column slabs through shared memory, 4 x 4 register tiles.
//                     Rows whose float32 diagonal is not finite are recomputed in float64.
//   flag_irls_cuda    p <= 32 (kJacobiMaxP): one block per problem runs flag_irls (flag_irls.hpp,
//                     the CPU's code, Jacobi) with its scratch in shared memory; above, the Gram
//                     matrices go to the host and the CPU's LAPACK path runs there (one stream
//                     synchronisation; the outputs are copied back into ws). float64; no FMA contraction,
//                     so it matches the CPU bitwise where the host does not contract either.
//   weighted_sum_cuda agg = X^T c, float64 accumulation, rows with coefficient 0 are not read.
#pragma once
#include <cstdint>

#include "cuda/dtype.hpp"
#include "flag/flag_irls.hpp"
#include "flag/flag_plan.hpp"

namespace flagcore {
namespace cuda {

struct DeviceProblems {
  int64_t b = 0;
  const void* base = nullptr;  // uniform
  int64_t stride_b = 0, stride_p = 0, p = 0, n = 0;
  const int64_t* table = nullptr;  // ragged
  int64_t p_max = 0, rows = 0, parts = 0;
  bool aligned16 = false;  // every row starts on a 16-byte boundary
};

// Each launcher checks its launch (FLAGCORE_CUDA_CHECK_LAUNCH) and returns early on empty input.
// dtype: float32, float16 or bfloat16 (dtype.hpp); kernel: automatic, or the register kernel
// (p <= 8 only) or the tile-pair kernel pinned (tests).
void gram_cuda(const DeviceProblems& d, DType dtype, const FlagCudaPlan& plan, double* partials, double* gram,
               std::uintptr_t stream, GramKernel kernel = GramKernel::automatic);
void flag_irls_cuda(const double* gram, const DeviceProblems& d, const FlagCudaPlan& plan,
                    const FlagParams& prm, unsigned char* ws, std::uintptr_t stream);
void weighted_sum_cuda(const DeviceProblems& d, DType dtype, const double* coef, void* out,
                       std::uintptr_t stream);

// All three on one workspace laid out by `plan`; `device` is the CUDA device of the data (made
// current for the call and restored after).
void flag_aggregate_cuda(const DeviceProblems& d, DType dtype, const FlagCudaPlan& plan,
                         const FlagParams& prm, void* out, unsigned char* ws, std::uintptr_t stream,
                         int device, GramKernel kernel = GramKernel::automatic);

// flag_irls_cuda alone on b Gram matrices of p x p already on the device (tests): outputs at
// the plan's offsets in ws (plan = flag_cuda_plan_uniform(b, p, 0, max_iter)).
void flag_irls_only_cuda(const double* gram, int64_t b, int64_t p, const FlagCudaPlan& plan,
                         const FlagParams& prm, unsigned char* ws, std::uintptr_t stream, int device);

}  // namespace cuda
}  // namespace flagcore
