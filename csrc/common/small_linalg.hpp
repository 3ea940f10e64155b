// Dense linear algebra on small matrices (p x p, p up to a few hundred), float64, row-major.
// Header-only and marked host/device so the CPU path and the CUDA kernels share the same code.
#pragma once
#include <math.h>

#include "common/check.hpp"

namespace flagcore {
namespace linalg {

// Symmetric eigendecomposition by cyclic Jacobi rotations.
//   a     : n x n symmetric, destroyed (its diagonal ends up holding the eigenvalues)  // [N, N]
//   evals : n eigenvalues, sorted descending                                           // [N]
//   evecs : n x n, column k is the unit eigenvector of evals[k]                        // [N, N]
// Returns the number of sweeps used. Jacobi is slow for large n (O(n^3) per sweep, ~6-10
// sweeps) but accurate to working precision on every eigenvalue, which the rank test needs.
FLAGCORE_HD inline int jacobi_eigh(double* a, int n, double* evals, double* evecs,
                                   int max_sweeps = 60) {
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) evecs[i * n + j] = (i == j) ? 1.0 : 0.0;
  int sweep = 0;
  for (; sweep < max_sweeps; ++sweep) {
    double off = 0.0, total = 0.0;
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < n; ++j) {
        const double v = a[i * n + j] * a[i * n + j];
        total += v;
        if (i != j) off += v;
      }
    if (!(off > 1e-32 * total) || off < 1e-300) break;  // also stops on NaN
    for (int p = 0; p < n - 1; ++p)
      for (int q = p + 1; q < n; ++q) {
        const double apq = a[p * n + q];
        if (fabs(apq) < 1e-300) continue;
        const double app = a[p * n + p], aqq = a[q * n + q];
        const double theta = (aqq - app) / (2.0 * apq);
        double t;
        if (fabs(theta) > 1e150) {
          t = 0.5 / theta;
        } else {
          t = 1.0 / (fabs(theta) + sqrt(theta * theta + 1.0));
          if (theta < 0.0) t = -t;
        }
        const double c = 1.0 / sqrt(t * t + 1.0), s = t * c;
        for (int k = 0; k < n; ++k) {  // columns: A <- A J
          const double akp = a[k * n + p], akq = a[k * n + q];
          a[k * n + p] = c * akp - s * akq;
          a[k * n + q] = s * akp + c * akq;
        }
        for (int k = 0; k < n; ++k) {  // rows: A <- J^T A
          const double apk = a[p * n + k], aqk = a[q * n + k];
          a[p * n + k] = c * apk - s * aqk;
          a[q * n + k] = s * apk + c * aqk;
        }
        a[p * n + q] = 0.0;
        a[q * n + p] = 0.0;
        for (int k = 0; k < n; ++k) {
          const double vkp = evecs[k * n + p], vkq = evecs[k * n + q];
          evecs[k * n + p] = c * vkp - s * vkq;
          evecs[k * n + q] = s * vkp + c * vkq;
        }
      }
  }
  for (int i = 0; i < n; ++i) evals[i] = a[i * n + i];
  // Selection sort, descending, moving eigenvector columns along.
  for (int i = 0; i < n - 1; ++i) {
    int best = i;
    for (int j = i + 1; j < n; ++j)
      if (evals[j] > evals[best]) best = j;
    if (best != i) {
      const double tv = evals[i];
      evals[i] = evals[best];
      evals[best] = tv;
      for (int k = 0; k < n; ++k) {
        const double tmp = evecs[k * n + i];
        evecs[k * n + i] = evecs[k * n + best];
        evecs[k * n + best] = tmp;
      }
    }
  }
  return sweep;
}

}  // namespace linalg
}  // namespace flagcore
