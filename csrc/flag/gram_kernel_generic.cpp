// Portable variant (SSE2 on x86-64, NEON-width vectors elsewhere).
#define FLAGCORE_SIMD_NS simd_generic
#define FLAGCORE_VLEN 2
#define FLAGCORE_TILE 3
#include "flag/gram_kernel_impl.hpp"
