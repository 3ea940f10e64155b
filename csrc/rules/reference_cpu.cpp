// reference_products_cpu (contract in rules/reference.hpp).
//
// Before this kernel the products were numpy einsums on the caller's rows (float32 cast to
// float64 in buffered blocks, one thread, two passes). FLTrust at p = 64, n = 2e5, ms, one / two
// threads: 27.9 / 27.1 then, 13.5 / 7.9 with the first form of this file: blocks of 2048
// columns, 8 lanes in GCC vectors lowered to the baseline SSE2
// (bench/results/reference_products_ab_zen4_2026-12-05.json). The blocks now run in a kernel
// per instruction set (rules/reference_kernel_impl.hpp: 16 lanes, the next row prefetched; the
// same bits at every level), 16384 columns wide, in tasks of up to 32 rows
// (bench/results/reference_products_ab_zen4_2026-12-05_s23.json).
#include <algorithm>
#include <vector>

#include "common/cancel.hpp"
#include "common/parallel.hpp"
#include "common/simd.hpp"
#include "rules/reference.hpp"

namespace flagcore {
namespace {

// Columns per block: 128 KiB of a float64 reference, read once per row from L2. Blocks of 2048
// columns (8 KiB of a float32 row) kept the rows' streams short: 2-2.5x the time of a weighted
// sum over the same rows out of cache, where 16384 reach it (p = 16, n = 1e6, two threads,
// row_squares 2.2-2.3 -> 1.25 ms, weighted sum 1.25;
// bench/results/reference_products_ab_zen4_2026-12-05_s23.json).
constexpr int64_t kBlock = 16384;
// Rows per task: about 2^19 values of a block (32 rows), so that large p with few blocks still
// spreads over the threads; rows are independent sums, so the split never changes a bit.
constexpr int64_t kTaskValues = int64_t(1) << 19;

template <typename T>
using BlockFn = void (*)(const T* const*, int64_t, int64_t, int64_t, const double*, int64_t, int64_t, bool,
                         double*);

template <typename T>
BlockFn<T> pick_block() {
  return FLAGCORE_SIMD_PICK(BlockFn<T>, reference_block);
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
  const BlockFn<T> block = pick_block<T>();
  const int64_t group = std::max<int64_t>(1, kTaskValues / kBlock);
  const int64_t groups = (p + group - 1) / group;
  parallel_for(static_cast<size_t>(b * blocks * groups), [&](size_t t) {
    check_cancel();
    const int64_t g = static_cast<int64_t>(t) % groups;
    const int64_t qb = static_cast<int64_t>(t) / groups;
    const int64_t q = qb / blocks;
    const int64_t k0 = (qb % blocks) * kBlock;
    const int64_t k1 = std::min(n, k0 + kBlock);
    double* o = part.data() + qb * stride;
    const double* v = ref != nullptr ? ref + q * n : nullptr;
    block(rows + q * p, p, g * group, std::min(p, (g + 1) * group), v, k0, k1, sq != nullptr, o);
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
