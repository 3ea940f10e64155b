// Compiled with -mavx2 -mfma; used only when the CPU reports both.
#define FLAGCORE_SIMD_NS simd_avx2
#define FLAGCORE_VEC_BYTES 32
#include "common/symv_kernel_impl.hpp"
#include "rules/coordinate_kernel_impl.hpp"
