// Portable variant (SSE2 on x86-64).
#define FLAGCORE_SIMD_NS simd_generic
#define FLAGCORE_VEC_BYTES 16
#include "common/symv_kernel_impl.hpp"
#include "rules/coordinate_kernel_impl.hpp"
