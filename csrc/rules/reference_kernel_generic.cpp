// Portable variant (SSE2 on x86-64), compiled with -ffp-contract=off.
#define FLAGCORE_SIMD_NS simd_generic
#define FLAGCORE_VEC_BYTES 16
#include "rules/reference_kernel_impl.hpp"
