// Compiled with -mavx512f -mavx512dq; used only when the CPU reports both.
#define FLAGCORE_SIMD_NS simd_avx512
#define FLAGCORE_VLEN 8
#define FLAGCORE_TILE 4
#include "flag/gram_kernel_impl.hpp"
