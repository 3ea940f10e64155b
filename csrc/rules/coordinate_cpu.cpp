#include <algorithm>
#include <cmath>
#include <vector>

#include "common/cancel.hpp"
#include "common/parallel.hpp"
#include "common/simd.hpp"
#include "rules/coordinate.hpp"

namespace flagcore {
namespace {

// Columns per task: about kTaskWork comparator steps (a fraction of a millisecond), so that
// large p with small n still spreads over the threads; a multiple of every block width; and at
// least two tasks per problem where n allows (n > 64). Before, a problem of one task's width
// ran on one thread: AMD Zen 4, float32, two threads, us, before -> after
// (bench/results/coordinate_split_ab_zen4_2026-12-05.json): median p = 64, n = 16384 821 -> 416,
// p = 200, n = 3000 707 -> 378; trimmed mean p = 64, n = 16384 997 -> 523; mean p = 1000,
// n = 1000 88 -> 57, p = 4096, n = 512 180 -> 116 (one thread: 3-8 % more for these two). The
// split depends on the problem only, never on the thread count, and no column's result depends
// on it.
constexpr int64_t kTaskWork = int64_t(1) << 24;
constexpr int64_t kMaxTaskColumns = 16384;

int64_t task_columns(int64_t pe, int64_t ncomp, CoordRule rule, int64_t n) {
  // mean: ~2.6e5 values per task (tens of tasks at ~1e7 values, so two or three threads finish
  // within a few percent of each other), at least 1024 columns (long row segments at large p)
  const int64_t cols =
      rule == CoordRule::mean
          ? std::max<int64_t>(
                1024, std::min(kMaxTaskColumns, (int64_t(1) << 18) / std::max<int64_t>(1, pe)) / 64 * 64)
          : std::max<int64_t>(
                64, std::min(kMaxTaskColumns, kTaskWork / std::max<int64_t>(1, ncomp + pe)) / 64 * 64);
  return at_least_two_tasks(n, cols, 64);
}

template <typename T>
using SumFn = bool (*)(const T* const*, const double*, int64_t, int64_t, int64_t, double*, T*, double);

template <typename T>
SumFn<T> pick_sum() {
  return FLAGCORE_SIMD_PICK(SumFn<T>, sum_rows);
}

// The mean of columns [k0, k1) of the pe rows: their sum in row order, divided by pe (numpy's
// convention). A non-finite mean means a non-finite value (its rows are flagged in bad and the
// problem is recomputed without them) or a float64 sum that overflowed (recomputed per column
// with pre-divided terms).
template <typename T>
void mean_block(const T* const* rows, int pe, int64_t k0, int64_t k1, T* out, uint8_t* bad) {
  constexpr int64_t kChunk = 2048;  // 16 KiB of float64 accumulators: stays in L1
  const SumFn<T> sum = pick_sum<T>();
  double acc[kChunk];
  std::vector<T> col;
  for (int64_t kk = k0; kk < k1; kk += kChunk) {
    check_cancel();
    const int64_t len = std::min(kChunk, k1 - kk);
    if (sum(rows, nullptr, pe, kk, len, acc, out + kk, double(pe))) continue;  // every sum finite
    bool any_bad = false;
    for (int i = 0; i < pe; ++i)
      for (int64_t k = kk; k < kk + len; ++k)
        if (!std::isfinite(rows[i][k])) {
          bad[i] = 1;
          any_bad = true;
          break;
        }
    if (any_bad) continue;
    col.resize(static_cast<size_t>(pe));
    for (int64_t k = kk; k < kk + len; ++k) {
      if (std::isfinite(acc[k - kk] / double(pe))) continue;
      for (int i = 0; i < pe; ++i) col[i] = rows[i][k];
      out[k] = static_cast<T>(mean_of(col.data(), 1, 0, pe, pe));
    }
  }
}

template <typename T>
using BlockFn = void (*)(const T* const*, int, const int*, int, CoordRule, CoordCounts, int64_t, int64_t, T*,
                         uint8_t*);

template <typename T>
BlockFn<T> pick_kernel() {
  return FLAGCORE_SIMD_PICK(BlockFn<T>, coordinate_block);
}

// One problem's state for a pass: its active rows and the network for their count.
template <typename T>
struct Problem {
  int64_t q = 0;
  std::vector<const T*> rows;
  std::vector<int> active;  // index in 0..p-1 of each active row
  std::vector<int> comp;    // flattened comparator pairs
  CoordCounts counts;
};

template <typename T>
void run_pass(std::vector<Problem<T>>& probs, int64_t p, int64_t n, CoordRule rule, T* out,
              uint8_t* excluded) {
  if (probs.empty()) return;
  const BlockFn<T> kernel = pick_kernel<T>();
  // Task t belongs to problem owner[t] and covers its columns [k0, k1).
  std::vector<size_t> owner;
  std::vector<int64_t> start;
  for (size_t q = 0; q < probs.size(); ++q) {
    const int64_t w =
        task_columns(probs[q].counts.pe, static_cast<int64_t>(probs[q].comp.size() / 2), rule, n);
    for (int64_t k0 = 0; k0 < n; k0 += w) {
      owner.push_back(q);
      start.push_back(k0);
    }
  }
  const size_t tasks = owner.size();
  std::vector<uint8_t> bad(tasks * static_cast<size_t>(p), 0);
  parallel_for(tasks, [&](size_t t) {
    Problem<T>& pr = probs[owner[t]];
    const int64_t k0 = start[t];
    const int64_t k1 = t + 1 < tasks && owner[t + 1] == owner[t] ? start[t + 1] : n;
    const int pe = pr.counts.pe;
    if (pe == 0) {
      std::fill(out + pr.q * n + k0, out + pr.q * n + k1, T(0));
      return;
    }
    if (rule == CoordRule::mean) {
      mean_block(pr.rows.data(), pe, k0, k1, out + pr.q * n, bad.data() + t * static_cast<size_t>(p));
      return;
    }
    kernel(pr.rows.data(), pe, pr.comp.data(), static_cast<int>(pr.comp.size() / 2), rule, pr.counts, k0, k1,
           out + pr.q * n, bad.data() + t * static_cast<size_t>(p));
  });
  for (size_t t = 0; t < tasks; ++t) {
    const Problem<T>& pr = probs[owner[t]];
    for (int j = 0; j < pr.counts.pe; ++j)
      if (bad[t * static_cast<size_t>(p) + j]) excluded[pr.q * p + pr.active[j]] = 1;
  }
}

template <typename T>
Problem<T> make_problem(const T* const* rows, int64_t q, int64_t p, const uint8_t* excl,
                        const CoordSpec& spec) {
  Problem<T> pr;
  pr.q = q;
  for (int64_t i = 0; i < p; ++i)
    if (!excl[q * p + i]) {
      pr.rows.push_back(rows[q * p + i]);
      pr.active.push_back(static_cast<int>(i));
    }
  const int64_t pe = static_cast<int64_t>(pr.rows.size());
  pr.counts = coord_counts(spec, p, pe);
  if (pe > 0) {
    for (const auto& cp : coordinate_network(static_cast<int>(pe), spec.rule, pr.counts)) {
      pr.comp.push_back(cp.first);
      pr.comp.push_back(cp.second);
    }
  }
  return pr;
}

}  // namespace

std::vector<std::pair<int, int>> coordinate_network(int pe, CoordRule rule, CoordCounts c) {
  // Batcher's merge exchange for any number of inputs (Knuth, TAOCP vol. 3, 5.2.2, Algorithm M):
  // for a power of two the odd-even merge sort, otherwise fewer comparators than that network on
  // the next power of two with the padding's comparators dropped (median networks, pruned as
  // below: 169 against 198 at pe = 33, 462 against 542 at 65; the same at powers of two), so
  // the cost per column steps by the log^2 growth only when pe passes a power of two.
  std::vector<std::pair<int, int>> all;
  if (rule == CoordRule::mean || pe < 2) return all;
  int t = 0;
  while ((1 << t) < pe) ++t;
  for (int p = 1 << (t - 1); p > 0; p >>= 1) {
    int q = 1 << (t - 1), r = 0, d = p;
    for (;;) {
      for (int i = 0; i < pe - d; ++i)
        if ((i & p) == r) all.emplace_back(i, i + d);
      if (q == p) break;
      d = q - p;
      q >>= 1;
      r = p;
    }
  }
  // Keep only the comparators that can influence the positions the rule reads.
  std::vector<char> need(static_cast<size_t>(pe), 0);
  if (rule == CoordRule::median) {
    need[(pe - 1) / 2] = need[pe / 2] = 1;
  } else if (rule == CoordRule::trimmed_mean) {
    for (int i = std::max(c.t, 0); i < std::min(pe, pe - c.t); ++i) need[i] = 1;  // inside [0, pe) always
  } else {
    std::fill(need.begin(), need.end(), 1);
  }
  std::vector<std::pair<int, int>> kept;
  for (auto it = all.rbegin(); it != all.rend(); ++it) {
    if (need[it->first] || need[it->second]) {
      kept.push_back(*it);
      need[it->first] = need[it->second] = 1;
    }
  }
  std::reverse(kept.begin(), kept.end());
  return kept;
}

template <typename T>
void coordinate_cpu(const T* const* rows, int64_t b, int64_t p, int64_t n, const CoordSpec& spec, T* out,
                    uint8_t* excluded) {
  if (b <= 0 || n <= 0) return;
  std::vector<uint8_t> before(excluded, excluded + b * p);
  std::vector<Problem<T>> probs;
  for (int64_t q = 0; q < b; ++q) probs.push_back(make_problem(rows, q, p, excluded, spec));
  run_pass(probs, p, n, spec.rule, out, excluded);
  // Problems in which some worker turned out to be non-finite are recomputed without it.
  std::vector<Problem<T>> again;
  for (int64_t q = 0; q < b; ++q) {
    bool any = false;
    for (int64_t i = 0; i < p; ++i) any = any || (excluded[q * p + i] && !before[q * p + i]);
    if (any) again.push_back(make_problem(rows, q, p, excluded, spec));
  }
  run_pass(again, p, n, spec.rule, out, excluded);
}

template <typename T>
bool sum_rows_dispatch(const T* const* xs, const double* cs, int64_t m, int64_t k0, int64_t len, double* acc,
                       T* out, double d) {
  return pick_sum<T>()(xs, cs, m, k0, len, acc, out, d);
}

template bool sum_rows_dispatch<float>(const float* const*, const double*, int64_t, int64_t, int64_t, double*,
                                       float*, double);
template bool sum_rows_dispatch<double>(const double* const*, const double*, int64_t, int64_t, int64_t,
                                        double*, double*, double);
template void coordinate_cpu<float>(const float* const*, int64_t, int64_t, int64_t, const CoordSpec&, float*,
                                    uint8_t*);
template void coordinate_cpu<double>(const double* const*, int64_t, int64_t, int64_t, const CoordSpec&,
                                     double*, uint8_t*);

}  // namespace flagcore
