#include "cuda/check_cuda.hpp"
#include "rules/coordinate_cuda.hpp"

namespace flagcore {
namespace cuda {
namespace {

template <typename T>
__global__ void coordinate_kernel(const T* __restrict__ x,  // [B, P, N] (strided)
                                  int64_t p, int64_t n, int64_t stride_b, int64_t stride_p, CoordSpec spec,
                                  T* __restrict__ out,                       // [B, N]
                                  const uint32_t* __restrict__ active_mask,  // [B]
                                  int32_t* __restrict__ flags) {             // [B, P]
  const int64_t q = blockIdx.y;
  const uint32_t mask = active_mask[q];
  const int pe = __popc(mask);
  const CoordCounts c = coord_counts(spec, p, pe);
  const T* xq = x + q * stride_b;
  T v[kCoordMaxP];
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < n;
       k += int64_t(gridDim.x) * blockDim.x) {
    int m = 0;
    for (int i = 0; i < p; ++i) {
      if (!(mask >> i & 1u)) continue;
      const T val = xq[i * stride_p + k];
      if (!isfinite(val) && flags[q * p + i] == 0) flags[q * p + i] = 1;
      // insertion into the sorted prefix v[0..m)
      int j = m++;
      while (j > 0 && v[j - 1] > val) {
        v[j] = v[j - 1];
        --j;
      }
      v[j] = val;
    }
    out[q * n + k] = static_cast<T>(reduce_sorted(v, 1, spec.rule, c));
  }
}

}  // namespace

template <typename T>
void coordinate_cuda(const T* x, int64_t b, int64_t p, int64_t n, int64_t stride_b, int64_t stride_p,
                     const CoordSpec& spec, T* out, const uint32_t* active_mask, int32_t* flags,
                     std::uintptr_t stream) {
  if (b <= 0 || n <= 0) return;
  const int threads = 256;
  const int64_t want = (n + threads - 1) / threads;
  const dim3 grid(static_cast<unsigned>(want < 8192 ? want : 8192), static_cast<unsigned>(b));
  coordinate_kernel<T><<<grid, threads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
      x, p, n, stride_b, stride_p, spec, out, active_mask, flags);
  FLAGCORE_CUDA_CHECK_LAUNCH();
}

template void coordinate_cuda<float>(const float*, int64_t, int64_t, int64_t, int64_t, int64_t,
                                     const CoordSpec&, float*, const uint32_t*, int32_t*, std::uintptr_t);
template void coordinate_cuda<double>(const double*, int64_t, int64_t, int64_t, int64_t, int64_t,
                                      const CoordSpec&, double*, const uint32_t*, int32_t*, std::uintptr_t);

}  // namespace cuda
}  // namespace flagcore
