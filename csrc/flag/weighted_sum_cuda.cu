// agg = X^T c on the GPU: one block per part of kGramPartColumns columns of one problem (the
// Gram's decomposition), 16-byte loads when every row is aligned, float64 accumulation, output
// in the input dtype. A row whose coefficient is exactly 0 (an excluded NaN/Inf worker) is not
// read; the branch is uniform across the block. On an H200 at p = 15, n = 1e8 float32 this
// kernel reads its 6 GB in 1.62 ms (3.7 TB/s). Tried there and not kept: the rows streamed
// through shared memory by cp.async as in the staged Gram kernel (2.41 ms), and 8 rows' loads
// issued together with an L2 prefetch two steps ahead (2.51 ms).
#include "flag/flag_cuda_common.cuh"

namespace flagcore {
namespace cuda {
namespace {

constexpr int kThreads = 256;

// The coefficients in shared memory are padded with zeros to a multiple of 8: compute-sanitizer's
// memcheck (H200, first run) caught the compiler widening the unrolled reads of s_coef[i] into
// 16-byte loads that passed the end at odd p (e.g. s_coef[4..5] at p = 5).
__host__ __device__ constexpr int64_t coef_slots(int64_t p) {
  return (p + 7) / 8 * 8;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    weighted_sum_kernel(DeviceProblems d, const double* __restrict__ coef /* [sum p] */,
                        T* __restrict__ out /* [sum n] */) {
  extern __shared__ double s_coef[];  // [coef_slots(p_max)]
  constexpr int VEC = 16 / sizeof(T);
  const int64_t part = blockIdx.x;
  const Problem pr = problem_at(d, problem_of_part(d, part));
  const int64_t p = pr.p;
  for (int64_t i = threadIdx.x; i < coef_slots(p); i += kThreads)
    s_coef[i] = i < p ? coef[pr.row_off + i] : 0.0;
  __syncthreads();
  const int64_t k0 = (part - pr.part_off) * kGramPartColumns;
  const int64_t k1 = min(pr.n, k0 + kGramPartColumns);
  T* o = out + pr.col_off;
  const bool vec = d.aligned16 && (reinterpret_cast<uintptr_t>(o) % 16 == 0);
  int64_t ks = k0;
  if (vec) {
    const int64_t kv1 = k0 + (k1 - k0) / VEC * VEC;
    for (int64_t k = k0 + int64_t(threadIdx.x) * VEC; k < kv1; k += int64_t(kThreads) * VEC) {
      double acc[VEC];
#pragma unroll
      for (int c = 0; c < VEC; ++c) acc[c] = 0.0;
#pragma unroll 4
      for (int64_t i = 0; i < p; ++i) {
        const double ci = s_coef[i];
        if (ci == 0.0) continue;
        const uint4 v = load16(row_ptr<T>(d, pr, i) + k);
#pragma unroll
        for (int c = 0; c < VEC; ++c) acc[c] += ci * static_cast<double>(vec_elem<T>(v, c));
      }
      alignas(16) T res[VEC];
#pragma unroll
      for (int c = 0; c < VEC; ++c) res[c] = from_double<T>(acc[c]);
      *reinterpret_cast<uint4*>(o + k) = *reinterpret_cast<const uint4*>(res);
    }
    ks = kv1;
  }
  for (int64_t k = ks + threadIdx.x; k < k1; k += kThreads) {
    double acc = 0.0;
    for (int64_t i = 0; i < p; ++i) {
      const double ci = s_coef[i];
      if (ci == 0.0) continue;
      acc += ci * static_cast<double>(to_float<T>(row_ptr<T>(d, pr, i)[k]));
    }
    o[k] = from_double<T>(acc);
  }
}

template <typename T>
void launch(const DeviceProblems& d, const double* coef, void* out, cudaStream_t st) {
  const size_t smem = static_cast<size_t>(coef_slots(d.p_max)) * sizeof(double);
  weighted_sum_kernel<T>
      <<<static_cast<unsigned>(d.parts), kThreads, smem, st>>>(d, coef, static_cast<T*>(out));
  FLAGCORE_CUDA_CHECK_LAUNCH();
}

}  // namespace

void weighted_sum_cuda(const DeviceProblems& d, DType dtype, const double* coef, void* out,
                       std::uintptr_t stream) {
  if (d.b <= 0 || d.parts <= 0) return;
  FLAGCORE_CHECK_ARG(d.parts <= 2147483647LL, "weighted_sum_cuda: too many parts");
  FLAGCORE_CHECK_ARG(coef_slots(d.p_max) * 8 <= 48 * 1024,
                     "weighted_sum_cuda: p must be at most 6144, got " << d.p_max);
  const cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::float32:
      launch<float>(d, coef, out, st);
      break;
    case DType::float16:
      launch<__half>(d, coef, out, st);
      break;
    case DType::bfloat16:
      launch<__nv_bfloat16>(d, coef, out, st);
      break;
    default:
      FLAGCORE_CHECK_ARG(
          false, "weighted_sum_cuda: dtype must be float32, float16 or bfloat16, got " << dtype_name(dtype));
  }
}

void flag_aggregate_cuda(const DeviceProblems& d, DType dtype, const FlagCudaPlan& plan,
                         const FlagParams& prm, void* out, unsigned char* ws, std::uintptr_t stream,
                         int device, GramKernel kernel) {
  if (d.b <= 0) return;
  DeviceGuard guard(device);
  double* gram = reinterpret_cast<double*>(ws + plan.off_gram);
  double* partials = reinterpret_cast<double*>(ws + plan.off_partials);
  gram_cuda(d, dtype, plan, partials, gram, stream, kernel);
  flag_irls_cuda(gram, d, plan, prm, ws, stream);
  weighted_sum_cuda(d, dtype, reinterpret_cast<const double*>(ws + plan.off_coef), out, stream);
}

}  // namespace cuda
}  // namespace flagcore
