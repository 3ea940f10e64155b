// Random numbers for the fork-join simulator, identical on every IEEE-754 machine.
//
// Generator: Philox4x32-10 (Salmon et al., SC'11), counter-based. The 64-bit seed is the key and
// the counter is (block index, stream), so replication r of seed s reads stream r: independent
// streams by construction, and no state to split or jump.
//
// Samplers are our own (no std:: distributions, whose algorithms differ between standard
// libraries), and so are log and exp: ports of fdlibm's __ieee754_log / __ieee754_exp that use
// only +, -, *, / and exact bit manipulation, so a draw is bit-identical wherever doubles are
// IEEE-754 and the compiler does not contract a*b+c into an FMA (CMake sets -ffp-contract=off
// for the simulator sources). Their error against the correctly rounded result is < 1 ulp.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "sim/philox_simd.hpp"

namespace flagcore {
namespace sim {

// ---------------------------------------------------------------- Philox4x32-10
inline void philox4x32_10(const uint32_t ctr_in[4], const uint32_t key_in[2], uint32_t out[4]) {
  uint32_t c0 = ctr_in[0], c1 = ctr_in[1], c2 = ctr_in[2], c3 = ctr_in[3];
  uint32_t k0 = key_in[0], k1 = key_in[1];
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    const uint64_t p0 = uint64_t(0xD2511F53u) * c0;
    const uint64_t p1 = uint64_t(0xCD9E8D57u) * c2;
    const uint32_t hi0 = uint32_t(p0 >> 32), lo0 = uint32_t(p0);
    const uint32_t hi1 = uint32_t(p1 >> 32), lo1 = uint32_t(p1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

// A stream of 64-bit words: Philox blocks (key = seed, counter = (block, stream)) generated
// kBlocks at a time into a buffer, each block giving two words (out[1]:out[0], out[3]:out[2]).
// The blocks come from the AVX2 kernel of philox_simd.hpp where the CPU has AVX2 (AVX-512 CPUs
// included; the same words), else from the portable loop below.
class Rng {
 public:
  Rng(uint64_t seed, uint64_t stream)
      : key_{uint32_t(seed), uint32_t(seed >> 32)}, stream_(stream), batch_(philox_batch_kernel()) {}

  uint64_t next_u64() {
    if (pos_ == kWords) refill();
    return buf_[pos_++];
  }
  // Uniform on [0, 1): 53 random bits.
  double uniform() { return double(next_u64() >> 11) * 0x1.0p-53; }
  // Uniform on (0, 1]: never 0, so -log(u) is finite.
  double uniform_pos() { return double((next_u64() >> 11) + 1) * 0x1.0p-53; }
  // Uniform integer in [0, m) by a 64x64->128 multiply (Lemire, without the rejection step:
  // the bias is < m / 2^64).
  uint64_t below(uint64_t m) { return uint64_t((__uint128_t(next_u64()) * m) >> 64); }

 private:
  static constexpr int kBlocks = kPhiloxBatch;
  static constexpr int kWords = 2 * kBlocks;
  // The portable loop computes the blocks lane-wise (one array per counter word, each round
  // over all blocks) so that the compiler vectorises the 32x32->64 multiplies (SSE2); same
  // values as philox4x32_10 block by block.
  void refill() {
    if (batch_ != nullptr) {
      batch_(key_, stream_, block_, buf_);
      block_ += kBlocks;
      pos_ = 0;
      return;
    }
    uint32_t c0[kBlocks], c1[kBlocks], c2[kBlocks], c3[kBlocks];
    for (int b = 0; b < kBlocks; ++b) {
      const uint64_t blk = block_ + uint64_t(b);
      c0[b] = uint32_t(blk);
      c1[b] = uint32_t(blk >> 32);
      c2[b] = uint32_t(stream_);
      c3[b] = uint32_t(stream_ >> 32);
    }
    uint32_t k0 = key_[0], k1 = key_[1];
    for (int round = 0; round < 10; ++round) {
      if (round > 0) {
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
      }
      for (int b = 0; b < kBlocks; ++b) {
        const uint64_t p0 = uint64_t(0xD2511F53u) * c0[b];
        const uint64_t p1 = uint64_t(0xCD9E8D57u) * c2[b];
        const uint32_t n0 = uint32_t(p1 >> 32) ^ c1[b] ^ k0;
        const uint32_t n2 = uint32_t(p0 >> 32) ^ c3[b] ^ k1;
        c1[b] = uint32_t(p1);
        c3[b] = uint32_t(p0);
        c0[b] = n0;
        c2[b] = n2;
      }
    }
    for (int b = 0; b < kBlocks; ++b) {
      buf_[2 * b] = (uint64_t(c1[b]) << 32) | c0[b];
      buf_[2 * b + 1] = (uint64_t(c3[b]) << 32) | c2[b];
    }
    block_ += kBlocks;
    pos_ = 0;
  }
  uint32_t key_[2];
  uint64_t stream_;
  uint64_t block_ = 0;
  PhiloxBatchFn batch_;
  int pos_ = kWords;
  uint64_t buf_[kWords];
};

// ---------------------------------------------------------------- log and exp (fdlibm)
namespace detail {
inline uint64_t bits(double x) {
  uint64_t u;
  std::memcpy(&u, &x, 8);
  return u;
}
inline double from_bits(uint64_t u) {
  double x;
  std::memcpy(&x, &u, 8);
  return x;
}
}  // namespace detail

// Natural log for x > 0 finite (the only use here); fdlibm e_log.c.
inline double det_log(double x) {
  constexpr double ln2_hi = 6.93147180369123816490e-01, ln2_lo = 1.90821492927058770002e-10,
                   two54 = 1.80143985094819840000e+16, Lg1 = 6.666666666666735130e-01,
                   Lg2 = 3.999999999940941908e-01, Lg3 = 2.857142874366239149e-01,
                   Lg4 = 2.222219843214978396e-01, Lg5 = 1.818357216161805012e-01,
                   Lg6 = 1.531383769920937332e-01, Lg7 = 1.479819860511658591e-01;
  uint64_t u = detail::bits(x);
  int32_t hx = int32_t(u >> 32);
  int k = 0;
  if (hx < 0x00100000) {  // subnormal, zero or negative
    if (x == 0.0) return -HUGE_VAL;
    if (hx < 0) return (x - x) / 0.0;
    k -= 54;
    x *= two54;
    u = detail::bits(x);
    hx = int32_t(u >> 32);
  }
  if (hx >= 0x7ff00000) return x + x;
  k += (hx >> 20) - 1023;
  hx &= 0x000fffff;
  const int32_t i0 = (hx + 0x95f64) & 0x100000;
  // normalise x or x/2 into [sqrt(2)/2, sqrt(2))
  x = detail::from_bits((uint64_t(uint32_t(hx | (i0 ^ 0x3ff00000))) << 32) | (u & 0xffffffffu));
  k += (i0 >> 20);
  const double f = x - 1.0;
  const double dk = double(k);
  if ((0x000fffff & (2 + hx)) < 3) {  // -2^-20 <= f < 2^-20
    if (f == 0.0) return k == 0 ? 0.0 : dk * ln2_hi + dk * ln2_lo;
    const double R = f * f * (0.5 - 0.33333333333333333 * f);
    return k == 0 ? f - R : dk * ln2_hi - ((R - dk * ln2_lo) - f);
  }
  const double s = f / (2.0 + f);
  const double z = s * s;
  int32_t i = hx - 0x6147a;
  const double w = z * z;
  const int32_t j = 0x6b851 - hx;
  const double t1 = w * (Lg2 + w * (Lg4 + w * Lg6));
  const double t2 = z * (Lg1 + w * (Lg3 + w * (Lg5 + w * Lg7)));
  i |= j;
  const double R = t2 + t1;
  if (i > 0) {
    const double hfsq = 0.5 * f * f;
    return k == 0 ? f - (hfsq - s * (hfsq + R)) : dk * ln2_hi - ((hfsq - (s * (hfsq + R) + dk * ln2_lo)) - f);
  }
  return k == 0 ? f - s * (f - R) : dk * ln2_hi - ((s * (f - R) - dk * ln2_lo) - f);
}

// e^x; fdlibm e_exp.c (overflow -> inf, underflow -> 0).
inline double det_exp(double x) {
  constexpr double o_threshold = 7.09782712893383973096e+02, u_threshold = -7.45133219101941108420e+02,
                   ln2HI = 6.93147180369123816490e-01, ln2LO = 1.90821492927058770002e-10,
                   invln2 = 1.44269504088896338700e+00, P1 = 1.66666666666666019037e-01,
                   P2 = -2.77777777770155933842e-03, P3 = 6.61375632143793436117e-05,
                   P4 = -1.65339022054652515390e-06, P5 = 4.13813679705723846039e-08;
  if (x != x) return x;
  if (x > o_threshold) return HUGE_VAL;
  if (x < u_threshold) return 0.0;
  const uint32_t hx = uint32_t(detail::bits(x) >> 32) & 0x7fffffffu;
  const int xsb = x < 0 ? 1 : 0;
  double hi = 0, lo = 0;
  int k = 0;
  if (hx > 0x3fd62e42) {    // |x| > 0.5 ln2
    if (hx < 0x3FF0A2B2) {  // and |x| < 1.5 ln2
      hi = xsb ? x + ln2HI : x - ln2HI;
      lo = xsb ? -ln2LO : ln2LO;
      k = 1 - xsb - xsb;
    } else {
      k = int(invln2 * x + (xsb ? -0.5 : 0.5));
      const double t = k;
      hi = x - t * ln2HI;  // exact: ln2HI has 32 trailing zero bits
      lo = t * ln2LO;
    }
    x = hi - lo;
  } else if (hx < 0x3e300000) {  // |x| < 2^-28
    return 1.0 + x;
  }
  const double t = x * x;
  const double c = x - t * (P1 + t * (P2 + t * (P3 + t * (P4 + t * P5))));
  if (k == 0) return 1.0 - ((x * c) / (c - 2.0) - x);
  const double y = 1.0 - ((lo - (x * c) / (2.0 - c)) - hi);
  return std::ldexp(y, k);  // exact scaling by 2^k
}

// ---------------------------------------------------------------- samplers (all mean 1)
enum class ServiceKind : int {
  exponential = 0,
  deterministic = 1,
  gamma = 2,      // shape a (Erlang when a is an integer); scale 1/a
  lognormal = 3,  // sigma; mu = -sigma^2/2
  pareto = 4,     // alpha > 1; x_m = (alpha - 1) / alpha
  empirical = 5,  // uniform draw from a table normalised to mean 1
};

// Exp(1) by the ziggurat method (Marsaglia and Tsang 2000) with 256 layers: one 64-bit word
// gives the layer (low 8 bits) and the position (top 53 bits); ~98.9% of draws end on the
// first comparison. The tables are computed once with det_log / det_exp, so they are the
// same everywhere.
struct ExpZiggurat {
  static constexpr double kR = 7.69711747013104972;       // start of the tail
  static constexpr double kV = 3.9496598225815571993e-3;  // area of each layer
  double x[257];   // x[0] = kV / f(kR) (base strip), x[1] = kR > x[2] > ... > x[256] = 0
  double f[257];   // f[i] = exp(-x[i])
  double xs[257];  // x[i] * 2^-53, exact: u * x[i] with u = m * 2^-53 is m * xs[i], one multiply
  ExpZiggurat() {
    x[1] = kR;
    f[1] = det_exp(-kR);
    x[0] = kV / f[1];
    f[0] = 0.0;
    for (int i = 1; i < 255; ++i) {
      x[i + 1] = -det_log(kV / x[i] + f[i]);
      f[i + 1] = det_exp(-x[i + 1]);
    }
    x[256] = 0.0;
    f[256] = 1.0;
    for (int i = 0; i < 257; ++i) xs[i] = x[i] * 0x1.0p-53;
  }
#if defined(__GNUC__)
  __attribute__((always_inline))
#endif
  static const ExpZiggurat&
  get() {
    static const ExpZiggurat z;
    return z;
  }
};

// The rest of a draw whose first point (layer i, value x) fell outside the layer's rectangle:
// the base strip's tail or the wedge test, then new points until one is accepted. Out of line:
// inlined into the event loop, its constants and branches cost every draw (~1% reach it).
#if defined(__GNUC__)
__attribute__((noinline))
#endif
inline double
sample_exponential_edge(Rng& rng, const ExpZiggurat& z, int i, double x) {
  for (;;) {
    if (i == 0) return ExpZiggurat::kR - det_log(rng.uniform_pos());  // memoryless tail
    if (z.f[i] + rng.uniform() * (z.f[i + 1] - z.f[i]) < det_exp(-x)) return x;
    const uint64_t bits = rng.next_u64();
    i = int(bits & 0xff);
    x = double(bits >> 11) * z.xs[i];
    if (x < z.x[i + 1]) return x;
  }
}

#if defined(__GNUC__)
__attribute__((always_inline))  // the hot path of every run: an out-of-line call costs ~5%
#endif
inline double
sample_exponential(Rng& rng, const ExpZiggurat& z) {
  const uint64_t bits = rng.next_u64();
  const int i = int(bits & 0xff);
  const double x = double(bits >> 11) * z.xs[i];  // = (bits >> 11) * 2^-53 * x[i], rounded once
  if (__builtin_expect(x < z.x[i + 1], 1)) return x;
  return sample_exponential_edge(rng, z, i, x);
}

#if defined(__GNUC__)
__attribute__((always_inline))
#endif
inline double
sample_exponential(Rng& rng) {
  return sample_exponential(rng, ExpZiggurat::get());
}

// Marsaglia's polar method (log, sqrt and division only; sqrt is exact in IEEE-754).
inline double sample_normal(Rng& rng) {
  for (;;) {
    const double u = 2.0 * rng.uniform() - 1.0, v = 2.0 * rng.uniform() - 1.0;
    const double s = u * u + v * v;
    if (s >= 1.0 || s == 0.0) continue;
    return u * std::sqrt(-2.0 * det_log(s) / s);
  }
}

// Gamma(a, 1): Marsaglia and Tsang (2000); a < 1 through Gamma(a + 1) * U^(1/a).
inline double sample_gamma_unit_scale(Rng& rng, double a) {
  double boost = 1.0;
  if (a < 1.0) {
    boost = det_exp(det_log(rng.uniform_pos()) / a);
    a += 1.0;
  }
  const double d = a - 1.0 / 3.0, c = 1.0 / std::sqrt(9.0 * d);
  for (;;) {
    const double x = sample_normal(rng);
    double v = 1.0 + c * x;
    if (v <= 0.0) continue;
    v = v * v * v;
    const double u = rng.uniform_pos();
    const double x2 = x * x;
    if (u < 1.0 - 0.0331 * x2 * x2 || det_log(u) < 0.5 * x2 + d * (1.0 - v + det_log(v)))
      return d * v * boost;
  }
}

struct ServiceSampler {
  ServiceKind kind = ServiceKind::exponential;
  double param = 0.0;
  const double* table = nullptr;  // empirical: values with mean 1
  uint64_t table_size = 0;

#if defined(__GNUC__)
  __attribute__((always_inline))  // an out-of-line call goes through the PLT
#endif
  double
  operator()(Rng& rng) const {
    if (kind == ServiceKind::exponential) return sample_exponential(rng);  // the hot path
    return other(rng);
  }

#if defined(__GNUC__)
  __attribute__((noinline))
#endif
  double
  other(Rng& rng) const {
    switch (kind) {
      case ServiceKind::exponential:
        return sample_exponential(rng);
      case ServiceKind::deterministic:
        return 1.0;
      case ServiceKind::gamma:
        return sample_gamma_unit_scale(rng, param) / param;
      case ServiceKind::lognormal:
        return det_exp(param * sample_normal(rng) - 0.5 * param * param);
      case ServiceKind::pareto:
        return (param - 1.0) / param * det_exp(-det_log(rng.uniform_pos()) / param);
      case ServiceKind::empirical:
        return table[rng.below(table_size)];
    }
    return 1.0;
  }
};

}  // namespace sim
}  // namespace flagcore
