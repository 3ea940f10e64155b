// Dense linear algebra on small matrices (p x p, p up to kJacobiMaxP = 32 in the FA), float64, row-major.
// Header-only and marked host/device, written against a team (common/team.hpp), so the CPU
// path (one thread) and the CUDA kernels (one block per matrix) run the same code.
#pragma once
#include <math.h>

#include "common/check.hpp"
#include "common/team.hpp"

namespace flagcore {
namespace linalg {

// Scratch (doubles) that jacobi_eigh needs beside its arguments.
FLAGCORE_HD inline int jacobi_scratch(int n) {
  return 6 * n + 4;
}

// Pair k of round r of the round-robin ("circle") schedule on m (even) indices: over the m - 1
// rounds every pair of indices meets exactly once, and the m / 2 pairs of a round are disjoint.
FLAGCORE_HD inline void round_robin_pair(int m, int r, int k, int& x, int& y) {
  int a, b;
  if (k == 0) {
    a = m - 1;
    b = r;
  } else {
    a = (r + k) % (m - 1);
    b = (r - k + (m - 1)) % (m - 1);
  }
  x = a < b ? a : b;
  y = a < b ? b : a;
}

// Ordering key for the eigenvalue sort: NaN sorts last.
FLAGCORE_HD inline double eig_key(double v) {
  return isnan(v) ? -INFINITY : v;
}

// Symmetric eigendecomposition by Jacobi rotations in round-robin order (parallel Jacobi: the
// n/2 rotations of a round touch disjoint index pairs, so a team applies them at once).
//   a       : n x n symmetric, destroyed                                               // [N, N]
//   evals   : n eigenvalues, sorted descending (NaN last)                              // [N]
//   evecs   : n x n, column k is the unit eigenvector of evals[k]                      // [N, N]
//   scratch : jacobi_scratch(n) doubles
// Every thread of the team returns the number of sweeps used; the outputs are complete when it
// returns (it ends with a sync). Accurate to working precision on every eigenvalue, which the
// rank test needs; O(n^3) per sweep, ~6-10 sweeps.
template <class Team>
FLAGCORE_HD inline int jacobi_eigh(const Team& t, double* a, int n, double* evals, double* evecs,
                                   double* scratch, int max_sweeps = 60) {
  const int r0 = t.rank(), nt = t.size();
  const int m = n + (n & 1);  // odd n: one phantom index (n) that never rotates
  const int half = m / 2;
  double* cs = scratch;          // [m]: (c, s) per pair of the round
  double* rowoff = scratch + m;  // [n]
  double* rowtot = rowoff + n;   // [n]
  double* dval = rowtot + n;     // [n] (after the sweeps)
  double* rank = dval + n;       // [n]
  double* pairs = rank + n;      // [m]: the round's pairs (x, y), as exact small integers
  for (int w = r0; w < n * n; w += nt) evecs[w] = (w / n == w % n) ? 1.0 : 0.0;
  t.sync();
  int sweep = 0;
  for (; sweep < max_sweeps; ++sweep) {
    t.poll();
    for (int i = r0; i < n; i += nt) {
      double off = 0.0, tot = 0.0;
      for (int j = 0; j < n; ++j) {
        const double v = a[i * n + j] * a[i * n + j];
        tot += v;
        if (i != j) off += v;
      }
      rowoff[i] = off;
      rowtot[i] = tot;
    }
    t.sync();
    double off = 0.0, total = 0.0;  // every thread sums in the same order
    for (int i = 0; i < n; ++i) {
      off += rowoff[i];
      total += rowtot[i];
    }
    if (!(off > 1e-32 * total) || off < 1e-300) break;  // also stops on NaN
    for (int rd = 0; rd < m - 1; ++rd) {
      for (int k = r0; k < half; k += nt) {
        int x, y;
        round_robin_pair(m, rd, k, x, y);
        double c = 1.0, s = 0.0;  // s == 0 marks "no rotation"
        if (y < n) {
          const double apq = a[x * n + y];
          if (!(fabs(apq) < 1e-300)) {
            const double app = a[x * n + x], aqq = a[y * n + y];
            const double theta = (aqq - app) / (2.0 * apq);
            double tt;
            if (fabs(theta) > 1e150) {
              tt = 0.5 / theta;
            } else {
              tt = 1.0 / (fabs(theta) + sqrt(theta * theta + 1.0));
              if (theta < 0.0) tt = -tt;
            }
            c = 1.0 / sqrt(tt * tt + 1.0);
            s = tt * c;
          }
        }
        cs[2 * k] = c;
        cs[2 * k + 1] = s;
        pairs[2 * k] = x;
        pairs[2 * k + 1] = y;
      }
      t.sync();
      // A <- J^T A J, one 2 x 2 block (pair P rows, pair Q columns) per item: the blocks are
      // disjoint and each reads only itself. Then evecs <- evecs J, one (row, pair) per item.
      const int nblocks = half * half;
      const int items = nblocks + n * half;
      for (int w = r0; w < items; w += nt) {
        if (w < nblocks) {
          const int P = w / half, Q = w % half;
          const int x1 = static_cast<int>(pairs[2 * P]), y1 = static_cast<int>(pairs[2 * P + 1]);
          const int x2 = static_cast<int>(pairs[2 * Q]), y2 = static_cast<int>(pairs[2 * Q + 1]);
          const double c1 = cs[2 * P], s1 = cs[2 * P + 1];
          const double c2 = cs[2 * Q], s2 = cs[2 * Q + 1];
          if (s1 == 0.0 && s2 == 0.0) continue;
          const bool vy1 = y1 < n, vy2 = y2 < n;
          double b00 = a[x1 * n + x2];
          double b01 = vy2 ? a[x1 * n + y2] : 0.0;
          double b10 = vy1 ? a[y1 * n + x2] : 0.0;
          double b11 = (vy1 && vy2) ? a[y1 * n + y2] : 0.0;
          if (s1 != 0.0) {  // rows: J^T B
            const double t00 = c1 * b00 - s1 * b10, t01 = c1 * b01 - s1 * b11;
            const double t10 = s1 * b00 + c1 * b10, t11 = s1 * b01 + c1 * b11;
            b00 = t00;
            b01 = t01;
            b10 = t10;
            b11 = t11;
          }
          if (s2 != 0.0) {  // columns: B J
            const double t00 = c2 * b00 - s2 * b01, t01 = s2 * b00 + c2 * b01;
            const double t10 = c2 * b10 - s2 * b11, t11 = s2 * b10 + c2 * b11;
            b00 = t00;
            b01 = t01;
            b10 = t10;
            b11 = t11;
          }
          if (P == Q) {  // the rotated pair itself: its off-diagonal entry is zero by design
            b01 = 0.0;
            b10 = 0.0;
          }
          a[x1 * n + x2] = b00;
          if (vy2) a[x1 * n + y2] = b01;
          if (vy1) a[y1 * n + x2] = b10;
          if (vy1 && vy2) a[y1 * n + y2] = b11;
        } else {
          const int v = w - nblocks;
          const int row = v / half, Q = v % half;
          const double c2 = cs[2 * Q], s2 = cs[2 * Q + 1];
          if (s2 == 0.0) continue;
          const int x2 = static_cast<int>(pairs[2 * Q]), y2 = static_cast<int>(pairs[2 * Q + 1]);
          const double vp = evecs[row * n + x2], vq = evecs[row * n + y2];
          evecs[row * n + x2] = c2 * vp - s2 * vq;
          evecs[row * n + y2] = s2 * vp + c2 * vq;
        }
      }
      t.sync();
    }
  }
  // Sort descending (NaN last, ties by index): each value's rank is its position.
  for (int i = r0; i < n; i += nt) dval[i] = a[i * n + i];
  t.sync();
  for (int w = r0; w < n * n; w += nt) a[w] = evecs[w];  // a is free now: the unsorted vectors
  for (int i = r0; i < n; i += nt) {
    const double ki = eig_key(dval[i]);
    int rk = 0;
    for (int j = 0; j < n; ++j) {
      const double kj = eig_key(dval[j]);
      if (kj > ki || (kj == ki && j < i)) ++rk;
    }
    rank[i] = rk;
  }
  t.sync();
  for (int w = r0; w < n * n; w += nt) {
    const int row = w / n, i = w % n;
    evecs[row * n + static_cast<int>(rank[i])] = a[w];
  }
  for (int i = r0; i < n; i += nt) evals[static_cast<int>(rank[i])] = dval[i];
  t.sync();
  return sweep;
}

}  // namespace linalg
}  // namespace flagcore
