#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "rules/distance.hpp"

namespace flagcore {
namespace {

std::vector<int64_t> active_list(const uint8_t* excluded, int64_t p) {
  std::vector<int64_t> a;
  for (int64_t i = 0; i < p; ++i)
    if (!excluded[i]) a.push_back(i);
  return a;
}

int64_t f_effective(int64_t f, int64_t p, int64_t pe) {
  return std::max<int64_t>(0, f - (p - pe));
}

// Krum scores of the workers in `cand` against the other workers in `cand`.
void krum_scores(const std::vector<double>& D, int64_t p, const std::vector<int64_t>& cand,
                 int64_t f_eff, std::vector<double>& score) {
  const int64_t c = static_cast<int64_t>(cand.size());
  const int64_t nb = std::max<int64_t>(0, c - f_eff - 2);
  std::vector<double> d;
  score.assign(static_cast<size_t>(c), 0.0);
  for (int64_t a = 0; a < c; ++a) {
    d.clear();
    for (int64_t b = 0; b < c; ++b)
      if (b != a) d.push_back(D[cand[a] * p + cand[b]]);
    const int64_t k = std::min<int64_t>(nb, static_cast<int64_t>(d.size()));
    std::partial_sort(d.begin(), d.begin() + k, d.end());
    double s = 0.0;
    for (int64_t j = 0; j < k; ++j) s += d[j];
    score[a] = s;
  }
}

}  // namespace

int64_t mark_nonfinite(const double* G, int64_t p, uint8_t* excluded) {
  int64_t pe = 0;
  for (int64_t i = 0; i < p; ++i) {
    if (!std::isfinite(G[i * p + i])) excluded[i] = 1;
    pe += excluded[i] ? 0 : 1;
  }
  return pe;
}

void squared_distances(const double* G, int64_t p, double* D) {
  for (int64_t i = 0; i < p; ++i)
    for (int64_t j = 0; j < p; ++j) {
      const double d = G[i * p + i] + G[j * p + j] - 2.0 * G[i * p + j];
      D[i * p + j] = i == j ? 0.0 : (d > 0.0 ? d : 0.0);
    }
}

void krum_cpu(const double* G, int64_t p, int64_t f, int64_t m, double* coef, double* scores,
              uint8_t* selected, uint8_t* excluded) {
  const int64_t pe = mark_nonfinite(G, p, excluded);
  std::fill(coef, coef + p, 0.0);
  std::fill(selected, selected + p, uint8_t(0));
  std::fill(scores, scores + p, std::nan(""));
  if (pe == 0) return;
  std::vector<double> D(static_cast<size_t>(p * p));
  squared_distances(G, p, D.data());
  const std::vector<int64_t> act = active_list(excluded, p);
  std::vector<double> sc;
  krum_scores(D, p, act, f_effective(f, p, pe), sc);
  std::vector<int64_t> order(act.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return sc[a] < sc[b]; });
  const int64_t mm = std::max<int64_t>(1, std::min<int64_t>(m, pe));
  for (size_t a = 0; a < act.size(); ++a) scores[act[a]] = sc[a];
  for (int64_t j = 0; j < mm; ++j) {
    selected[act[order[j]]] = 1;
    coef[act[order[j]]] = 1.0 / double(mm);
  }
}

int64_t bulyan_select_cpu(const double* G, int64_t p, int64_t f, uint8_t* selected,
                          uint8_t* excluded) {
  const int64_t pe = mark_nonfinite(G, p, excluded);
  std::fill(selected, selected + p, uint8_t(0));
  if (pe == 0) return 0;
  const int64_t f_eff = f_effective(f, p, pe);
  const int64_t theta = std::max<int64_t>(1, pe - 2 * f_eff);
  std::vector<double> D(static_cast<size_t>(p * p));
  squared_distances(G, p, D.data());
  std::vector<int64_t> remaining = active_list(excluded, p);
  std::vector<double> sc;
  for (int64_t s = 0; s < theta; ++s) {
    krum_scores(D, p, remaining, f_eff, sc);
    const size_t best = static_cast<size_t>(std::min_element(sc.begin(), sc.end()) - sc.begin());
    selected[remaining[best]] = 1;
    remaining.erase(remaining.begin() + static_cast<std::ptrdiff_t>(best));
  }
  return theta;
}

void geometric_median_cpu(const double* G, int64_t p, double nu, double tol, int64_t max_iter,
                          double* coef, uint8_t* excluded, int64_t* iterations,
                          uint8_t* converged, double* objective) {
  const int64_t pe = mark_nonfinite(G, p, excluded);
  std::fill(coef, coef + p, 0.0);
  *iterations = 0;
  *converged = 1;
  *objective = 0.0;
  if (pe == 0) return;
  const std::vector<int64_t> act = active_list(excluded, p);
  const size_t c = act.size();
  // Work on the active block of G only.
  std::vector<double> g(c * c);
  for (size_t i = 0; i < c; ++i)
    for (size_t j = 0; j < c; ++j) g[i * c + j] = G[act[i] * p + act[j]];
  // A data point is the geometric median iff the unit vectors from it to the other points
  // sum to a norm at most its multiplicity (Weiszfeld's iteration only creeps towards such a
  // point). Checked exactly for each worker: ||R_k||^2 = sum_ij <x_i - x_k, x_j - x_k> /
  // (d_ik d_jk) over the points not equal to x_k, O(p^3) in all.
  std::vector<double> dk(c);
  for (size_t k = 0; k < c; ++k) {
    double mult = 0.0, F = 0.0;
    for (size_t i = 0; i < c; ++i) {
      const double d2 = g[i * c + i] + g[k * c + k] - 2.0 * g[i * c + k];
      const double thr = 1e-14 * (g[i * c + i] + g[k * c + k]);
      dk[i] = d2 > thr ? std::sqrt(d2) : 0.0;
      if (dk[i] == 0.0) mult += 1.0;
      F += dk[i];
    }
    double r2 = 0.0;
    for (size_t i = 0; i < c; ++i) {
      if (dk[i] == 0.0) continue;
      for (size_t j = 0; j < c; ++j) {
        if (dk[j] == 0.0) continue;
        r2 += (g[i * c + j] - g[i * c + k] - g[j * c + k] + g[k * c + k]) / (dk[i] * dk[j]);
      }
    }
    if (std::sqrt(std::max(r2, 0.0)) <= mult) {
      coef[act[k]] = 1.0;
      *objective = F;
      return;
    }
  }
  std::vector<double> a(c, 1.0 / double(c)), ga(c), dist(c), w(c);
  auto eval = [&](const std::vector<double>& al) {  // distances ||z - x_i|| and F
    double aga = 0.0;
    for (size_t i = 0; i < c; ++i) {
      double s = 0.0;
      for (size_t j = 0; j < c; ++j) s += g[i * c + j] * al[j];
      ga[i] = s;
      aga += al[i] * s;
    }
    double F = 0.0;
    for (size_t i = 0; i < c; ++i) {
      const double d2 = aga - 2.0 * ga[i] + g[i * c + i];
      dist[i] = d2 > 0.0 ? std::sqrt(d2) : 0.0;
      F += dist[i];
    }
    return F;
  };
  double F = eval(a);
  bool conv = false;
  int64_t it = 0;
  std::vector<double> best = a;
  double F_best = F;
  while (it < max_iter) {
    double sw = 0.0;
    for (size_t i = 0; i < c; ++i) {
      w[i] = 1.0 / std::max(dist[i], nu);
      sw += w[i];
    }
    for (size_t i = 0; i < c; ++i) a[i] = w[i] / sw;
    const double Fn = eval(a);
    ++it;
    if (Fn < F_best) {
      best = a;
      F_best = Fn;
    }
    if (!(F - Fn > tol * Fn)) {
      conv = true;
      break;
    }
    F = Fn;
  }
  for (size_t i = 0; i < c; ++i) coef[act[i]] = best[i];
  *iterations = it;
  *converged = conv ? 1 : 0;
  *objective = F_best;
}

void centered_clipping_cpu(const double* G, int64_t p, double tau, int64_t iterations,
                           double* coef, uint8_t* excluded) {
  const int64_t q = p + 1;  // the reference is row p
  int64_t pe = 0;
  for (int64_t i = 0; i < p; ++i) {
    if (!std::isfinite(G[i * q + i])) excluded[i] = 1;
    pe += excluded[i] ? 0 : 1;
  }
  std::fill(coef, coef + q, 0.0);
  coef[p] = 1.0;
  if (pe == 0) return;
  std::vector<double> gv(static_cast<size_t>(q)), next(static_cast<size_t>(q));
  for (int64_t l = 0; l < iterations; ++l) {
    double vgv = 0.0;
    for (int64_t i = 0; i < q; ++i) {
      if (i < p && excluded[i]) continue;
      double s = 0.0;
      for (int64_t j = 0; j < q; ++j)
        if (coef[j] != 0.0) s += G[i * q + j] * coef[j];
      gv[i] = s;
    }
    for (int64_t i = 0; i < q; ++i)
      if (coef[i] != 0.0) vgv += coef[i] * gv[i];
    double csum = 0.0;
    std::fill(next.begin(), next.end(), 0.0);
    for (int64_t i = 0; i < p; ++i) {
      if (excluded[i]) continue;
      const double d2 = G[i * q + i] - 2.0 * gv[i] + vgv;
      const double d = d2 > 0.0 ? std::sqrt(d2) : 0.0;
      const double ci = d > tau ? tau / d : 1.0;
      next[i] = ci / double(pe);
      csum += ci;
    }
    const double keep = 1.0 - csum / double(pe);
    for (int64_t i = 0; i < q; ++i) coef[i] = keep * coef[i] + next[i];
  }
}

void nnm_matrix_cpu(const double* G, int64_t p, int64_t f, double* M, uint8_t* excluded) {
  const int64_t pe = mark_nonfinite(G, p, excluded);
  std::fill(M, M + p * p, 0.0);
  if (pe == 0) return;
  const int64_t k = pe - f_effective(f, p, pe);
  std::vector<double> D(static_cast<size_t>(p * p));
  squared_distances(G, p, D.data());
  const std::vector<int64_t> act = active_list(excluded, p);
  std::vector<int64_t> order;
  for (int64_t i : act) {
    order = act;
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
      const double da = a == i ? -1.0 : D[i * p + a], db = b == i ? -1.0 : D[i * p + b];
      return da < db;
    });
    for (int64_t j = 0; j < k; ++j) M[i * p + order[j]] = 1.0 / double(k);
  }
}

}  // namespace flagcore
