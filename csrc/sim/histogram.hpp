// Log-bucketed histogram of positive values (response times), fixed size, for percentiles
// without keeping the samples.
//
// Bucket 0 holds values below 2^kEmin (and zeros); the last bucket values at or above 2^kEmax.
// In between, each octave [2^e, 2^(e+1)) is split into kSub = 2^kSubBits equal buckets, read
// directly off the exponent and the top mantissa bits. A bucket's width is at most 1/kSub of
// its lower edge, so any value in it is within a relative 2^-kSubBits (0.39%) of either edge
// and within 2^-(kSubBits+1) (0.2%) of its midpoint. Python computes the edges with the same
// formula (python/flagcore/energy/_stats.py).
#pragma once
#include <cstdint>
#include <cstring>

namespace flagcore {
namespace sim {

struct LogHistogramLayout {
  static constexpr int kSubBits = 8;
  static constexpr int kSub = 1 << kSubBits;
  static constexpr int kEmin = -40;
  static constexpr int kEmax = 40;
  static constexpr int kBuckets = (kEmax - kEmin) * kSub + 2;

  static int index(double v) {
    if (!(v > 0.0)) return 0;
    uint64_t u;
    std::memcpy(&u, &v, 8);
    const int e = int((u >> 52) & 0x7ff) - 1023;
    if (e < kEmin) return 0;
    if (e >= kEmax) return kBuckets - 1;
    return 1 + (e - kEmin) * kSub + int((u >> (52 - kSubBits)) & (kSub - 1));
  }
};

}  // namespace sim
}  // namespace flagcore
