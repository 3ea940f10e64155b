// Compiled with -mavx512f -mavx512dq -ffp-contract=off; used only when the CPU reports both.
#define FLAGCORE_SIMD_NS simd_avx512
#define FLAGCORE_VEC_BYTES 64
#include "rules/reference_kernel_impl.hpp"
