// Distance rules in p-space (contract in rules/distance.hpp). Costs after the Gram, with c
// active workers: Krum O(c^2) (a selection per row); Bulyan O(c^2) (neighbour lists radix-sorted
// once, Krum scores maintained as workers are removed); NNM O(c^2) (a selection per row); geometric median
// O(c^2) per Weiszfeld step plus O(c^2) for the data-point test; centered clipping O(c^2) per step. Work over
// rows is split into fixed tasks (parallel_for) whose results do not depend on the thread count; long loops
// call check_cancel() (Ctrl-C).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include "common/blas.hpp"
#include "common/cancel.hpp"
#include "common/check.hpp"
#include "common/parallel.hpp"
#include "common/simd.hpp"
#include "rules/coordinate.hpp"
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

// Runs fn(i) for i in [0, c) in fixed blocks of rows (each row's result is computed by one
// thread, the same way whatever the thread count), checking for Ctrl-C between blocks.
template <typename Fn>
void for_rows(int64_t c, int64_t cost_per_row, const Fn& fn) {
  const int64_t rows_per_task = std::max<int64_t>(1, (int64_t(1) << 18) / std::max<int64_t>(1, cost_per_row));
  const int64_t tasks = (c + rows_per_task - 1) / rows_per_task;
  auto body = [&](size_t t) {
    check_cancel();
    const int64_t i0 = static_cast<int64_t>(t) * rows_per_task;
    const int64_t i1 = std::min(c, i0 + rows_per_task);
    for (int64_t i = i0; i < i1; ++i) fn(i);
  };
  if (tasks <= 1)
    for (int64_t t = 0; t < tasks; ++t) body(static_cast<size_t>(t));
  else
    parallel_for(static_cast<size_t>(tasks), body);
}

// A sum kept as an unevaluated pair (hi, lo) (Knuth's TwoSum on every term): value() is the
// sum of the terms rounded once (up to an error ~1e-32 relative), whatever their order and
// however many were added and taken away. Krum scores use it, so equal multisets of distances
// give bitwise equal scores (two workers that are each other's nearest neighbour tie exactly
// and the lower index wins), and Bulyan can update its scores by subtraction and still get
// the values a recomputation would.
struct Exact {
  double hi = 0.0, lo = 0.0;
  void add(double x) {
    const double s = hi + x;
    const double bp = s - hi;
    lo += (hi - (s - bp)) + (x - bp);
    hi = s;
  }
  double value() const { return hi + lo; }
};

// The squared distance of workers i != j from the Gram times s (squared_distances' entry, clamped
// at 0). s is a power of two (distance_scale), so each product is exact and the result is
// exactly s times the distance computed from G itself, wherever that one neither overflows nor
// underflows.
inline double squared_distance(const double* G, int64_t p, int64_t i, int64_t j, double s) {
  const double d = G[i * p + i] * s + G[j * p + j] * s - 2.0 * (G[i * p + j] * s);
  return d > 0.0 ? d : 0.0;
}

struct DistKey {
  uint64_t k;  // the bits of a distance >= 0 (or +inf)
  int32_t b;   // the worker
};

inline uint64_t bits_of(double d) {
  uint64_t u;
  std::memcpy(&u, &d, sizeof u);
  return u;
}

// Stable LSD radix sort by k, 11-bit digits (6 passes, a pass skipped where every key has the
// same digit); `tmp` is scratch. Equal keys keep their order.
void radix_sort_stable(std::vector<DistKey>& keys, std::vector<DistKey>& tmp) {
  constexpr int kBits = 11, kPasses = 6;
  constexpr size_t kBuckets = size_t(1) << kBits;
  const size_t n = keys.size();
  if (n < 2) return;
  std::vector<uint32_t> count(kBuckets * kPasses, 0);
  for (const DistKey& e : keys)
    for (int s = 0; s < kPasses; ++s) ++count[size_t(s) * kBuckets + ((e.k >> (s * kBits)) & (kBuckets - 1))];
  tmp.resize(n);
  for (int s = 0; s < kPasses; ++s) {
    uint32_t* cs = count.data() + size_t(s) * kBuckets;
    if (cs[(keys[0].k >> (s * kBits)) & (kBuckets - 1)] == n) continue;  // one bucket: nothing moves
    uint32_t sum = 0;
    for (size_t d = 0; d < kBuckets; ++d) {
      const uint32_t v = cs[d];
      cs[d] = sum;
      sum += v;
    }
    for (const DistKey& e : keys) tmp[cs[(e.k >> (s * kBits)) & (kBuckets - 1)]++] = e;
    keys.swap(tmp);
  }
}

// Krum scores of the workers in `cand` against the other workers in `cand`: the sum of the nb
// smallest squared distances (rounded once), of the Gram times s (distance_scale). Each row's
// distances are formed from the Gram G as they are needed: no p x p distance matrix (it doubled
// Krum's memory).
void krum_scores(const double* G, int64_t p, const std::vector<int64_t>& cand, int64_t f_eff, double s,
                 std::vector<double>& score) {
  const int64_t c = static_cast<int64_t>(cand.size());
  const int64_t nb = std::max<int64_t>(0, c - f_eff - 2);
  score.assign(static_cast<size_t>(c), 0.0);
  for_rows(c, c * 8, [&](int64_t a) {
    std::vector<double> d;
    d.reserve(static_cast<size_t>(c));
    for (int64_t b = 0; b < c; ++b)
      if (b != a) d.push_back(squared_distance(G, p, cand[a], cand[b], s));
    const int64_t k = std::min<int64_t>(nb, static_cast<int64_t>(d.size()));
    std::nth_element(d.begin(), d.begin() + k, d.end());
    Exact s;
    for (int64_t j = 0; j < k; ++j) s.add(d[j]);
    score[a] = s.value();
  });
}

}  // namespace

double distance_scale(const double* G, int64_t p, const uint8_t* excluded) {
  double m = 0.0;
  for (int64_t i = 0; i < p; ++i)
    if (!excluded[i]) m = std::max(m, G[i * p + i]);
  if (!(m > 0.0 && std::isfinite(m))) return 1.0;
  int e = 0;
  std::frexp(m, &e);                            // m = f 2^e, f in [0.5, 1)
  return std::ldexp(1.0, -std::max(e, -1000));  // 2^-e; at most 2^1000 (finite) for tiny Grams
}

int64_t mark_nonfinite(const double* G, int64_t p, uint8_t* excluded) {
  int64_t pe = 0;
  for (int64_t i = 0; i < p; ++i) {
    if (!std::isfinite(G[i * p + i])) excluded[i] = 1;
    pe += excluded[i] ? 0 : 1;
  }
  return pe;
}

// Rows on flagcore's threads (each entry its own, so any thread count gives the same D), Ctrl-C
// polled between row blocks: on one thread, without polling, p = 12000 took seconds.
void squared_distances(const double* G, int64_t p, double s, double* D) {
  for_rows(p, p, [&](int64_t i) {
    for (int64_t j = 0; j < p; ++j) D[i * p + j] = i == j ? 0.0 : squared_distance(G, p, i, j, s);
  });
}

void krum_cpu(const double* G, int64_t p, int64_t f, int64_t m, double* coef, double* scores,
              uint8_t* selected, uint8_t* excluded) {
  const int64_t pe = mark_nonfinite(G, p, excluded);
  std::fill(coef, coef + p, 0.0);
  std::fill(selected, selected + p, uint8_t(0));
  std::fill(scores, scores + p, std::nan(""));
  if (pe == 0) return;
  const std::vector<int64_t> act = active_list(excluded, p);
  std::vector<double> sc;
  const double s = distance_scale(G, p, excluded);
  krum_scores(G, p, act, f_effective(f, p, pe), s, sc);
  std::vector<int64_t> order(act.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return sc[a] < sc[b]; });
  const int64_t mm = std::max<int64_t>(1, std::min<int64_t>(m, pe));
  for (size_t a = 0; a < act.size(); ++a) scores[act[a]] = sc[a] / s;  // the caller's units (inf past them)
  for (int64_t j = 0; j < mm; ++j) {
    selected[act[order[j]]] = 1;
    coef[act[order[j]]] = 1.0 / double(mm);
  }
}

int64_t bulyan_select_cpu(const double* G, int64_t p, int64_t f, uint8_t* selected, uint8_t* excluded) {
  const int64_t pe = mark_nonfinite(G, p, excluded);
  std::fill(selected, selected + p, uint8_t(0));
  if (pe == 0) return 0;
  const int64_t f_eff = f_effective(f, p, pe);
  const int64_t theta = std::max<int64_t>(1, pe - 2 * f_eff);
  const auto D = uninit_array<double>(p * p);  // written in full
  squared_distances(G, p, distance_scale(G, p, excluded), D.get());
  const std::vector<int64_t> act = active_list(excluded, p);
  const int64_t c = pe;
  // ord[a]: the other active workers (local indices) by ascending distance to a (ties: lower
  // index); pos[a][b]: the place of b in ord[a]. A worker's Krum score on the current set is
  // the sum over the first nb living entries of its list, nb = |set| - f_eff - 2; `last[a]` is
  // the place of the last of them. Removing a worker r and shrinking nb by one changes the
  // score by one term: r's own if r was counted, else the last counted one; `last` only moves
  // towards the front, so all the updates cost O(c^2) in total.
  const int64_t w = c - 1;                                              // list length
  const auto ord = uninit_array<int32_t>(c * std::max<int64_t>(w, 1));  // each row written in full
  const auto pos = uninit_array<int32_t>(c * c);
  fill_parallel(pos.get(), c * c, int32_t(-1));
  std::vector<Exact> score(static_cast<size_t>(c));
  std::vector<int64_t> last(static_cast<size_t>(c));
  int64_t nb = std::max<int64_t>(0, c - f_eff - 2);
  for_rows(c, c * 16, [&](int64_t a) {
    const double* Da = D.get() + act[a] * p;
    int32_t* o = ord.get() + a * w;
    // the other workers by ascending distance, ties in ascending index: a stable radix sort of
    // (distance bits, index) pairs entered in index order (the distances are >= 0 or +inf, whose
    // bit patterns order as the values do)
    std::vector<DistKey> keys, tmp;
    keys.reserve(static_cast<size_t>(w));
    for (int64_t b = 0; b < c; ++b)
      if (b != a) keys.push_back({bits_of(Da[act[b]]), static_cast<int32_t>(b)});
    radix_sort_stable(keys, tmp);
    for (int64_t t = 0; t < w; ++t) o[t] = keys[static_cast<size_t>(t)].b;
    for (int64_t t = 0; t < w; ++t) pos[a * c + o[t]] = static_cast<int32_t>(t);
    for (int64_t t = 0; t < nb; ++t) score[a].add(Da[act[o[t]]]);  // as krum_scores
    last[a] = nb - 1;
  });
  std::vector<uint8_t> gone(static_cast<size_t>(c), 0);
  int64_t size = c;
  for (int64_t s = 0; s < theta; ++s) {
    check_cancel();
    int64_t best = -1;
    double best_v = 0.0;
    for (int64_t a = 0; a < c; ++a) {
      if (gone[a]) continue;
      const double v = score[a].value();
      if (best < 0 || v < best_v) {
        best = a;
        best_v = v;
      }
    }
    selected[act[best]] = 1;
    gone[best] = 1;
    --size;
    const int64_t nb_new = std::max<int64_t>(0, size - f_eff - 2);
    if (nb_new == nb) continue;  // both 0: every score stays 0
    nb = nb_new;
    for (int64_t a = 0; a < c; ++a) {
      if (gone[a]) continue;
      const int32_t* o = ord.get() + a * w;
      const double* Da = D.get() + act[a] * p;
      const int64_t pr = pos[a * c + best];
      int64_t& l = last[a];
      if (pr <= l) {
        score[a].add(-Da[act[best]]);
        if (pr == l) do
            --l;
          while (l >= 0 && gone[o[l]]);
      } else {
        score[a].add(-Da[act[o[l]]]);
        do --l;
        while (l >= 0 && gone[o[l]]);
      }
    }
  }
  return theta;
}

void geometric_median_cpu(const double* G, int64_t p, double nu, double tol, int64_t max_iter, double* coef,
                          uint8_t* excluded, int64_t* iterations, uint8_t* converged, double* objective) {
  FLAGCORE_CHECK_ARG(nu > 0.0, "geometric_median: nu must be > 0, got " << nu);  // NaN fails too
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
  // A data point is the geometric median iff the unit vectors from it to the other points sum
  // to a norm at most its multiplicity (Weiszfeld's iteration only creeps towards such a
  // point). A minimiser x_k has the smallest objective F(x_k) = sum_i ||x_i - x_k|| among the
  // data points, so the exact test (O(c^2) each: ||R_k||^2 = sum_ij u_i u_j <x_i - x_k,
  // x_j - x_k> with u_i = 1 / d_ik over the points not equal to x_k) runs only on the points
  // whose F is within 1e-6 (far above rounding) of the smallest, in index order.
  // g is exactly symmetric (the Gram is mirrored, a mixed one symmetrised): row k stands for
  // column k, read contiguously (the column's stride of c doubles missed the cache at every entry)
  std::vector<double> gd(c);
  for (size_t i = 0; i < c; ++i) gd[i] = g[i * c + i];
  auto dist_k = [&](size_t k, std::vector<double>& dk) {
    double F = 0.0;
    const double* gk = g.data() + k * c;
    for (size_t i = 0; i < c; ++i) {
      const double d2 = gd[i] + gd[k] - 2.0 * gk[i];
      const double thr = 1e-14 * (gd[i] + gd[k]);
      dk[i] = d2 > thr ? std::sqrt(d2) : 0.0;
      F += dk[i];
    }
    return F;
  };
  std::vector<double> Fk(c);
  for_rows(static_cast<int64_t>(c), static_cast<int64_t>(c) * 4, [&](int64_t k) {
    std::vector<double> dk(c);
    Fk[k] = dist_k(static_cast<size_t>(k), dk);
  });
  const double F_min = *std::min_element(Fk.begin(), Fk.end());
  {
    std::vector<double> dk(c), u(c);
    for (size_t k = 0; k < c; ++k) {
      if (!(Fk[k] <= F_min + 1e-6 * F_min)) continue;
      check_cancel();
      const double F = dist_k(k, dk);
      double mult = 0.0;
      for (size_t i = 0; i < c; ++i) {
        u[i] = dk[i] == 0.0 ? 0.0 : 1.0 / dk[i];
        if (dk[i] == 0.0) mult += 1.0;
      }
      // sum_ij u_i u_j (g_ij - g_ik - g_jk + g_kk): the cancellation stays local to each term.
      double r2 = 0.0;
      for (size_t i = 0; i < c; ++i) {
        if ((i & 255) == 0) check_cancel();  // c^2 terms per candidate
        if (u[i] == 0.0) continue;
        double s = 0.0;
        for (size_t j = 0; j < c; ++j)
          s += (g[i * c + j] - g[i * c + k] - g[k * c + j] + g[k * c + k]) * u[j];
        r2 += u[i] * s;
      }
      if (std::sqrt(std::max(r2, 0.0)) <= mult) {
        coef[act[k]] = 1.0;
        *objective = F;
        return;
      }
    }
  }
  // The start: one Weiszfeld step from the data point of least F (the medoid), over the other
  // points (Vardi and Zhang's modified step: the medoid's own term left out, so the iteration does
  // not stall there), from the data-point distances, which the Gram gives accurately. The mean,
  // the textbook start, put weight 1/c on every worker: with finite but huge workers (two of 13
  // at +/-3e38) a'Ga - 2 (Ga)_i + G_ii then summed terms of ~1e78, the honest workers' distances
  // were rounding noise, and the aggregate moved by 1e21. The mean stays the start when every
  // other point coincides with the medoid.
  std::vector<double> a(c, 1.0 / double(c)), ga(c), dist(c), w(c);
  {
    const size_t k0 = static_cast<size_t>(std::min_element(Fk.begin(), Fk.end()) - Fk.begin());
    std::vector<double> dk(c);
    dist_k(k0, dk);
    double sw = 0.0;
    for (size_t i = 0; i < c; ++i) sw += dk[i] > 0.0 ? 1.0 / dk[i] : 0.0;
    if (sw > 0.0 && std::isfinite(sw))
      for (size_t i = 0; i < c; ++i) a[i] = dk[i] > 0.0 ? (1.0 / dk[i]) / sw : 0.0;
  }
  // out = g v: the blocked symmetric product (one triangle read, vectorised, an order fixed by c;
  // a row's sum in one scalar chain ran at one multiply-add per FMA latency)
  auto g_times = [&](const std::vector<double>& v, std::vector<double>& out) {
    blas::symv(g.data(), static_cast<int>(c), v.data(), out.data());
  };
  auto eval = [&](const std::vector<double>& al) {  // distances ||z - x_i|| and F
    g_times(al, ga);
    double aga = 0.0;
    for (size_t i = 0; i < c; ++i) aga += al[i] * ga[i];
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
  std::vector<double> best = a, da(c), gda(c);
  double F_best = F;
  while (it < max_iter) {
    check_cancel();
    double sw = 0.0;
    for (size_t i = 0; i < c; ++i) {
      w[i] = 1.0 / std::max(dist[i], nu);
      sw += w[i];
    }
    for (size_t i = 0; i < c; ++i) {
      const double an = w[i] / sw;
      da[i] = an - a[i];
      a[i] = an;
    }
    const double Fn = eval(a);
    ++it;
    // The step's length ||dz||^2 = da' G da, from G da (not from the difference of G a: that
    // carries the rounding of G a's size). Its guaranteed decrease of the majorizer,
    // sw / 2 ||dz||^2, relative to the objective of equal distances at the weighted mean
    // distance H = c / sw, c H = c^2 / sw: the second stop test. The first, the relative
    // decrease of F, cannot see the honest workers when a few are huge (two of 13 at 3e38 make
    // F ~ 4e39, whose rounding is 1e23): it stopped such runs after one step, 0.05 from the
    // minimiser; H is a mean of the near distances, so the second test goes on there.
    g_times(da, gda);
    double step2 = 0.0;
    for (size_t i = 0; i < c; ++i) step2 += da[i] * gda[i];
    const double H = double(c) / sw;
    const bool small_step = !(0.5 * std::max(step2, 0.0) > tol * H * H);
    if (Fn < F_best || small_step) {
      best = a;
      F_best = Fn;
    }
    if (!(F - Fn > tol * Fn) && small_step) {
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

void centered_clipping_cpu(const double* G, int64_t p, double tau, int64_t iterations, double* coef,
                           uint8_t* excluded) {
  FLAGCORE_CHECK_ARG(tau > 0.0, "centered_clipping: tau must be > 0, got " << tau);  // NaN fails too
  FLAGCORE_CHECK_ARG(iterations >= 0, "centered_clipping: iterations must be >= 0, got " << iterations);
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
  std::vector<int64_t> nz;  // indices with a nonzero coefficient
  for (int64_t l = 0; l < iterations; ++l) {
    check_cancel();
    nz.clear();
    for (int64_t j = 0; j < q; ++j)
      if (coef[j] != 0.0) nz.push_back(j);
    for_rows(q, static_cast<int64_t>(nz.size()), [&](int64_t i) {
      if (i < p && excluded[i]) return;
      const double* gi = G + i * q;
      double s = 0.0;
      for (int64_t j : nz) s += gi[j] * coef[j];
      gv[i] = s;
    });
    double vgv = 0.0;
    for (int64_t i : nz) vgv += coef[i] * gv[i];
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
  // f >= p would leave a worker no neighbour to average (k = p - f <= 0)
  FLAGCORE_CHECK_ARG(f >= 0 && f < p, "nnm_matrix: f must be in [0, p - 1 = " << p - 1 << "], got " << f);
  const int64_t pe = mark_nonfinite(G, p, excluded);
  fill_parallel(M, p * p, 0.0);
  if (pe == 0) return;
  const int64_t k = pe - f_effective(f, p, pe);
  const auto D = uninit_array<double>(p * p);  // written in full
  squared_distances(G, p, distance_scale(G, p, excluded), D.get());
  const std::vector<int64_t> act = active_list(excluded, p);
  // The k nearest as a set (their order does not matter): a selection by (distance, index),
  // i.e. the first k of a stable sort, in O(pe) per row.
  for_rows(pe, pe * 4, [&](int64_t ai) {
    const int64_t i = act[ai];
    std::vector<int64_t> order = act;
    auto key = [&](int64_t a) { return a == i ? -1.0 : D[i * p + a]; };
    std::nth_element(order.begin(), order.begin() + (k - 1), order.end(), [&](int64_t a, int64_t b) {
      const double da = key(a), db = key(b);
      return da < db || (da == db && a < b);
    });
    for (int64_t j = 0; j < k; ++j) M[i * p + order[j]] = 1.0 / double(k);
  });
}

template <typename T>
void mix_rows_cpu(const T* const* xs, int64_t m, const T* A, const T* div, int64_t p_out, int64_t n,
                  T* const* out) {
  if (p_out <= 0 || n <= 0) return;
  using Fn =
      void (*)(const T* const*, int64_t, const T*, const T*, int64_t, int64_t, int64_t, int64_t, T* const*);
  const Fn kernel = FLAGCORE_SIMD_PICK(Fn, mix_rows);
  // Column block: its packed panels (m x cols) take ~512 KiB (L2); a multiple of 192 columns (of
  // every register tile width). The kernel packs the block once and polls for Ctrl-C every 64
  // output rows.
  const int64_t cols = std::max<int64_t>(
      192, std::min<int64_t>(4032, (int64_t(1) << 19) / (std::max<int64_t>(m, 1) * int64_t(sizeof(T)))) /
               192 * 192);
  const int64_t tasks = (n + cols - 1) / cols;
  parallel_for(static_cast<size_t>(tasks), [&](size_t t) {
    const int64_t k0 = static_cast<int64_t>(t) * cols;
    const int64_t len = std::min(cols, n - k0);
    kernel(xs, m, A, div, 0, p_out, k0, len, out);
  });
}

template void mix_rows_cpu<float>(const float* const*, int64_t, const float*, const float*, int64_t, int64_t,
                                  float* const*);
template void mix_rows_cpu<double>(const double* const*, int64_t, const double*, const double*, int64_t,
                                   int64_t, double* const*);

}  // namespace flagcore
