// CUDA runtime helpers. Compiled only when the build has CUDA (FLAGCORE_WITH_CUDA).
#pragma once
#include <cstdint>

namespace flagcore {
namespace cuda {

// Number of visible CUDA devices; 0 when there is no driver or no device. Never throws.
int device_count() noexcept;

// Launches a trivial kernel (y[i] = a * x[i] + y[i]) on n floats that live on the device, on
// the given stream (a cudaStream_t passed as an integer). Used by the self-test that proves
// the CUDA toolchain, the static runtime and the launch path work on this machine.
void saxpy(float a, const float* x, float* y, int64_t n, std::uintptr_t stream);

// Round trip through the device: copies n floats in, runs saxpy, copies them back. Throws
// std::runtime_error (with file:line and the CUDA error string) on any CUDA failure.
void selftest_saxpy(float a, const float* x_host, float* y_host, int64_t n);

}  // namespace cuda
}  // namespace flagcore
