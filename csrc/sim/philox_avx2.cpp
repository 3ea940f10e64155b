// Compiled with -mavx2; used only when the CPU reports it (philox_simd.hpp).
#include <immintrin.h>

#include "sim/philox_simd.hpp"

namespace flagcore {
namespace sim {
namespace simd_avx2 {

void philox_batch(const uint32_t key[2], uint64_t stream, uint64_t block, uint64_t* out) {
  constexpr int kRegs = 8;  // ymm registers in flight, two blocks each
  const __m256i mul =
      _mm256_set_epi32(0, int(0xCD9E8D57u), 0, int(0xD2511F53u), 0, int(0xCD9E8D57u), 0, int(0xD2511F53u));
  __m256i rk[10];
  uint32_t k0 = key[0], k1 = key[1];
  for (int r = 0; r < 10; ++r) {
    if (r > 0) {
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    rk[r] = _mm256_set_epi32(0, int(k1), 0, int(k0), 0, int(k1), 0, int(k0));
  }
  const int s0 = int(uint32_t(stream)), s1 = int(uint32_t(stream >> 32));
  for (int g = 0; g < kPhiloxBatch; g += 2 * kRegs) {
    __m256i x[kRegs];
    for (int i = 0; i < kRegs; ++i) {
      const uint64_t a = block + uint64_t(g + 2 * i), b = a + 1;
      x[i] = _mm256_set_epi32(s1, s0, int(uint32_t(b >> 32)), int(uint32_t(b)), s1, s0,
                              int(uint32_t(a >> 32)), int(uint32_t(a)));
    }
    for (int r = 0; r < 10; ++r)
      for (int i = 0; i < kRegs; ++i) {
        const __m256i p = _mm256_mul_epu32(x[i], mul);     // [lo0, hi0, lo1, hi1] per block
        const __m256i sw = _mm256_shuffle_epi32(p, 0x1B);  // [hi1, lo1, hi0, lo0]
        x[i] = _mm256_xor_si256(_mm256_xor_si256(sw, _mm256_srli_epi64(x[i], 32)), rk[r]);
      }
    for (int i = 0; i < kRegs; ++i)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 2 * (g + 2 * i)), x[i]);
  }
}

}  // namespace simd_avx2
}  // namespace sim
}  // namespace flagcore
