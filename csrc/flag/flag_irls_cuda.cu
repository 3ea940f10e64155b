// The IRLS of the Flag Aggregator on the GPU: one block per problem runs flag_irls from
// flag_irls.hpp, the code the CPU runs, with the block as its team. Compiled with --fmad=false
// (CMakeLists.txt) so that no multiply-add is fused: with IEEE division and square root (the
// CUDA defaults) each operation rounds as on the host, and the result matches the CPU's
// bitwise on hosts that do not contract either (x86-64 without -mfma, our CPU build).
#include <cstring>
#include <vector>

#include "flag/flag_cpu.hpp"
#include "flag/flag_cuda_common.cuh"

namespace flagcore {
namespace cuda {
namespace {

struct BlockTeam {
  static constexpr bool host_blas = false;
  FLAGCORE_HD void poll() const {}
  FLAGCORE_HD int rank() const {
#ifdef __CUDA_ARCH__
    return static_cast<int>(threadIdx.x);
#else
    return 0;
#endif
  }
  FLAGCORE_HD int size() const {
#ifdef __CUDA_ARCH__
    return static_cast<int>(blockDim.x);
#else
    return 1;
#endif
  }
  FLAGCORE_HD void sync() const {
#ifdef __CUDA_ARCH__
    __syncthreads();
#endif
  }
};

struct IrlsOutputs {
  double *coef, *weights, *ratios, *objective;
  uint8_t *excluded, *rejected;
  int32_t *iterations, *rank;
};

__global__ void __launch_bounds__(512)
    flag_irls_kernel(DeviceProblems d, const double* __restrict__ gram /* [sum p^2] */, FlagParams prm,
                     IrlsOutputs o, double* __restrict__ gws /* [B, ws_each] or null */, int64_t ws_each,
                     bool use_smem, int64_t steps) {
  extern __shared__ double smem[];
  const Problem pr = problem_at(d, blockIdx.x);
  double* work = use_smem ? smem : gws + int64_t(blockIdx.x) * ws_each;
  const int64_t q = pr.q;
  FlagIrlsOut out{o.coef + pr.row_off,
                  o.weights + pr.row_off,
                  o.ratios + pr.row_off,
                  o.objective + q * steps,
                  o.excluded + pr.row_off,
                  o.iterations + q,
                  o.rejected + q,
                  o.rank + q,
                  steps};
  flag_irls(BlockTeam{}, gram + pr.gram_off, static_cast<int>(pr.p), prm, work, out);
}

IrlsOutputs outputs(const FlagCudaPlan& plan, unsigned char* ws) {
  IrlsOutputs o;
  o.coef = reinterpret_cast<double*>(ws + plan.off_coef);
  o.weights = reinterpret_cast<double*>(ws + plan.off_weights);
  o.ratios = reinterpret_cast<double*>(ws + plan.off_ratios);
  o.objective = reinterpret_cast<double*>(ws + plan.off_objective);
  o.excluded = ws + plan.off_excluded;
  o.rejected = ws + plan.off_rejected;
  o.iterations = reinterpret_cast<int32_t*>(ws + plan.off_iterations);
  o.rank = reinterpret_cast<int32_t*>(ws + plan.off_rank);
  return o;
}

// Above kJacobiMaxP the p x p work is O(p^3) per step and a single block would take seconds: the
// Gram matrices (b p^2 doubles, tiny next to the data) go to the host, the host LAPACK path runs
// there (the CPU's code, so the results are the CPU's), and the outputs come back into ws. This
// synchronises the stream once.
void flag_irls_on_host(const double* gram, const DeviceProblems& d, const FlagCudaPlan& plan,
                       const FlagParams& prm, unsigned char* ws, cudaStream_t st) {
  const int64_t b = d.b;
  std::vector<int64_t> ps(b), gram_off(b), row_off(b);
  if (d.table == nullptr) {
    for (int64_t q = 0; q < b; ++q) {
      ps[q] = d.p;
      gram_off[q] = q * d.p * d.p;
      row_off[q] = q * d.p;
    }
  } else {
    std::vector<int64_t> meta(static_cast<size_t>(b * kMetaCols));
    FLAGCORE_CUDA_CHECK(
        cudaMemcpyAsync(meta.data(), d.table, meta.size() * sizeof(int64_t), cudaMemcpyDeviceToHost, st));
    FLAGCORE_CUDA_CHECK(cudaStreamSynchronize(st));
    for (int64_t q = 0; q < b; ++q) {
      ps[q] = meta[q * kMetaCols + 0];
      row_off[q] = meta[q * kMetaCols + 2];
      gram_off[q] = meta[q * kMetaCols + 3];
    }
  }
  std::vector<double> g(static_cast<size_t>(plan.gram));
  FLAGCORE_CUDA_CHECK(cudaMemcpyAsync(g.data(), gram, g.size() * sizeof(double), cudaMemcpyDeviceToHost, st));
  FLAGCORE_CUDA_CHECK(cudaStreamSynchronize(st));
  // the outputs' part of ws (off_coef .. bytes), laid out as on the device
  std::vector<unsigned char> host(static_cast<size_t>(plan.bytes - plan.off_coef));
  unsigned char* h = host.data() - plan.off_coef;
  FlagIrlsOut base{reinterpret_cast<double*>(h + plan.off_coef),
                   reinterpret_cast<double*>(h + plan.off_weights),
                   reinterpret_cast<double*>(h + plan.off_ratios),
                   reinterpret_cast<double*>(h + plan.off_objective),
                   h + plan.off_excluded,
                   reinterpret_cast<int32_t*>(h + plan.off_iterations),
                   h + plan.off_rejected,
                   reinterpret_cast<int32_t*>(h + plan.off_rank),
                   plan.objective_steps};
  flag_irls_planned_cpu(g.data(), b, ps.data(), gram_off.data(), row_off.data(), prm, base,
                        plan.objective_steps);
  FLAGCORE_CUDA_CHECK(
      cudaMemcpyAsync(ws + plan.off_coef, host.data(), host.size(), cudaMemcpyHostToDevice, st));
  FLAGCORE_CUDA_CHECK(cudaStreamSynchronize(st));  // `host` is freed on return
}

}  // namespace

void flag_irls_cuda(const double* gram, const DeviceProblems& d, const FlagCudaPlan& plan,
                    const FlagParams& prm, unsigned char* ws, std::uintptr_t stream) {
  if (d.b <= 0) return;
  FLAGCORE_CHECK_ARG(prm.r >= 1 && prm.r <= plan.p_min,
                     "flag_irls_cuda: r must be in [1, " << plan.p_min << "], got " << prm.r);
  FLAGCORE_CHECK_ARG(prm.max_iter >= 1, "flag_irls_cuda: max_iter must be >= 1, got " << prm.max_iter);
  FLAGCORE_CHECK_ARG(d.b <= 2147483647LL, "flag_irls_cuda: batch too large");
  const cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  if (plan.irls_on_host) return flag_irls_on_host(gram, d, plan, prm, ws, st);
  // NaN padding of the objective history (all-ones bytes are a NaN double)
  FLAGCORE_CUDA_CHECK(cudaMemsetAsync(ws + plan.off_objective, 0xFF,
                                      static_cast<size_t>(plan.b * plan.objective_steps) * sizeof(double),
                                      st));
  const int threads = irls_threads(plan.p_max);
  size_t smem = 0;
  double* gws = nullptr;
  if (plan.irls_smem) {
    smem = static_cast<size_t>(plan.irls_ws_each) * sizeof(double);
    int dev = 0, optin = 0;
    FLAGCORE_CUDA_CHECK(cudaGetDevice(&dev));
    FLAGCORE_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    FLAGCORE_CHECK_STATE(
        smem <= static_cast<size_t>(optin),
        "flag_irls_cuda: needs " << smem << " bytes of shared memory per block, the device allows " << optin);
    if (smem > 48 * 1024)
      FLAGCORE_CUDA_CHECK(cudaFuncSetAttribute(flag_irls_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               static_cast<int>(smem)));
  } else {
    gws = reinterpret_cast<double*>(ws + plan.off_irls);
  }
  flag_irls_kernel<<<static_cast<unsigned>(d.b), threads, smem, st>>>(
      d, gram, prm, outputs(plan, ws), gws, plan.irls_ws_each, plan.irls_smem, plan.objective_steps);
  FLAGCORE_CUDA_CHECK_LAUNCH();
}

void flag_irls_only_cuda(const double* gram, int64_t b, int64_t p, const FlagCudaPlan& plan,
                         const FlagParams& prm, unsigned char* ws, std::uintptr_t stream, int device) {
  DeviceGuard guard(device);
  DeviceProblems d;
  d.b = b;
  d.p = d.p_max = p;
  d.n = 0;
  d.rows = b * p;
  flag_irls_cuda(gram, d, plan, prm, ws, stream);
}

}  // namespace cuda
}  // namespace flagcore
