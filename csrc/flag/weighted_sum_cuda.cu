// agg = X^T c on the GPU: one block per part of kGramPartColumns columns of one problem (the
// Gram's decomposition), 16-byte loads when every row is aligned, float64 accumulation, output
// in the input dtype. For p <= 16 with aligned rows the rows stream through shared memory
// (weighted_sum_staged_kernel), otherwise they are read directly (weighted_sum_kernel). A row whose coefficient is exactly 0 (an excluded NaN/Inf worker) is not
// read; the branch is uniform across the block.
#include <cuda_pipeline.h>

#include "flag/flag_cuda_common.cuh"

namespace flagcore {
namespace cuda {
namespace {

constexpr int kThreads = 256;

// The coefficients in shared memory are padded with zeros to a multiple of 8: compute-sanitizer's
// memcheck (H200, first run) caught the compiler widening the unrolled reads of s_coef[i] into
// 16-byte loads that passed the end at odd p (e.g. s_coef[4..5] at p = 5). A batched variant
// (8 rows' loads issued together, L2 prefetch two steps ahead) was slower there: 2.51 vs ~1.85
// ms at p = 15, n = 1e8 float32.
__host__ __device__ constexpr int64_t coef_slots(int64_t p) { return (p + 7) / 8 * 8; }

template <typename T>
__global__ void __launch_bounds__(kThreads)
    weighted_sum_kernel(DeviceProblems d, const double* __restrict__ coef /* [sum p] */,
                        T* __restrict__ out /* [sum n] */) {
  extern __shared__ double s_coef[];  // [coef_slots(p_max)]
  constexpr int VEC = 16 / sizeof(T);
  const int64_t part = blockIdx.x;
  const Problem pr = problem_at(d, problem_of_part(d, part));
  const int64_t p = pr.p;
  for (int64_t i = threadIdx.x; i < coef_slots(p); i += kThreads) s_coef[i] = i < p ? coef[pr.row_off + i] : 0.0;
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

// ---------------------------------------------------------------- staged (p <= 16, aligned rows)
// One block of kStagedThreads per part; the rows with a nonzero coefficient stream through
// shared memory in stages of one 16-byte vector per thread and row (cp.async, kStages deep), so
// the loads in flight hold no registers and many stages are in flight per SM. The same sums in
// the same order as weighted_sum_kernel (rows in order, float64), so the same bits.
constexpr int kStagedThreads = 128;
constexpr int kStagedRows = 16;
constexpr int kStages = 4;
constexpr int kStageRowBytes = kStagedThreads * 16;
constexpr int kStageBytes = kStagedRows * kStageRowBytes;  // 32 KiB
constexpr size_t kStagedSmem = size_t(kStages) * kStageBytes;

template <typename T>
__global__ void __launch_bounds__(kStagedThreads)
    weighted_sum_staged_kernel(DeviceProblems d, const double* __restrict__ coef /* [sum p] */,
                               T* __restrict__ out /* [sum n] */) {
  constexpr int VEC = 16 / sizeof(T);
  constexpr int64_t W = int64_t(kStagedThreads) * VEC;
  extern __shared__ __align__(16) unsigned char stage_mem[];  // [kStages][kStagedRows][kStageRowBytes]
  __shared__ double s_c[kStagedRows];
  __shared__ const T* s_rows[kStagedRows];
  const int64_t part = blockIdx.x;
  const Problem pr = problem_at(d, problem_of_part(d, part));
  const int64_t p = pr.p;
  const int tid = threadIdx.x;
  if (tid < kStagedRows) {
    const double c = tid < p ? coef[pr.row_off + tid] : 0.0;
    s_c[tid] = c;
    s_rows[tid] = c != 0.0 ? row_ptr<T>(d, pr, tid) : nullptr;  // rows with coefficient 0: not read
  }
  __syncthreads();
  const int64_t k0 = (part - pr.part_off) * kGramPartColumns;
  const int64_t k1 = min(pr.n, k0 + kGramPartColumns);
  const int64_t nst = (k1 - k0) / W;
  T* o = out + pr.col_off;
  const bool vec_out = reinterpret_cast<uintptr_t>(o) % 16 == 0;

  auto issue = [&](int64_t st) {
    if (st < nst) {
      unsigned char* buf = stage_mem + (st % kStages) * kStageBytes + tid * 16;
      const int64_t kb = k0 + st * W + int64_t(tid) * VEC;
#pragma unroll
      for (int r = 0; r < kStagedRows; ++r) {
        const T* row = s_rows[r];
        if (row) __pipeline_memcpy_async(buf + r * kStageRowBytes, row + kb, 16);
      }
    }
    __pipeline_commit();
  };

  for (int st = 0; st < kStages - 1; ++st) issue(st);
  for (int64_t st = 0; st < nst; ++st) {
    issue(st + kStages - 1);
    __pipeline_wait_prior(kStages - 1);  // each thread reads only the vectors it copied: no barrier
    const unsigned char* buf = stage_mem + (st % kStages) * kStageBytes + tid * 16;
    double acc[VEC];
#pragma unroll
    for (int c = 0; c < VEC; ++c) acc[c] = 0.0;
#pragma unroll
    for (int r = 0; r < kStagedRows; ++r) {
      const double cr = s_c[r];
      if (cr == 0.0) continue;
      const uint4 v = *reinterpret_cast<const uint4*>(buf + r * kStageRowBytes);
#pragma unroll
      for (int c = 0; c < VEC; ++c) acc[c] += cr * static_cast<double>(vec_elem<T>(v, c));
    }
    const int64_t k = k0 + st * W + int64_t(tid) * VEC;
    alignas(16) T res[VEC];
#pragma unroll
    for (int c = 0; c < VEC; ++c) res[c] = from_double<T>(acc[c]);
    if (vec_out) {
      *reinterpret_cast<uint4*>(o + k) = *reinterpret_cast<const uint4*>(res);
    } else {
#pragma unroll
      for (int c = 0; c < VEC; ++c) o[k + c] = res[c];
    }
  }
  __pipeline_wait_prior(0);
  for (int64_t k = k0 + nst * W + tid; k < k1; k += kStagedThreads) {
    double acc = 0.0;
    for (int r = 0; r < p; ++r) {
      const double cr = s_c[r];
      if (cr == 0.0) continue;
      acc += cr * static_cast<double>(to_float<T>(s_rows[r][k]));
    }
    o[k] = from_double<T>(acc);
  }
}

template <typename T>
void launch(const DeviceProblems& d, const double* coef, void* out, cudaStream_t st, GramKernel kernel) {
  const bool staged = kernel == GramKernel::staged ||
                      (kernel == GramKernel::automatic && d.p_max <= kStagedRows && d.aligned16);
  if (staged) {
    FLAGCORE_CHECK_ARG(d.p_max <= kStagedRows && d.aligned16,
                       "weighted_sum_cuda: the staged kernel takes p <= 16 with 16-byte aligned rows, got p = "
                           << d.p_max << (d.aligned16 ? "" : " (unaligned rows)"));
    FLAGCORE_CUDA_CHECK(cudaFuncSetAttribute(weighted_sum_staged_kernel<T>,
                                             cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(kStagedSmem)));
    weighted_sum_staged_kernel<T><<<static_cast<unsigned>(d.parts), kStagedThreads, kStagedSmem, st>>>(
        d, coef, static_cast<T*>(out));
  } else {
    const size_t smem = static_cast<size_t>(coef_slots(d.p_max)) * sizeof(double);
    weighted_sum_kernel<T>
        <<<static_cast<unsigned>(d.parts), kThreads, smem, st>>>(d, coef, static_cast<T*>(out));
  }
  FLAGCORE_CUDA_CHECK_LAUNCH();
}

}  // namespace

void weighted_sum_cuda(const DeviceProblems& d, DType dtype, const double* coef, void* out,
                       std::uintptr_t stream, GramKernel kernel) {
  if (d.b <= 0 || d.parts <= 0) return;
  FLAGCORE_CHECK_ARG(d.parts <= 2147483647LL, "weighted_sum_cuda: too many parts");
  FLAGCORE_CHECK_ARG(coef_slots(d.p_max) * 8 <= 48 * 1024,
                     "weighted_sum_cuda: p must be at most 6144, got " << d.p_max);
  const cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::float32:
      launch<float>(d, coef, out, st, kernel);
      break;
    case DType::float16:
      launch<__half>(d, coef, out, st, kernel);
      break;
    case DType::bfloat16:
      launch<__nv_bfloat16>(d, coef, out, st, kernel);
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
  weighted_sum_cuda(d, dtype, reinterpret_cast<const double*>(ws + plan.off_coef), out, stream, kernel);
}

}  // namespace cuda
}  // namespace flagcore
