// reference_products_cpu (contract in rules/reference.hpp).
//
// Before this kernel the products were numpy einsums on the caller's rows (float32 cast to
// float64 in buffered blocks, one thread, two passes). FLTrust at p = 64, n = 2e5, ms, one / two
// threads: 27.9 / 27.1 then, 13.5 / 7.9 now (bench/results/reference_products_ab_zen4_2026-12-05.json).
// Compiled for the baseline instruction set: the 8-lane vectors below are lowered to SSE2 there.
#include <algorithm>
#include <cstring>
#include <vector>

#include "common/cancel.hpp"
#include "common/parallel.hpp"
#include "rules/reference.hpp"

namespace flagcore {
namespace {

constexpr int64_t kBlock = 2048;  // columns per block: 16 KiB of reference, read once per row from L1
constexpr int kLanes = 8;

typedef double Lanes __attribute__((vector_size(8 * kLanes)));  // lowered to the build's vectors
typedef float LanesF __attribute__((vector_size(4 * kLanes)));

double lanes_sum(const Lanes& a) {
  return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

Lanes load_lanes(const double* x) {
  Lanes v;
  std::memcpy(&v, x, sizeof(v));
  return v;
}

Lanes load_lanes(const float* x) {
  LanesF v;
  std::memcpy(&v, x, sizeof(v));
  return __builtin_convertvector(v, Lanes);
}

// kCross: the products with v (v unread without); kSq: the squares.
template <typename T, bool kCross, bool kSq>
void block_products(const T* x, const double* v, int64_t k0, int64_t k1, double& cross, double& sq) {
  Lanes c = {}, s = {};
  int64_t k = k0;
  for (; k + kLanes <= k1; k += kLanes) {
    const Lanes xv = load_lanes(x + k);
    if constexpr (kCross) c += xv * load_lanes(v + k);
    if constexpr (kSq) s += xv * xv;
  }
  for (int l = 0; k < k1; ++k, ++l) {
    const double xv = static_cast<double>(x[k]);
    if constexpr (kCross) c[l] += xv * v[k];
    if constexpr (kSq) s[l] += xv * xv;
  }
  if constexpr (kCross) cross = lanes_sum(c);
  if constexpr (kSq) sq = lanes_sum(s);
}

}  // namespace

template <typename T>
void reference_products_cpu(const T* const* rows, const double* ref, int64_t b, int64_t p, int64_t n,
                            double* cross, double* r2, double* sq) {
  if (b <= 0) return;
  const int64_t blocks = std::max<int64_t>(1, (n + kBlock - 1) / kBlock);
  // partial sums of every (problem, block): p cross, p squares, 1 reference square
  const int64_t stride = 2 * p + 1;
  std::vector<double> part(static_cast<size_t>(b * blocks * stride), 0.0);
  parallel_for(static_cast<size_t>(b * blocks), [&](size_t t) {
    check_cancel();
    const int64_t q = static_cast<int64_t>(t) / blocks;
    const int64_t k0 = (static_cast<int64_t>(t) % blocks) * kBlock;
    const int64_t k1 = std::min(n, k0 + kBlock);
    double* o = part.data() + static_cast<int64_t>(t) * stride;
    const double* v = ref != nullptr ? ref + q * n : nullptr;
    for (int64_t i = 0; i < p; ++i) {
      const T* x = rows[q * p + i];
      if (v == nullptr)
        block_products<T, false, true>(x, v, k0, k1, o[i], o[p + i]);
      else if (sq != nullptr)
        block_products<T, true, true>(x, v, k0, k1, o[i], o[p + i]);
      else
        block_products<T, true, false>(x, v, k0, k1, o[i], o[p + i]);
    }
    if (v != nullptr) {
      double dummy = 0.0;
      block_products<double, false, true>(v, v, k0, k1, dummy, o[2 * p]);
    }
  });
  for (int64_t q = 0; q < b; ++q) {
    for (int64_t i = 0; i < p; ++i) {
      double c = 0.0, s = 0.0;
      for (int64_t blk = 0; blk < blocks; ++blk) {
        c += part[(q * blocks + blk) * stride + i];
        s += part[(q * blocks + blk) * stride + p + i];
      }
      if (cross != nullptr) cross[q * p + i] = c;
      if (sq != nullptr) sq[q * p + i] = s;
    }
    double r = 0.0;
    for (int64_t blk = 0; blk < blocks; ++blk) r += part[(q * blocks + blk) * stride + 2 * p];
    if (r2 != nullptr) r2[q] = r;
  }
}

template void reference_products_cpu<float>(const float* const*, const double*, int64_t, int64_t, int64_t,
                                            double*, double*, double*);
template void reference_products_cpu<double>(const double* const*, const double*, int64_t, int64_t, int64_t,
                                             double*, double*, double*);

}  // namespace flagcore
