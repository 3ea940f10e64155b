// The Flag Aggregator's IRLS on one p x p Gram matrix (the "p-space" form of docs/spec_fa.md).
//
// Inputs
//   graw : p x p Gram matrix of the raw gradients, float64, both triangles        // [P, P]
//   prm  : r (subspace dimension, 1 <= r), lam (pairwise term), max_iter >= 1, eps, tol,
//          scale (0 = "paper": (1/r) sum_i Y Y^T x_i; 1 = "median_norm": the same direction
//          with the median norm of the finite workers).
//   work : flag_irls_workspace(p) doubles of scratch (shared memory on the GPU when it fits).
//   team : the threads that run this problem (common/team.hpp): SerialTeam on the CPU, one CUDA
//          block on the GPU. Every loop is split over the team with one owner per output element
//          and a fixed order inside it, so the result does not depend on the team size.
// Outputs (FlagIrlsOut, each pointer to caller-owned memory)
//   coef       : p coefficients on the RAW rows: aggregate = sum_i coef[i] * g_i       // [P]
//   weights    : IRLS weights (|1 - v_i| + eps)^(-1/2) at the final iterate, 0 if excluded
//   ratios     : reconstruction ratios v_i = ||Y^T x_i||^2 at the final iterate        // [P]
//   objective  : objective_cap (>= 1) values: F at the initial point (all v_i = 0), then after
//                each step while it fits; entries after the last step taken are NOT written
//                (the caller pads them)                                              // [cap]
//   excluded   : 1 for workers whose squared norm is not finite (NaN/Inf in the data) // [P]
//   iterations : steps taken (eigen-solves); rejected : 1 if the last step increased F and
//                was discarded; rank : dimension q <= r of the subspace used.
//
// Semantics (docs/spec_fa.md): normalised x_i = g_i / max(||g_i||, 1e-12); uniform initial weights
// (the reference code's random start gives equal weights to within r/n); IRLS weights
// (|1 - v_i| + eps)^(-1/2), pair weights mu^2 (|1 - ||Y^T(x_i - x_j)||^2| + eps)^(-1/2) with
// mu = lam / (p'(p'-1)) over ordered pairs of the p' finite workers; stop after max_iter steps,
// when F decreases by at most tol, or when F <= tol; a step that does not decrease F is
// rejected and the previous iterate kept. The first step is always accepted (its start point is
// the implicit all-orthogonal one).
#pragma once
#include <math.h>
#include <stdint.h>

#include "common/check.hpp"
#if !defined(__CUDA_ARCH__)
#include "common/blas.hpp"
#include "common/parallel.hpp"
#endif
#include "common/small_linalg.hpp"
#include "common/team.hpp"

namespace flagcore {

struct FlagParams {
  int64_t r = 1;
  double lam = 0.0;
  int max_iter = 1;
  double eps = 1e-7;
  double tol = 1e-10;
  int scale = 0;  // 0 paper, 1 median_norm
};

struct FlagIrlsOut {
  double* coef;
  double* weights;
  double* ratios;
  double* objective;
  uint8_t* excluded;
  int32_t* iterations;
  uint8_t* rejected;
  int32_t* rank;
  int64_t objective_cap;  // entries of `objective`; steps beyond it are not recorded
};

constexpr double kFlagNormFloor = 1e-12;  // as torch.nn.functional.normalize
constexpr double kFlagRankTol = 1e-12;    // eigenvalues of K below this * largest are dropped
// scale = "median_norm": an aggregate whose norm is at most this fraction of ||sum_i x_i|| / r
// (normalised x_i) is taken as 0 instead of being rescaled to the median norm
constexpr double kFlagMedianNormFloor = 1e-3;
// Largest p solved by the team-parallel Jacobi eigensolver (CPU and GPU alike, so both agree
// bitwise); above it the host LAPACK (common/blas.hpp), and the GPU hands the IRLS to the host.
constexpr int kJacobiMaxP = 32;
// Largest lam accepted: mu^2 = (lam / (p (p - 1)))^2 and the pair weights mu^2 / sqrt(eps) must
// stay finite in float64 (above ~1e155 mu^2 overflows and every weight becomes Inf).
constexpr double kFlagMaxLam = 1e150;
// Largest max_iter accepted (the Python API's bound): the objective history holds max_iter + 1
// values, and a larger cap would only reserve memory that no run of steps reaches.
constexpr int kFlagMaxIter = 1000000;

// Scratch doubles for one problem: 10 p x p matrices, 4 vectors, the Jacobi scratch, one vector
// of per-row partial sums and a few scalars.
FLAGCORE_HD inline int64_t flag_irls_workspace(int64_t p) {
  return 10 * p * p + 5 * p + linalg::jacobi_scratch(static_cast<int>(p)) + 8;
}

namespace detail {

// Whether this team does the p x p work with the host LAPACK/BLAS (common/blas.hpp): one host
// thread and p above kJacobiMaxP. Below, and on the GPU, the team-parallel Jacobi solver.
template <class Team>
FLAGCORE_HD inline bool use_host_blas(const Team&, int p) {
#if defined(__CUDA_ARCH__)
  (void)p;
  return false;
#else
  return Team::host_blas && p > kJacobiMaxP;
#endif
}

// Eigenpairs of the symmetric K (destroyed on the Jacobi path): ev descending, column k of U
// the vector of ev[k], for k < want at least (all p on the Jacobi path). Ends with a sync.
template <class Team>
FLAGCORE_HD inline void flag_eigh(const Team& t, double* K, int p, int want, double* ev, double* U,
                                  double* jac) {
#if !defined(__CUDA_ARCH__)
  if (use_host_blas(t, p)) {
    blas::eigh_top(K, p, want, ev, U);
    return;
  }
#endif
  (void)want;
  linalg::jacobi_eigh(t, K, p, ev, U, jac);
}

#if !defined(__CUDA_ARCH__)
// The host path of flag_solve without the pairwise term (M = diag(w)). With D = diag(sqrt(w)),
// K = D G D and its top pairs K u_k = l_k u_k: C = D U L^(-1/2) and, since G D u_k = l_k D^(-1) u_k
// on the rows with w_i > 0 (the others, excluded workers, have zero rows in G, so P's column i is
// 0), P = C^T G = L^(1/2) U^T D^(-1). That is O(p q) instead of the p x p x q product C^T G (as
// many flops as the eigensolver's back-transformation), and more accurate for small l_k (no
// rounding error of G C divided by sqrt(l_k)). Loops run row by row (cache order).
inline int flag_solve_host_diag(const double* G, int p, int r, const double* w, double* K, double* U,
                                double* ev, double* rows, double* tmp, double* C, double* P) {
  for (int i = 0; i < p; ++i) rows[i] = sqrt(w[i]);
  // K_ij = r_i (G_ij r_j), made exactly symmetric (the mean of K_ij and K_ji) for the solver, in
  // one pass over G: tiles of kTile x kTile, the task of row tile i0 writes its rows right of
  // the diagonal and their mirror entries (disjoint between tasks), on the InnerThreads threads
  constexpr int kTile = 32;  // transposed accesses in tiles that stay in cache
  parallel_blocks(
      p, kTile,
      [&](int64_t b0, int64_t b1) {
        const int i0 = static_cast<int>(b0), i1 = static_cast<int>(b1);
        for (int j0 = i0; j0 < p; j0 += kTile) {
          const int j1 = j0 + kTile < p ? j0 + kTile : p;
          for (int i = i0; i < i1; ++i) {
            const double ri = rows[i];
            const double* gi = G + static_cast<int64_t>(i) * p;
            double* ki = K + static_cast<int64_t>(i) * p;
            if (j0 == i0) ki[i] = ri * (gi[i] * ri);
            for (int j = (j0 > i + 1 ? j0 : i + 1); j < j1; ++j) {
              const double rj = rows[j];
              const double s = 0.5 * (ri * (gi[j] * rj) + rj * (G[static_cast<int64_t>(j) * p + i] * ri));
              ki[j] = s;
              K[static_cast<int64_t>(j) * p + i] = s;
            }
          }
        }
      },
      blas::inner_threads());
  const int qmax = r < p ? r : p;
  blas::eigh_top(K, p, qmax, ev, U);
  int q = 0;
  if (ev[0] > 0.0 && isfinite(ev[0])) {
    while (q < qmax && ev[q] > kFlagRankTol * ev[0]) ++q;
  }
  double* sq = tmp;
  double* isq = tmp + p;  // 1 / sq, once per value (the same quotient the loop below took per entry)
  for (int k = 0; k < q; ++k) {
    sq[k] = sqrt(ev[k]);
    isq[k] = 1.0 / sq[k];
  }
  parallel_blocks(
      p, kTile,
      [&](int64_t i0, int64_t i1) {  // rows of C, columns of P
        for (int64_t i = i0; i < i1; ++i) {
          const double* u = U + i * p;
          double* c = C + i * p;
          for (int k = 0; k < q; ++k) c[k] = (rows[i] * u[k]) * isq[k];
        }
        for (int k = 0; k < q; ++k) {
          double* pk = P + static_cast<int64_t>(k) * p;
          for (int64_t i = i0; i < i1; ++i) pk[i] = rows[i] > 0.0 ? U[i * p + k] * sq[k] / rows[i] : 0.0;
        }
      },
      blas::inner_threads());
  return q;
}
#endif

// One weighted solve: C (p x q, C[i * p + k] = C_ik for k < q) and P = C^T G (q x p,
// P[k * p + i]). Returns q (the same in every thread); ends with a sync.
// Without the pairwise term M^(1/2) is diagonal: K = D G D and C = D U diag(1/S) are formed
// elementwise (O(p^2)); with it, M^(1/2) is a full matrix (one more eigensolve, two products).
template <class Team>
FLAGCORE_HD inline int flag_solve(const Team& t, const double* G, int p, int r, bool pairs, const double* w,
                                  const double* V, double* Mh, double* K, double* U, double* ev, double* tmp,
                                  double* rows, double* jac, double* C, double* P) {
  const int r0 = t.rank(), nt = t.size();
  const int pp = p * p;
  const bool blas = use_host_blas(t, p);
  (void)blas;
#if !defined(__CUDA_ARCH__)
  if (blas && !pairs) return flag_solve_host_diag(G, p, r, w, K, U, ev, rows, tmp, C, P);
#endif
  if (!pairs) {
    for (int i = r0; i < p; i += nt) rows[i] = sqrt(w[i]);  // the diagonal of M^(1/2)
    t.sync();
    for (int e = r0; e < pp; e += nt) {
      const int i = e / p, j = e % p;
      K[e] = rows[i] * (G[e] * rows[j]);
    }
  } else {
    // M = diag(w) + 2 (Diag(V 1) - V): the pairwise terms form a weighted graph Laplacian.
    for (int i = r0; i < p; i += nt) {
      double rowsum = 0.0;
      for (int j = 0; j < p; ++j) rowsum += V[i * p + j];
      rows[i] = rowsum;
    }
    t.sync();
    for (int e = r0; e < pp; e += nt) {
      const int i = e / p, j = e % p;
      K[e] = (i == j) ? w[i] + 2.0 * rows[i] - 2.0 * V[e] : -2.0 * V[e];
    }
    t.sync();
    flag_eigh(t, K, p, p, ev, U, jac);
#if !defined(__CUDA_ARCH__)
    if (blas) {  // Mh = U diag(sqrt(ev)) U^T; K = Mh G Mh
      for (int i = 0; i < p; ++i)
        for (int k = 0; k < p; ++k) tmp[i * p + k] = U[i * p + k] * sqrt(ev[k] > 0.0 ? ev[k] : 0.0);
      blas::dgemm_rm(false, true, p, p, p, 1.0, tmp, p, U, p, 0.0, Mh, p);
      blas::dgemm_rm(false, false, p, p, p, 1.0, G, p, Mh, p, 0.0, tmp, p);
      blas::dgemm_rm(false, false, p, p, p, 1.0, Mh, p, tmp, p, 0.0, K, p);
    } else
#endif
    {
      for (int e = r0; e < pp; e += nt) {
        const int i = e / p, j = e % p;
        double s = 0.0;
        for (int k = 0; k < p; ++k) s += U[i * p + k] * sqrt(ev[k] > 0.0 ? ev[k] : 0.0) * U[j * p + k];
        Mh[e] = s;
      }
      t.sync();
      for (int e = r0; e < pp; e += nt) {
        const int i = e / p, j = e % p;
        double s = 0.0;
        for (int k = 0; k < p; ++k) s += G[i * p + k] * Mh[k * p + j];
        tmp[e] = s;
      }
      t.sync();
      for (int e = r0; e < pp; e += nt) {
        const int i = e / p, j = e % p;
        double s = 0.0;
        for (int k = 0; k < p; ++k) s += Mh[i * p + k] * tmp[k * p + j];
        K[e] = s;
      }
    }
  }
  t.sync();
  for (int e = r0; e < pp; e += nt) {  // exact symmetry for the solvers; item (i < j) owns both
    const int i = e / p, j = e % p;
    if (i < j) {
      const double s = 0.5 * (K[i * p + j] + K[j * p + i]);
      K[i * p + j] = s;
      K[j * p + i] = s;
    }
  }
  t.sync();
  const int qmax = r < p ? r : p;
  flag_eigh(t, K, p, qmax, ev, U, jac);
  int q = 0;
  if (ev[0] > 0.0 && isfinite(ev[0])) {
    while (q < qmax && ev[q] > kFlagRankTol * ev[0]) ++q;
  }
  if (!pairs) {
    for (int e = r0; e < p * q; e += nt) {
      const int i = e / q, k = e % q;
      C[i * p + k] = (rows[i] * U[i * p + k]) * (1.0 / sqrt(ev[k]));
    }
  } else {
#if !defined(__CUDA_ARCH__)
    if (blas) {
      if (q > 0) blas::dgemm_rm(false, false, p, q, p, 1.0, Mh, p, U, p, 0.0, C, p);
      for (int i = 0; i < p; ++i)
        for (int k = 0; k < q; ++k) C[i * p + k] *= 1.0 / sqrt(ev[k]);
    } else
#endif
    {
      for (int e = r0; e < p * q; e += nt) {
        const int i = e / q, k = e % q;
        const double inv = 1.0 / sqrt(ev[k]);
        double s = 0.0;
        for (int m = 0; m < p; ++m) s += Mh[i * p + m] * U[m * p + k];
        C[i * p + k] = s * inv;
      }
    }
  }
  t.sync();
#if !defined(__CUDA_ARCH__)
  if (blas) {
    if (q > 0) blas::dgemm_rm(true, false, q, p, p, 1.0, C, p, G, p, 0.0, P, p);
    return q;
  }
#endif
  for (int e = r0; e < q * p; e += nt) {
    const int k = e / p, i = e % p;
    double s = 0.0;
    for (int m = 0; m < p; ++m) s += C[m * p + k] * G[m * p + i];
    P[k * p + i] = s;
  }
  t.sync();
  return q;
}

FLAGCORE_HD inline double flag_ratio(const double* P, int q, int p, int i) {
  double v = 0.0;
  for (int k = 0; k < q; ++k) v += P[k * p + i] * P[k * p + i];
  return v;
}

FLAGCORE_HD inline double flag_pair_dist(const double* P, int q, int p, int i, int j) {
  double d = 0.0;
  for (int k = 0; k < q; ++k) {
    const double t = P[k * p + i] - P[k * p + j];
    d += t * t;
  }
  return d;
}

// v_i = ||P_i||^2 for every worker into v (the same k-ordered sums as flag_ratio). Ends with a
// sync.
template <class Team>
FLAGCORE_HD inline void flag_ratios(const Team& t, const double* P, int q, int p, double* v) {
#if !defined(__CUDA_ARCH__)
  if (use_host_blas(t, p)) {  // row by row of P (cache order), the same sum for each worker
    for (int i = 0; i < p; ++i) v[i] = 0.0;
    for (int k = 0; k < q; ++k) {
      const double* pk = P + static_cast<int64_t>(k) * p;
      for (int i = 0; i < p; ++i) v[i] += pk[i] * pk[i];
    }
    return;
  }
#endif
  for (int i = t.rank(); i < p; i += t.size()) v[i] = flag_ratio(P, q, p, i);
  t.sync();
}

#if !defined(__CUDA_ARCH__)
// Host path: the pair distances ||P_i - P_j||^2 = v_i + v_j - 2 (P^T P)_ij, with P^T P by one
// dgemm into D (p x p) instead of p^2 strided q-term loops (O(p^2 q) either way, level-3 here).
inline void flag_pair_dists_host(const double* P, const double* v, int q, int p, double* D) {
  if (q > 0) {
    blas::dgemm_rm(true, false, p, p, q, 1.0, P, p, P, p, 0.0, D, p);
  } else {
    for (int64_t e = 0; e < int64_t(p) * p; ++e) D[e] = 0.0;
  }
  for (int i = 0; i < p; ++i) {
    double* d = D + static_cast<int64_t>(i) * p;
    for (int j = 0; j < p; ++j) d[j] = (v[i] + v[j]) - 2.0 * d[j];
  }
}
#endif

// F = sum_i sqrt(max(0, 1 - v_i)) + mu^2 sum_{i != j} sqrt(|1 - ||P_i - P_j||^2|), v from
// flag_ratios: one term per worker in parallel, then the same sequential sum in every thread.
// D: p x p scratch (the host path's pair distances). Ends with a sync.
template <class Team>
FLAGCORE_HD inline double flag_objective(const Team& t, const double* P, const double* v, int q, int p,
                                         const uint8_t* bad, double mu2, double* rows, double* D) {
  bool dist = false;  // pair distances precomputed in D
#if !defined(__CUDA_ARCH__)
  if (mu2 > 0.0 && use_host_blas(t, p)) {
    flag_pair_dists_host(P, v, q, p, D);
    dist = true;
  }
#else
  (void)D;
#endif
  for (int i = t.rank(); i < p; i += t.size()) {
    double term = 0.0;
    if (!bad[i]) {
      term = sqrt(1.0 - v[i] > 0.0 ? 1.0 - v[i] : 0.0);
      if (mu2 > 0.0)
        for (int j = 0; j < p; ++j) {
          if (i == j || bad[j]) continue;
          const double d = dist ? D[i * p + j] : flag_pair_dist(P, q, p, i, j);
          term += mu2 * sqrt(fabs(1.0 - d));
        }
    }
    rows[i] = term;
  }
  t.sync();
  double F = 0.0;
  for (int i = 0; i < p; ++i) F += rows[i];
  t.sync();  // rows may be overwritten next
  return F;
}

}  // namespace detail

template <class Team>
FLAGCORE_HD inline void flag_irls(const Team& t, const double* graw, int p, const FlagParams& prm,
                                  double* work, FlagIrlsOut out) {
  const int r0 = t.rank(), nt = t.size();
  const int pp = p * p;
  double* G = work;
  double* Mh = G + pp;
  double* K = Mh + pp;
  double* U = K + pp;
  double* tmp = U + pp;
  double* V = tmp + pp;
  double* C = V + pp;
  double* P = C + pp;
  double* Cn = P + pp;
  double* Pn = Cn + pp;
  double* ev = Pn + pp;
  double* s = ev + p;
  double* w = s + p;
  double* a = w + p;
  double* rows = a + p;
  double* jac = rows + p;
  double* scal = jac + linalg::jacobi_scratch(p);
  uint8_t* bad = out.excluded;

  for (int i = r0; i < p; i += nt) {
    const double d = graw[i * p + i];
    bad[i] = (isfinite(d) && d >= 0.0) ? 0 : 1;
    s[i] = bad[i] ? 0.0 : sqrt(d);
  }
  t.sync();
  int pv = 0;
  for (int i = 0; i < p; ++i) pv += bad[i] ? 0 : 1;
  const double mu = (pv >= 2 && prm.lam > 0.0) ? prm.lam / (double(pv) * double(pv - 1)) : 0.0;
  const double mu2 = mu * mu;
  const bool pairs = mu2 > 0.0;
  // the normalised Gram G (and the pair weights V, read only with the pairwise term)
  auto init = [&](int i, int j, int e) {
    double g = 0.0;
    if (!bad[i] && !bad[j]) {
      const double si = s[i] > kFlagNormFloor ? s[i] : kFlagNormFloor;
      const double sj = s[j] > kFlagNormFloor ? s[j] : kFlagNormFloor;
      g = graw[e] / si / sj;
    }
    G[e] = g;
    if (pairs) V[e] = (i != j && !bad[i] && !bad[j]) ? mu2 : 0.0;
  };
#if !defined(__CUDA_ARCH__)
  if (detail::use_host_blas(t, p)) {  // one host thread: blocks of rows on its InnerThreads
    constexpr int kRows = 32;
    parallel_blocks(
        p, kRows,
        [&](int64_t i0, int64_t i1) {
          for (int i = static_cast<int>(i0); i < i1; ++i)
            for (int j = 0; j < p; ++j) init(i, j, i * p + j);
        },
        blas::inner_threads());
  } else
#endif
    for (int e = r0; e < pp; e += nt) init(e / p, e % p, e);
  for (int i = r0; i < p; i += nt) w[i] = bad[i] ? 0.0 : 1.0;
  double F_prev = double(pv) + mu2 * double(pv) * double(pv - 1 > 0 ? pv - 1 : 0);
  if (r0 == 0) {
    out.objective[0] = F_prev;  // entries after the last step are the caller's (NaN padding)
    *out.iterations = 0;
    *out.rejected = 0;
  }
  t.sync();
  int q = 0;
  if (pv > 0) {
    for (int it = 1; it <= prm.max_iter; ++it) {
      t.poll();
      const int qn = detail::flag_solve(t, G, p, static_cast<int>(prm.r), pairs, w, V, Mh, K, U, ev, tmp,
                                        rows, jac, Cn, Pn);
      // the ratios of the new iterate into `a` (free until the end): the objective's and, if the
      // step is accepted, the next weights'
      detail::flag_ratios(t, Pn, qn, p, a);
      const double Fn = detail::flag_objective(t, Pn, a, qn, p, bad, mu2, rows, tmp);
      if (r0 == 0) {
        if (it < out.objective_cap) out.objective[it] = Fn;
        *out.iterations = it;
      }
      if (it > 1 && !(Fn < F_prev)) {
        if (r0 == 0) *out.rejected = 1;
        break;
      }
      q = qn;
      double* sw = C;  // accept: the new iterate becomes the current one (pointer swap)
      C = Cn;
      Cn = sw;
      sw = P;
      P = Pn;
      Pn = sw;
      if (!(F_prev - Fn > prm.tol) || !(Fn > prm.tol)) break;
      F_prev = Fn;
      if (it == prm.max_iter) break;
      for (int i = r0; i < p; i += nt) w[i] = bad[i] ? 0.0 : 1.0 / sqrt(fabs(1.0 - a[i]) + prm.eps);
      if (pairs) {
        bool dist = false;  // pair distances of P in tmp (host path)
#if !defined(__CUDA_ARCH__)
        if (detail::use_host_blas(t, p)) {
          detail::flag_pair_dists_host(P, a, q, p, tmp);
          dist = true;
        }
#endif
        for (int e = r0; e < pp; e += nt) {
          const int i = e / p, j = e % p;
          const double d = dist ? tmp[e] : detail::flag_pair_dist(P, q, p, i, j);
          V[e] = (i != j && !bad[i] && !bad[j]) ? mu2 / sqrt(fabs(1.0 - d) + prm.eps) : 0.0;
        }
      }
      t.sync();
    }
  }
  t.sync();
  if (r0 == 0) *out.rank = q;
  // a = C (P 1) / r on the normalised gradients.
  for (int k = r0; k < q; k += nt) {
    double pk = 0.0;
    for (int i = 0; i < p; ++i) pk += P[k * p + i];
    rows[k] = pk;
  }
  t.sync();
  for (int i = r0; i < p; i += nt) {
    double ai = 0.0;
    for (int k = 0; k < q; ++k) ai += C[i * p + k] * rows[k];
    a[i] = ai / double(prm.r);
  }
  t.sync();
  if (prm.scale == 1) {
    // rows: a_i (G a)_i, summing to ||agg||^2; w (free now): the row sums of G, summing to
    // ||s||^2, s = sum_i x_i the sum of the normalised gradients (excluded rows of G are 0)
    for (int i = r0; i < p; i += nt) {
      double ri = 0.0, gi = 0.0;
      for (int j = 0; j < p; ++j) {
        ri += a[i] * G[i * p + j] * a[j];
        gi += G[i * p + j];
      }
      rows[i] = ri;
      w[i] = gi;
    }
    t.sync();
    if (r0 == 0) {
      double n2 = 0.0, s2 = 0.0;
      for (int i = 0; i < p; ++i) {
        n2 += rows[i];
        s2 += w[i];
      }
      // median of the finite workers' norms (midpoint for an even count); tmp as scratch
      int m = 0;
      for (int i = 0; i < p; ++i)
        if (!bad[i]) tmp[m++] = s[i];
      for (int i = 1; i < m; ++i) {  // insertion sort: p is small
        const double x = tmp[i];
        int j = i - 1;
        while (j >= 0 && tmp[j] > x) {
          tmp[j + 1] = tmp[j];
          --j;
        }
        tmp[j + 1] = x;
      }
      const double med = m == 0 ? 0.0 : (m % 2 ? tmp[m / 2] : 0.5 * (tmp[m / 2 - 1] + tmp[m / 2]));
      // agg = Y Y^T s / r: when it keeps less than kFlagMedianNormFloor of s / r the workers'
      // normalised gradients cancel inside the subspace (two anti-correlated workers: exactly
      // 0), what is left is rounding noise (float32 Gram entries carry ~1e-7), and rescaling it
      // to the median norm made a full-size step of noise that changed with the order of the
      // coordinates: the aggregate is 0 then, as for an exact 0
      const double floor2 = kFlagMedianNormFloor * kFlagMedianNormFloor * (s2 > 0.0 ? s2 : 0.0) /
                            (double(prm.r) * double(prm.r));
      scal[0] = (n2 > floor2 && n2 > 0.0 && isfinite(n2)) ? med / sqrt(n2) : 0.0;
    }
    t.sync();
    const double factor = scal[0];
    for (int i = r0; i < p; i += nt) a[i] *= factor;
    t.sync();
  }
  detail::flag_ratios(t, P, q, p, out.ratios);
  for (int i = r0; i < p; i += nt) {
    const double si = s[i] > kFlagNormFloor ? s[i] : kFlagNormFloor;
    out.coef[i] = bad[i] ? 0.0 : a[i] / si;
    const double v = bad[i] ? 0.0 : out.ratios[i];
    out.ratios[i] = v;
    out.weights[i] = bad[i] ? 0.0 : 1.0 / sqrt(fabs(1.0 - v) + prm.eps);
  }
}

// One thread (the CPU path).
FLAGCORE_HD inline void flag_irls(const double* graw, int p, const FlagParams& prm, double* work,
                                  FlagIrlsOut out) {
  flag_irls(SerialTeam{}, graw, p, prm, work, out);
}

}  // namespace flagcore
