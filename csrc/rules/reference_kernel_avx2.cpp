// Compiled with -mavx2 -mfma -ffp-contract=off; used only when the CPU reports both.
#define FLAGCORE_SIMD_NS simd_avx2
#define FLAGCORE_VEC_BYTES 32
#include "rules/reference_kernel_impl.hpp"
