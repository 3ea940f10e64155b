// Philox4x32-10 blocks in batches with AVX2 (run-time dispatch: the kernel lives in its own
// translation unit compiled with -mavx2; rng.hpp picks it per Rng where the CPU has AVX2).
//
// Layout: one 128-bit lane holds one block's counter words [c0, c1, c2, c3]; a round is one
// 32x32->64 multiply of lanes 0 and 2 (vpmuludq), a word shuffle that puts [hi1, lo1, hi0, lo0]
// in place, and the xors with [c1, -, c3, -] and the round key. Stored as 64-bit words the lane
// is (c1:c0, c3:c2): exactly Rng's buffer order. Integer arithmetic only, so every kernel gives
// the same words as the portable loop in rng.hpp (tests/test_energy_simd.py checks this).
#pragma once
#include <cstdint>

namespace flagcore {
namespace sim {

constexpr int kPhiloxBatch = 32;  // blocks per call (64 words)

// out[2b], out[2b + 1] = the words of block (block + b, stream) under key, b < kPhiloxBatch.
using PhiloxBatchFn = void (*)(const uint32_t key[2], uint64_t stream, uint64_t block, uint64_t* out);

namespace simd_avx2 {
void philox_batch(const uint32_t key[2], uint64_t stream, uint64_t block, uint64_t* out);
}

// The kernel for the current simd_level() (null: the portable loop; forkjoin_sim.cpp).
PhiloxBatchFn philox_batch_kernel();

}  // namespace sim
}  // namespace flagcore
