// two_clusters_average (contract in rules/cluster.hpp). Compiled with -ffp-contract=off: the
// averages must round as numpy's (a * b + c * d) / e does, operation by operation.
//
// It replaces a numpy loop that masked and searched the whole p x p matrix at every merge
// (O(p^3) with a p^2 temporary per merge): SignGuard took 955 ms at p = 1000 and 175 s at
// p = 4096 (float32, n = 1e4 / 1e3, two threads); the A/B is in
// bench/results/clustering_ab_zen4_2026-12-05_s23.json.
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "common/cancel.hpp"
#include "rules/cluster.hpp"

namespace flagcore {

void two_clusters_average(const double* dist, int64_t p, int64_t* labels) {
  std::vector<double> d(dist, dist + (p > 2 ? p * p : 0));
  two_clusters_average_in_place(d.data(), p, labels);
}

void two_clusters_average_in_place(double* work, int64_t p, int64_t* labels) {
  for (int64_t k = 0; k < p; ++k) labels[k] = 0;
  if (p <= 2) {
    if (p == 2) labels[1] = 1;
    return;
  }
  constexpr double kInf = std::numeric_limits<double>::infinity();
  double* const d = work;
  std::vector<double> size(static_cast<size_t>(p), 1.0);
  std::vector<uint8_t> active(static_cast<size_t>(p), 1);
  std::vector<int64_t> owner(static_cast<size_t>(p));
  std::iota(owner.begin(), owner.end(), int64_t(0));
  std::vector<int64_t> nn(static_cast<size_t>(p), -1);  // nearest active higher row, -1: none
  std::vector<double> mind(static_cast<size_t>(p), kInf);
  auto scan = [&](int64_t k) {  // first minimum: the lowest index on ties
    const double* r = d + k * p;
    double best = kInf;
    int64_t arg = -1;
    for (int64_t m = k + 1; m < p; ++m)
      if (active[m] && r[m] < best) {
        best = r[m];
        arg = m;
      }
    mind[k] = best;
    nn[k] = arg;
  };
  for (int64_t k = 0; k < p; ++k) {
    if ((k & 255) == 0) check_cancel();  // p^2 / 2 reads in all
    scan(k);
  }
  for (int64_t step = 0; step < p - 2; ++step) {
    if ((step & 63) == 0) check_cancel();
    int64_t i = -1;
    double g = kInf;
    for (int64_t k = 0; k < p; ++k)
      if (active[k] && nn[k] >= 0 && mind[k] < g) {
        g = mind[k];
        i = k;
      }
    // every distance left +inf (an average overflowed near the float64 maximum): the lowest pair
    if (i < 0) {
      for (int64_t k = 0; k < p && i < 0; ++k)
        if (active[k]) i = k;
      for (int64_t k = i + 1; k < p; ++k)
        if (active[k]) {
          nn[i] = k;
          break;
        }
    }
    const int64_t j = nn[i];
    const double si = size[i], sj = size[j], s = si + sj;
    double* ri = d + i * p;
    const double* rj = d + j * p;
    for (int64_t k = 0; k < p; ++k) {
      if (!active[k] || k == i || k == j) continue;
      const double a = si * ri[k];
      const double b = sj * rj[k];
      const double v = (a + b) / s;
      ri[k] = v;
      d[k * p + i] = v;
    }
    size[i] = s;
    active[j] = 0;
    for (int64_t k = 0; k < p; ++k)
      if (owner[k] == j) owner[k] = i;
    scan(i);
    for (int64_t k = 0; k < i; ++k) {
      if (!active[k]) continue;
      if (nn[k] == i || nn[k] == j) {
        scan(k);
      } else {
        const double v = d[k * p + i];
        if (v < mind[k] || (v == mind[k] && i < nn[k])) {
          mind[k] = v;
          nn[k] = i;
        }
      }
    }
    for (int64_t k = i + 1; k < j; ++k)
      if (active[k] && nn[k] == j) scan(k);
  }
  for (int64_t k = 0; k < p; ++k) labels[k] = owner[k] != owner[0] ? 1 : 0;
}

}  // namespace flagcore
