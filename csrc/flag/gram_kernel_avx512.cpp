// Compiled with -mavx512f -mavx512dq -mavx512vl; used only when the CPU reports all three.
// float64 input: 256-bit vectors with AVX-512VL's 32 registers, a 4 x 4 tile (16 accumulators +
// 8 operands) without spills (measured on an AMD EPYC (Zen 4), p = 15, n = 1e6, one thread:
// 5.6 ms, against 6.2 ms for the AVX2 build and 9.0 ms with 512-bit vectors).
// float32 input (the common case): 512-bit vectors of 16 floats and a 5 x 5 tile (25
// accumulators + 5 operands + 1): half the instructions of 256-bit vectors, which the
// compute-heavier p ~ 30 Gram needs to stay at memory speed.
#define FLAGCORE_SIMD_NS simd_avx512
#define FLAGCORE_VLEN 4
#define FLAGCORE_TILE 4
#define FLAGCORE_VF32 16
#define FLAGCORE_TILE32 5
#include "flag/gram_kernel_impl.hpp"
