// FLAGCORE_CUDA_CHECK: throws std::runtime_error with file, line and the CUDA error string.
#pragma once
#include <cuda_runtime.h>

#include <sstream>
#include <stdexcept>

#define FLAGCORE_CUDA_CHECK(expr)                                                                       \
  do {                                                                                                  \
    cudaError_t flagcore_err_ = (expr);                                                                 \
    if (flagcore_err_ != cudaSuccess) {                                                                 \
      std::ostringstream flagcore_os_;                                                                  \
      flagcore_os_ << __FILE__ << ":" << __LINE__ << ": CUDA error " << cudaGetErrorName(flagcore_err_) \
                   << ": " << cudaGetErrorString(flagcore_err_) << " in " #expr;                        \
      throw std::runtime_error(flagcore_os_.str());                                                     \
    }                                                                                                   \
  } while (0)

// Checks the launch that was just issued.
#define FLAGCORE_CUDA_CHECK_LAUNCH() FLAGCORE_CUDA_CHECK(cudaGetLastError())
