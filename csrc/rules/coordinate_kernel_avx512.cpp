// Compiled with -mavx512f -mavx512dq; used only when the CPU reports both.
#define FLAGCORE_SIMD_NS simd_avx512
#define FLAGCORE_VEC_BYTES 64
#include "common/symv_kernel_impl.hpp"
#include "rules/coordinate_kernel_impl.hpp"
