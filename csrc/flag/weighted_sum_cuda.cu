// agg = X^T c on the GPU: one block per part of kGramPartColumns columns of one problem (the
// Gram's decomposition), 16-byte loads when every row is aligned (issued kBatch rows at a time,
// the rows of two steps ahead prefetched into L2), float64 accumulation in the rows' order,
// output in the input dtype. A row whose coefficient is exactly 0 (an excluded NaN/Inf worker) is not
// read; the branch is uniform across the block.
#include "flag/flag_cuda_common.cuh"

namespace flagcore {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kBatch = 8;  // rows whose loads are issued together before their FMAs

// The coefficients in shared memory are padded with zeros to a multiple of kBatch: the batched
// loop reads whole batches (compute-sanitizer's memcheck caught the compiler widening the old
// per-row loop's reads of s_coef[i] past p, e.g. 16 bytes at p = 5).
__host__ __device__ constexpr int64_t coef_slots(int64_t p) { return (p + kBatch - 1) / kBatch * kBatch; }

__device__ __forceinline__ void prefetch_l2(const void* p) {
  asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    weighted_sum_kernel(DeviceProblems d, const double* __restrict__ coef /* [sum p] */,
                        T* __restrict__ out /* [sum n] */) {
  extern __shared__ double s_coef[];  // [coef_slots(p_max)]
  constexpr int VEC = 16 / sizeof(T);
  const int64_t part = blockIdx.x;
  const Problem pr = problem_at(d, problem_of_part(d, part));
  const int64_t p = pr.p, slots = coef_slots(p);
  for (int64_t i = threadIdx.x; i < slots; i += kThreads) s_coef[i] = i < p ? coef[pr.row_off + i] : 0.0;
  __syncthreads();
  const int64_t k0 = (part - pr.part_off) * kGramPartColumns;
  const int64_t k1 = min(pr.n, k0 + kGramPartColumns);
  T* o = out + pr.col_off;
  const bool vec = d.aligned16 && (reinterpret_cast<uintptr_t>(o) % 16 == 0);
  int64_t ks = k0;
  if (vec) {
    const int64_t kv1 = k0 + (k1 - k0) / VEC * VEC;
    constexpr int64_t step = int64_t(kThreads) * VEC;
    for (int64_t k = k0 + int64_t(threadIdx.x) * VEC; k < kv1; k += step) {
      double acc[VEC];
#pragma unroll
      for (int c = 0; c < VEC; ++c) acc[c] = 0.0;
      const int64_t kp = k + 2 * step;  // the rows of two steps ahead, into L2
      for (int64_t i0 = 0; i0 < p; i0 += kBatch) {
        uint4 v[kBatch];
        double cb[kBatch];
#pragma unroll
        for (int u = 0; u < kBatch; ++u) {
          cb[u] = s_coef[i0 + u];  // 0 past p (padding) and for excluded rows: not read
          v[u] = make_uint4(0u, 0u, 0u, 0u);
          if (cb[u] != 0.0) {
            const T* r = row_ptr<T>(d, pr, i0 + u);
            v[u] = load16(r + k);
            if (kp < kv1) prefetch_l2(r + kp);
          }
        }
#pragma unroll
        for (int u = 0; u < kBatch; ++u) {
          if (cb[u] == 0.0) continue;  // the rows' order, and so the sums, as before
#pragma unroll
          for (int c = 0; c < VEC; ++c) acc[c] += cb[u] * static_cast<double>(vec_elem<T>(v[u], c));
        }
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
