#include "common/blas.hpp"

#include <cblas.h>

#include <cfloat>
#include <cmath>
#include <cstddef>
#include <limits>
#include <mutex>
#include <vector>

#include "common/cancel.hpp"
#include "common/check.hpp"

// LAPACK's Fortran entry points of the scipy-openblas32 build (32-bit integers, gfortran hidden
// string lengths at the end).
extern "C" {
void scipy_dsytrd_(const char* uplo, const int* n, double* a, const int* lda, double* d, double* e,
                   double* tau, double* work, const int* lwork, int* info, size_t);
void scipy_dstemr_(const char* jobz, const char* range, const int* n, double* d, double* e, const double* vl,
                   const double* vu, const int* il, const int* iu, int* m, double* w, double* z,
                   const int* ldz, const int* nzc, int* isuppz, int* tryrac, double* work, const int* lwork,
                   int* iwork, const int* liwork, int* info, size_t, size_t);
void scipy_dormtr_(const char* side, const char* uplo, const char* trans, const int* m, const int* n,
                   const double* a, const int* lda, const double* tau, double* c, const int* ldc,
                   double* work, const int* lwork, int* info, size_t, size_t, size_t);
void scipy_dsyevd_(const char* jobz, const char* uplo, const int* n, double* a, const int* lda, double* w,
                   double* work, const int* lwork, int* iwork, const int* liwork, int* info, size_t, size_t);
}

#ifndef FLAGCORE_OPENBLAS_VERSION
#define FLAGCORE_OPENBLAS_VERSION "unknown"
#endif

namespace flagcore {
namespace blas {
namespace {

void single_thread() {
  static std::once_flag once;
  std::call_once(once, [] { scipy_openblas_set_num_threads(1); });
}

struct EighScratch {
  std::vector<double> a, w, z, work, d, e, tau;
  std::vector<int> iwork, isuppz;
};

EighScratch& scratch() {
  thread_local EighScratch s;
  return s;
}

// MRRR for at most p / kMrrrMaxFraction wanted pairs; above, divide and conquer for all p is
// faster (measured on FA Grams: at p = 1024, MRRR + back-transformation of p/2 vectors 510 ms,
// dsyevd of all 433 ms, MRRR for p/8 263 ms; its deflation makes D&C cheap on these spectra).
constexpr int64_t kMrrrMaxFraction = 4;

template <class V>
void grow(V& v, size_t n) {
  if (v.size() < n) v.resize(n);
}

// Full decomposition by divide and conquer; ascending values in s.w, vectors in s.a (column-major).
int syevd(EighScratch& s, int p) {
  const char jobz = 'V', uplo = 'L';
  int lwork = -1, liwork = -1, info = 0, iw = 0;
  double wq = 0.0;
  scipy_dsyevd_(&jobz, &uplo, &p, s.a.data(), &p, s.w.data(), &wq, &lwork, &iw, &liwork, &info, 1, 1);
  lwork = static_cast<int>(wq) + 1;
  liwork = iw;
  grow(s.work, static_cast<size_t>(lwork));
  grow(s.iwork, static_cast<size_t>(liwork));
  scipy_dsyevd_(&jobz, &uplo, &p, s.a.data(), &p, s.w.data(), s.work.data(), &lwork, s.iwork.data(), &liwork,
                &info, 1, 1);
  return info;
}

// Top `want` pairs: Householder tridiagonalisation (dsytrd), MRRR on the tridiagonal for the
// wanted pairs only (dstemr, O(p * want), safe on clusters), back-transformation of those
// `want` vectors (dormtr, 2 p^2 want). Ascending values in s.w, vectors in s.z (column-major).
// Returns LAPACK's info (nonzero: the caller falls back to dsyevd).
int tridiagonal_mrrr(EighScratch& s, int p, int want, int& m) {
  const char uplo = 'L';
  grow(s.d, static_cast<size_t>(p));
  grow(s.e, static_cast<size_t>(p));
  grow(s.tau, static_cast<size_t>(p));
  int info = 0, lwork = -1;
  double wq = 0.0;
  scipy_dsytrd_(&uplo, &p, s.a.data(), &p, s.d.data(), s.e.data(), s.tau.data(), &wq, &lwork, &info, 1);
  lwork = static_cast<int>(wq) + 1;
  grow(s.work, static_cast<size_t>(lwork));
  scipy_dsytrd_(&uplo, &p, s.a.data(), &p, s.d.data(), s.e.data(), s.tau.data(), s.work.data(), &lwork, &info,
                1);
  if (info != 0) return info;
  check_cancel();
  const char jobz = 'V', range = 'I';
  const int il = p - want + 1, iu = p;
  const double vl = 0.0, vu = 0.0;
  int nzc = want, tryrac = 1, liwork = -1, iw = 0;
  grow(s.z, static_cast<size_t>(p) * static_cast<size_t>(want));
  grow(s.isuppz, 2 * static_cast<size_t>(want));
  lwork = -1;
  scipy_dstemr_(&jobz, &range, &p, s.d.data(), s.e.data(), &vl, &vu, &il, &iu, &m, s.w.data(), s.z.data(), &p,
                &nzc, s.isuppz.data(), &tryrac, &wq, &lwork, &iw, &liwork, &info, 1, 1);
  if (info != 0) return info;
  lwork = static_cast<int>(wq) + 1;
  liwork = iw;
  grow(s.work, static_cast<size_t>(lwork));
  grow(s.iwork, static_cast<size_t>(liwork));
  scipy_dstemr_(&jobz, &range, &p, s.d.data(), s.e.data(), &vl, &vu, &il, &iu, &m, s.w.data(), s.z.data(), &p,
                &nzc, s.isuppz.data(), &tryrac, s.work.data(), &lwork, s.iwork.data(), &liwork, &info, 1, 1);
  if (info != 0 || m != want) return info != 0 ? info : -1000;
  const char side = 'L', trans = 'N';
  lwork = -1;
  scipy_dormtr_(&side, &uplo, &trans, &p, &m, s.a.data(), &p, s.tau.data(), s.z.data(), &p, &wq, &lwork,
                &info, 1, 1, 1);
  lwork = static_cast<int>(wq) + 1;
  grow(s.work, static_cast<size_t>(lwork));
  scipy_dormtr_(&side, &uplo, &trans, &p, &m, s.a.data(), &p, s.tau.data(), s.z.data(), &p, s.work.data(),
                &lwork, &info, 1, 1, 1);
  return info;
}

}  // namespace

void eigh_top(const double* a, int p, int want, double* evals, double* evecs) {
  FLAGCORE_CHECK_ARG(p >= 1 && want >= 1 && want <= p,
                     "eigh_top: need 1 <= want <= p, got want = " << want << ", p = " << p);
  single_thread();
  check_cancel();
  const size_t pp = static_cast<size_t>(p) * static_cast<size_t>(p);
  for (size_t e = 0; e < pp; ++e)
    if (!std::isfinite(a[e])) {
      for (int k = 0; k < want; ++k) evals[k] = NAN;
      return;
    }
  EighScratch& s = scratch();
  struct Release {  // a thread-local of the caller's thread: do not keep large buffers
    EighScratch& s;
    size_t pp;
    ~Release() {
      if (pp > (size_t(4) << 20)) s = EighScratch();
    }
  } release{s, pp};
  grow(s.a, pp);
  grow(s.w, static_cast<size_t>(p));
  std::copy(a, a + pp, s.a.begin());
  int info = 1;
  int m = 0;
  const double* z = nullptr;
  if (int64_t(want) * kMrrrMaxFraction <= p) {
    info = tridiagonal_mrrr(s, p, want, m);
    z = s.z.data();
    if (info != 0) {  // not converged (never seen): the robust solver on the original matrix
      std::copy(a, a + pp, s.a.begin());
      info = 1;
    }
  }
  if (info != 0) {
    check_cancel();
    info = syevd(s, p);
    FLAGCORE_CHECK_STATE(info == 0, "eigh_top: LAPACK dsyevd failed (info = " << info << ") on a " << p
                                                                              << " x " << p << " matrix");
    // the top `want` of p ascending values
    z = s.a.data() + static_cast<size_t>(p - want) * p;
    for (int k = 0; k < want; ++k) s.w[k] = s.w[p - want + k];
    m = want;
  }
  for (int k = 0; k < m; ++k) {
    const int src = m - 1 - k;  // ascending -> descending
    evals[k] = s.w[src];
    const double* col = z + static_cast<size_t>(src) * p;
    for (int i = 0; i < p; ++i) evecs[static_cast<size_t>(i) * p + k] = col[i];
  }
}

void dgemm_rm(bool ta, bool tb, int m, int n, int k, double alpha, const double* A, int lda, const double* B,
              int ldb, double beta, double* C, int ldc) {
  single_thread();
  scipy_cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n, k,
                    alpha, A, lda, B, ldb, beta, C, ldc);
}

void ssyrk_rows(int ni, int k, const float* A, int64_t lda, float* C, int ldc) {
  single_thread();
  scipy_cblas_ssyrk(CblasRowMajor, CblasUpper, CblasNoTrans, ni, k, 1.0f, A, static_cast<int>(lda), 0.0f, C,
                    ldc);
}

void sgemm_rows(int ni, int nj, int k, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
                int ldc) {
  single_thread();
  scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, ni, nj, k, 1.0f, A, static_cast<int>(lda), B,
                    static_cast<int>(ldb), 0.0f, C, ldc);
}

void dsyrk_rows(int ni, int k, const double* A, int64_t lda, double* C, int ldc) {
  single_thread();
  scipy_cblas_dsyrk(CblasRowMajor, CblasUpper, CblasNoTrans, ni, k, 1.0, A, static_cast<int>(lda), 0.0, C,
                    ldc);
}

void dgemm_rows(int ni, int nj, int k, const double* A, int64_t lda, const double* B, int64_t ldb, double* C,
                int ldc) {
  single_thread();
  scipy_cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, ni, nj, k, 1.0, A, static_cast<int>(lda), B,
                    static_cast<int>(ldb), 0.0, C, ldc);
}

const char* library_name() {
  return "scipy-openblas32 " FLAGCORE_OPENBLAS_VERSION;
}

}  // namespace blas
}  // namespace flagcore
