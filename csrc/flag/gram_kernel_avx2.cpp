// Compiled with -mavx2 -mfma; used only when the CPU reports both.
#define FLAGCORE_SIMD_NS simd_avx2
#define FLAGCORE_VLEN 4
#define FLAGCORE_TILE 3
#include "flag/gram_kernel_impl.hpp"
