#include "cuda/check_cuda.hpp"
#include "cuda/device.hpp"

namespace flagcore {
namespace cuda {
namespace {

__global__ void saxpy_kernel(float a, const float* __restrict__ x,  // [N]
                             float* __restrict__ y,                 // [N]
                             int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    y[i] = a * x[i] + y[i];
}

}  // namespace

int device_count() noexcept {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error so later calls are not affected
    return 0;
  }
  return count;
}

void saxpy(float a, const float* x, float* y, int64_t n, std::uintptr_t stream) {
  if (n <= 0) return;
  const int threads = 256;
  const int64_t want = (n + threads - 1) / threads;
  const int blocks = static_cast<int>(want < 65535 ? want : 65535);
  saxpy_kernel<<<blocks, threads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(a, x, y, n);
  FLAGCORE_CUDA_CHECK_LAUNCH();
}

void selftest_saxpy(float a, const float* x_host, float* y_host, int64_t n) {
  if (n <= 0) return;
  float *dx = nullptr, *dy = nullptr;
  const size_t bytes = static_cast<size_t>(n) * sizeof(float);
  FLAGCORE_CUDA_CHECK(cudaMalloc(&dx, bytes));
  cudaError_t err = cudaMalloc(&dy, bytes);
  if (err != cudaSuccess) {
    cudaFree(dx);
    FLAGCORE_CUDA_CHECK(err);
  }
  try {
    FLAGCORE_CUDA_CHECK(cudaMemcpy(dx, x_host, bytes, cudaMemcpyHostToDevice));
    FLAGCORE_CUDA_CHECK(cudaMemcpy(dy, y_host, bytes, cudaMemcpyHostToDevice));
    saxpy(a, dx, dy, n, 0);
    FLAGCORE_CUDA_CHECK(cudaMemcpy(y_host, dy, bytes, cudaMemcpyDeviceToHost));
  } catch (...) {
    cudaFree(dx);
    cudaFree(dy);
    throw;
  }
  cudaFree(dx);
  cudaFree(dy);
}

}  // namespace cuda
}  // namespace flagcore
