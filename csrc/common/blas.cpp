#include "common/blas.hpp"

#include <cblas.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstddef>
#include <limits>
#include <mutex>
#include <vector>

#include "common/cancel.hpp"
#include "common/check.hpp"
#include "common/parallel.hpp"
#include "common/simd.hpp"
#include "common/symv_kernel.hpp"

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
void scipy_dstedc_(const char* compz, const int* n, double* d, double* e, double* z, const int* ldz,
                   double* work, const int* lwork, int* iwork, const int* liwork, int* info, size_t);
void scipy_dlarfg_(const int* n, double* alpha, double* x, const int* incx, double* tau);
void scipy_dsytd2_(const char* uplo, const int* n, double* a, const int* lda, double* d, double* e,
                   double* tau, int* info, size_t);
void scipy_dlaed2_(int* k, const int* n, const int* n1, double* d, double* q, const int* ldq, int* indxq,
                   double* rho, double* z, double* dlamda, double* w, double* q2, int* indx, int* indxc,
                   int* indxp, int* coltyp, int* info);
void scipy_dlaed4_(const int* n, const int* i, const double* d, const double* z, double* delta,
                   const double* rho, double* dlam, int* info);
void scipy_dlamrg_(const int* n1, const int* n2, const double* a, const int* dtrd1, const int* dtrd2,
                   int* index);
double scipy_dlanst_(const char* norm, const int* n, const double* d, const double* e, size_t);
void scipy_dlascl_(const char* type, const int* kl, const int* ku, const double* cfrom, const double* cto,
                   const int* m, const int* n, double* a, const int* lda, int* info, size_t);
double scipy_dnrm2_(const int* n, const double* x, const int* incx);
void scipy_dlarft_(const char* direct, const char* storev, const int* n, const int* k, const double* v,
                   const int* ldv, const double* tau, double* t, const int* ldt, size_t, size_t);
void scipy_dlarfb_(const char* side, const char* trans, const char* direct, const char* storev, const int* m,
                   const int* n, const int* k, const double* v, const int* ldv, const double* t,
                   const int* ldt, double* c, const int* ldc, double* work, const int* ldwork, size_t, size_t,
                   size_t, size_t);
}

#ifndef FLAGCORE_OPENBLAS_VERSION
#define FLAGCORE_OPENBLAS_VERSION "unknown"
#endif

namespace flagcore {
namespace blas {
namespace {

// flagcore's OpenBLAS runs on one thread (its threaded kernels sum in an order that depends on
// their thread count; flagcore's own threads run the blocks). Checked at every entry, not once:
// threadpoolctl finds this private library too, and `threadpool_limits(2)` (or leaving a
// `threadpool_limits` block entered before flagcore's first call, which restores the count it
// saw) raised its count for the rest of the process, and CAF, DnC, the geometric median and
// eigh_top changed their bits (found by review, 2026-12-05; tests/test_threadpoolctl.py).
void single_thread() {
  if (scipy_openblas_get_num_threads() == 1) return;
  static std::mutex m;
  const std::lock_guard<std::mutex> lock(m);
  if (scipy_openblas_get_num_threads() != 1) scipy_openblas_set_num_threads(1);
}

thread_local int t_inner_threads = 0;  // InnerThreads: 0 = flagcore's thread count
thread_local int t_keep = 0;           // live InnerThreads objects on this thread

using DVec = std::vector<double>;
using IVec = std::vector<int>;

struct EighScratch {
  DVec a, w, z, work, d, e, tau;
  IVec iwork, isuppz;
  DVec trd_w;     // own tridiagonalisation: the panel's W (m x nb, column-major)
  DVec trd_part;  // its dsymv: per block, the contribution to the rows below it
  DVec back_t;    // back_transform: the T factors of the reflector blocks
  // tridiagonal_dc_top: the scaled tridiagonal, the halves' LAPACK workspaces, dlaed2/dlaed4's
  // arrays, the secular problem's vectors and the wanted columns in order
  DVec dc_d, dc_e, dc_z, dc_dlamda, dc_w, dc_q2, dc_delta, dc_vec, dc_top, dc_work[2];
  IVec dc_iwork[2], dc_indxq, dc_indx, dc_indxc, dc_indxp, dc_coltyp;
};

EighScratch& scratch() {
  thread_local EighScratch s;
  return s;
}

// MRRR (dstemr) for at most p / kMrrrMaxFraction wanted pairs; above, divide and conquer on the
// tridiagonal (dstedc, all p vectors of T) is cheaper. MRRR's cost grows with the pairs wanted
// and on FA Grams (a Marchenko-Pastur bulk plus a few spikes) it has a large constant: at
// p = 1024, one thread, dstemr took 8 / 34 / 50 / 84 / 108 ms for 16 / 64 / 128 / 256 / 512
// pairs against 43-45 ms for dstedc of all 1024 (same run, machine shared).
constexpr int64_t kMrrrMaxFraction = 8;

// The back-transformation (dormtr) works on fixed blocks of at most kBackCols eigenvector
// columns (at least two blocks from kBackMinSplit columns on, so that p = 256-512 keeps two
// threads busy), run in parallel: a column's result depends only on that column and on the block
// layout, which is fixed by `want` alone (never by the thread count), so the result is the same
// for any thread count.
constexpr int kBackCols = 256;
constexpr int kBackMinSplit = 64;

template <class V>
void grow(V& v, size_t n) {
  if (v.size() < n) v.resize(n);
}

// Full decomposition by divide and conquer (the fallback); ascending values in s.w, vectors in
// s.a (column-major).
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

// Householder tridiagonalisation from p = kOwnTridiagonalMinP: LAPACK dsytrd's blocked algorithm
// (lower triangle) run here, with its two matrix-sized steps on flagcore's threads and Ctrl-C
// checked between panels; the panel factorisation mirrors LAPACK dlatrd. Why not dsytrd itself:
// it is one call of seconds at p = 4096 that cannot be interrupted, and it is single-threaded
// here (a threaded OpenBLAS dsymv sums per-thread partials, so its result would depend on the
// thread count). Both parallel steps split their work into blocks fixed by the matrix size,
// each block one single-threaded call, and combine the blocks in a fixed order: the same result
// for any thread count. Below kOwnTridiagonalMinP dsytrd itself (under 0.1 s; on one thread it
// is 5-10 % faster than this code, and two threads gained nothing at p = 512 here).
// Measured (quiet, wall time, eigh_top with want = p/2, best of 5; dsytrd vs this code):
// 1 thread p = 1024 128 vs 140 ms, p = 2048 957 vs 1000 ms; 2 threads p = 1024 113 vs 105 ms,
// p = 2048 857 vs 660 ms. The dsymv blocks are 256 columns wide: each block adds a vector of
// partial sums that the caller then adds up on one thread, and with 64 columns that serial sum
// cost more than the blocks gained (tridiagonalisation alone, 2 threads, p = 1024: 60-62 ms with
// 64 columns, 55-57 with 128, 47-50 with 256, 63-65 with 512; p = 2048: 398 / 382-405 / 407-417
// ms for 128 / 256 / 512). With 256-column blocks from p = 256 on instead of dsytrd: 1.0 -> 1.8
// ms at p = 256, 6.4 -> 9.4 ms at 512, equal at 768, so kOwnTridiagonalMinP stays 1024.
constexpr int kOwnTridiagonalMinP = 1024;
constexpr int kTrdPanel = 32;      // nb: columns per panel (ilaenv's DSYTRD block size)
constexpr int kTrdCrossover = 32;  // nx: the last columns go unblocked (dsytd2), as in dsytrd
constexpr int kSymvBlock = 256;    // columns per dsymv block
constexpr int kSyr2kBlock = 128;   // columns per block of the trailing update
constexpr int kParallelMin = 512;  // below this order the blocks run on the calling thread
static_assert(kOwnTridiagonalMinP > kTrdCrossover + kTrdPanel, "the own path runs at least one panel");

// y = A x for the m x m symmetric A whose lower triangle is stored (column-major, lda), in
// column blocks of kSymvBlock: block b adds its diagonal triangle and the transpose of the
// rectangle below it into y[its columns], and writes the rectangle times x[its columns] into
// part[b]; part[0..b) is then added to each row in block order.
void symv_lower(int m, const double* A, int lda, const double* x, double* y, DVec& part, int threads) {
  const int nblk = (m + kSymvBlock - 1) / kSymvBlock;
  grow(part, static_cast<size_t>(nblk) * static_cast<size_t>(m));
  auto block = [&](size_t bi) {
    const int c0 = static_cast<int>(bi) * kSymvBlock;
    const int w = std::min(kSymvBlock, m - c0);
    const int c1 = c0 + w, below = m - c1;
    const double* diag = A + static_cast<size_t>(c0) * lda + c0;
    // y's block zeroed first: with beta = 0 some OpenBLAS scal kernels kept a NaN (or inf) of
    // what y held before times 0 (the callers pass reused buffers)
    std::fill_n(y + c0, w, 0.0);
    scipy_cblas_dsymv(CblasColMajor, CblasLower, w, 1.0, diag, lda, x + c0, 1, 0.0, y + c0, 1);
    if (below > 0)
      symv_rect(below, w, diag + w, lda, x + c1, x + c0, y + c0, part.data() + bi * size_t(m) + c1);
  };
  parallel_for(static_cast<size_t>(nblk), block, m >= kParallelMin ? threads : 1);
  for (int b = 0; b + 1 < nblk; ++b) {
    const int c1 = (b + 1) * kSymvBlock;
    const double* pb = part.data() + static_cast<size_t>(b) * m;
    for (int r = c1; r < m; ++r) y[r] += pb[r];
  }
}

// C -= V W^T + W V^T on the lower triangle of the m x m C (column-major, ldc); V and W are
// m x k (ldv, ldw). Column blocks of kSyr2kBlock: the diagonal block by dsyr2k, the rectangle
// below it by two dgemm.
void syr2k_lower(int m, int k, const double* V, int ldv, const double* W, int ldw, double* C, int ldc,
                 int threads) {
  const int nblk = (m + kSyr2kBlock - 1) / kSyr2kBlock;
  auto block = [&](size_t bi) {
    const int c0 = static_cast<int>(bi) * kSyr2kBlock;
    const int w = std::min(kSyr2kBlock, m - c0);
    const int c1 = c0 + w, below = m - c1;
    double* diag = C + static_cast<size_t>(c0) * ldc + c0;
    scipy_cblas_dsyr2k(CblasColMajor, CblasLower, CblasNoTrans, w, k, -1.0, V + c0, ldv, W + c0, ldw, 1.0,
                       diag, ldc);
    if (below > 0) {
      scipy_cblas_dgemm(CblasColMajor, CblasNoTrans, CblasTrans, below, w, k, -1.0, V + c1, ldv, W + c0, ldw,
                        1.0, diag + w, ldc);
      scipy_cblas_dgemm(CblasColMajor, CblasNoTrans, CblasTrans, below, w, k, -1.0, W + c1, ldw, V + c0, ldv,
                        1.0, diag + w, ldc);
    }
  };
  parallel_for(static_cast<size_t>(nblk), block, m >= kParallelMin ? threads : 1);
}

// LAPACK dlatrd, lower: reduces the first nb columns of the m x m block A (column-major, lda)
// and returns W (m x nb, ldw) such that the trailing update is A22 -= V W^T + W V^T.
void latrd_lower(int m, int nb, double* A, int lda, double* e, double* tau, double* W, int ldw, DVec& part,
                 int threads) {
  auto a = [&](int r, int c) -> double* { return A + static_cast<size_t>(c) * lda + r; };
  auto wp = [&](int r, int c) -> double* { return W + static_cast<size_t>(c) * ldw + r; };
  for (int i = 0; i < nb; ++i) {
    const int len = m - i;
    if (i > 0) {  // update A(i:m, i) with the panel's previous columns
      scipy_cblas_dgemv(CblasColMajor, CblasNoTrans, len, i, -1.0, a(i, 0), lda, wp(i, 0), ldw, 1.0, a(i, i),
                        1);
      scipy_cblas_dgemv(CblasColMajor, CblasNoTrans, len, i, -1.0, wp(i, 0), ldw, a(i, 0), lda, 1.0, a(i, i),
                        1);
    }
    if (i + 1 >= m) continue;
    const int nr = m - i - 1;
    const int one = 1;
    scipy_dlarfg_(&nr, a(i + 1, i), a(std::min(i + 2, m - 1), i), &one, tau + i);
    e[i] = *a(i + 1, i);
    *a(i + 1, i) = 1.0;
    double* wi = wp(i + 1, i);
    const double* vi = a(i + 1, i);
    symv_lower(nr, a(i + 1, i + 1), lda, vi, wi, part, threads);
    if (i > 0) {
      double* tmp = wp(0, i);  // W(0:i, i) is scratch
      scipy_cblas_dgemv(CblasColMajor, CblasTrans, nr, i, 1.0, wp(i + 1, 0), ldw, vi, 1, 0.0, tmp, 1);
      scipy_cblas_dgemv(CblasColMajor, CblasNoTrans, nr, i, -1.0, a(i + 1, 0), lda, tmp, 1, 1.0, wi, 1);
      scipy_cblas_dgemv(CblasColMajor, CblasTrans, nr, i, 1.0, a(i + 1, 0), lda, vi, 1, 0.0, tmp, 1);
      scipy_cblas_dgemv(CblasColMajor, CblasNoTrans, nr, i, -1.0, wp(i + 1, 0), ldw, tmp, 1, 1.0, wi, 1);
    }
    scipy_cblas_dscal(nr, tau[i], wi, 1);
    const double alpha = -0.5 * tau[i] * scipy_cblas_ddot(nr, wi, 1, vi, 1);
    scipy_cblas_daxpy(nr, alpha, vi, 1, wi, 1);
  }
}

// Householder tridiagonalisation of s.a (lower triangle, column-major): d, e, tau; the
// reflectors stay in s.a (LAPACK dsytrd's layout, so dormtr applies them).
int tridiagonalise(EighScratch& s, int p) {
  grow(s.d, static_cast<size_t>(p));
  grow(s.e, static_cast<size_t>(p));
  grow(s.tau, static_cast<size_t>(p));
  if (p < kOwnTridiagonalMinP) {
    const char uplo = 'L';
    int info = 0, lwork = -1;
    double wq = 0.0;
    scipy_dsytrd_(&uplo, &p, s.a.data(), &p, s.d.data(), s.e.data(), s.tau.data(), &wq, &lwork, &info, 1);
    lwork = static_cast<int>(wq) + 1;
    grow(s.work, static_cast<size_t>(lwork));
    scipy_dsytrd_(&uplo, &p, s.a.data(), &p, s.d.data(), s.e.data(), s.tau.data(), s.work.data(), &lwork,
                  &info, 1);
    return info;
  }
  const int threads = t_inner_threads;
  double* A = s.a.data();
  grow(s.trd_w, static_cast<size_t>(p) * kTrdPanel);
  int i = 0;
  for (; i < p - kTrdCrossover; i += kTrdPanel) {
    check_cancel();
    const int m = p - i;
    double* Ai = A + static_cast<size_t>(i) * p + i;
    latrd_lower(m, kTrdPanel, Ai, p, s.e.data() + i, s.tau.data() + i, s.trd_w.data(), m, s.trd_part,
                threads);
    syr2k_lower(m - kTrdPanel, kTrdPanel, Ai + kTrdPanel, p, s.trd_w.data() + kTrdPanel, m,
                Ai + static_cast<size_t>(kTrdPanel) * p + kTrdPanel, p, threads);
    for (int j = i; j < i + kTrdPanel; ++j) {
      A[static_cast<size_t>(j) * p + j + 1] = s.e[j];
      s.d[j] = A[static_cast<size_t>(j) * p + j];
    }
  }
  const char uplo = 'L';
  const int rest = p - i;
  int info = 0;
  scipy_dsytd2_(&uplo, &rest, A + static_cast<size_t>(i) * p + i, &p, s.d.data() + i, s.e.data() + i,
                s.tau.data() + i, &info, 1);
  return info;
}

// MRRR on the tridiagonal for the top `want` pairs only: ascending values in s.w, vectors of T
// in s.z (column-major, p x want). Returns LAPACK's info (nonzero, or fewer pairs than asked:
// the caller falls back to dsyevd).
int tridiagonal_mrrr(EighScratch& s, int p, int want) {
  const char jobz = 'V', range = 'I';
  const int il = p - want + 1, iu = p;
  const double vl = 0.0, vu = 0.0;
  int m = 0, nzc = want, tryrac = 1, liwork = -1, iw = 0, info = 0, lwork = -1;
  double wq = 0.0;
  grow(s.z, static_cast<size_t>(p) * static_cast<size_t>(want));
  grow(s.isuppz, 2 * static_cast<size_t>(want));
  scipy_dstemr_(&jobz, &range, &p, s.d.data(), s.e.data(), &vl, &vu, &il, &iu, &m, s.w.data(), s.z.data(), &p,
                &nzc, s.isuppz.data(), &tryrac, &wq, &lwork, &iw, &liwork, &info, 1, 1);
  if (info != 0) return info;
  lwork = static_cast<int>(wq) + 1;
  liwork = iw;
  grow(s.work, static_cast<size_t>(lwork));
  grow(s.iwork, static_cast<size_t>(liwork));
  scipy_dstemr_(&jobz, &range, &p, s.d.data(), s.e.data(), &vl, &vu, &il, &iu, &m, s.w.data(), s.z.data(), &p,
                &nzc, s.isuppz.data(), &tryrac, s.work.data(), &lwork, s.iwork.data(), &liwork, &info, 1, 1);
  if (info != 0) return info;
  return m == want ? 0 : -1000;
}

// LAPACK dstedc (COMPZ = 'I') on the m x m tridiagonal (d, e): d becomes the ascending values,
// z (leading dimension ldz) their vectors; work and iwork grow to the queried sizes. Returns
// LAPACK's info.
int dstedc_vectors(int m, double* d, double* e, double* z, int ldz, DVec& work, IVec& iwork) {
  const char compz = 'I';
  int lwork = -1, liwork = -1, iw = 0, info = 0;
  double wq = 0.0;
  scipy_dstedc_(&compz, &m, d, e, z, &ldz, &wq, &lwork, &iw, &liwork, &info, 1);
  lwork = static_cast<int>(wq) + 1;
  liwork = iw;
  grow(work, static_cast<size_t>(lwork));
  grow(iwork, static_cast<size_t>(liwork));
  scipy_dstedc_(&compz, &m, d, e, z, &ldz, work.data(), &lwork, iwork.data(), &liwork, &info, 1);
  return info;
}

// Divide and conquer on the tridiagonal, all p pairs: ascending values in s.w, vectors of T in
// s.z (column-major, p x p). Returns LAPACK's info.
int tridiagonal_dc(EighScratch& s, int p) {
  grow(s.z, static_cast<size_t>(p) * static_cast<size_t>(p));
  std::copy(s.d.begin(), s.d.begin() + p, s.w.begin());  // dstedc overwrites d with the values
  return dstedc_vectors(p, s.w.data(), s.e.data(), s.z.data(), p, s.work, s.iwork);
}

// Divide and conquer on the tridiagonal for the top `want` pairs only, from p = kTopDcMinP:
// LAPACK's dstedc, whose cost is mostly the eigenvector products of its merges (the last one, of
// the two halves, about 3/4 of them), spends half of that last product on vectors FA does not
// want (want = p/2 by default), and runs on one thread. Here the tridiagonal is cut in the middle
// as dstedc's own recursion cuts it (T = diag(T1, T2) + rho v v^T, LAPACK dlaed0/dlaed1), the two
// halves go to dstedc at the same time on two threads, dlaed2 deflates, all roots of the secular
// equation are found (dlaed4, in parallel) and the eigenvector products run for the wanted
// columns only, on fixed column blocks in parallel (the steps of LAPACK dlaed3 restricted to
// those columns; the blocks depend on `want` and p alone, so the result does not depend on the
// thread count). Output as tridiagonal_dc's for the last `want` columns: s.w[p - want + c]
// ascending, their vectors in s.z columns p - want + c (column-major, p x p).
// Measured (quiet, 2 threads, eigh_top with want = p/2 of a normalised Gram, best of 30, dstedc
// vs this): p = 128 0.97 vs 0.79 ms, 192 2.17 vs 1.69 ms, 256 3.8-4.1 vs 2.9-3.0 ms; 64 0.21 vs
// 0.19 ms.
constexpr int kTopDcMinP = 64;
constexpr int kTopDcCols = 64;  // columns per eigenvector-product block

// Returns 0, or nonzero when a LAPACK step did not converge (the caller falls back to dstedc).
int tridiagonal_dc_top(EighScratch& s, int p, int want) {
  const int n1 = p / 2, n2 = p - n1;  // dlaed0's cut: the first half is the smaller
  grow(s.dc_d, static_cast<size_t>(p));
  grow(s.dc_e, static_cast<size_t>(p));
  double* d = s.dc_d.data();
  double* e = s.dc_e.data();
  std::copy(s.d.begin(), s.d.begin() + p, d);
  std::copy(s.e.begin(), s.e.begin() + (p - 1), e);
  e[p - 1] = 0.0;
  // scale to unit max-norm as dstedc does (the halves' dstedc scale again, by about 1)
  const char normm = 'M';
  const double orgnrm = scipy_dlanst_(&normm, &p, d, e, 1);
  if (!(orgnrm > 0.0) || !std::isfinite(orgnrm)) return -1;
  const char gen = 'G';
  const int zero = 0, one = 1, pm1 = p - 1;
  const double unit = 1.0;
  int info = 0;
  scipy_dlascl_(&gen, &zero, &zero, &orgnrm, &unit, &p, &one, d, &p, &info, 1);
  if (info != 0) return info;
  scipy_dlascl_(&gen, &zero, &zero, &orgnrm, &unit, &pm1, &one, e, &pm1, &info, 1);
  if (info != 0) return info;
  double rho = e[n1 - 1];
  d[n1 - 1] -= std::abs(rho);
  d[n1] -= std::abs(rho);
  grow(s.z, static_cast<size_t>(p) * static_cast<size_t>(p));
  double* q = s.z.data();
  std::fill(q, q + static_cast<size_t>(p) * p, 0.0);
  // the two halves, one per task
  int half_info[2] = {0, 0};
  parallel_for(
      2,
      [&](size_t h) {
        const int m = h == 0 ? n1 : n2, off = h == 0 ? 0 : n1;
        half_info[h] = dstedc_vectors(m, d + off, e + off, q + static_cast<size_t>(off) * p + off, p,
                                      s.dc_work[h], s.dc_iwork[h]);
      },
      t_inner_threads);
  if (half_info[0] != 0) return half_info[0];
  if (half_info[1] != 0) return half_info[1];
  check_cancel();
  // deflation (dlaed1's set-up of dlaed2): z = last row of Q1, first row of Q2
  const size_t up = static_cast<size_t>(p);
  for (DVec* v : {&s.dc_z, &s.dc_dlamda, &s.dc_w}) grow(*v, up);
  grow(s.dc_q2, up * up);  // dlaed1 reserves p^2 for dlaed2's Q2
  for (IVec* v : {&s.dc_indxq, &s.dc_indx, &s.dc_indxc, &s.dc_indxp, &s.dc_coltyp}) grow(*v, up);
  double *z = s.dc_z.data(), *dlamda = s.dc_dlamda.data(), *w = s.dc_w.data(), *q2 = s.dc_q2.data();
  int *indxq = s.dc_indxq.data(), *indx = s.dc_indx.data(), *indxc = s.dc_indxc.data(),
      *indxp = s.dc_indxp.data(), *coltyp = s.dc_coltyp.data();
  for (int j = 0; j < n1; ++j) z[j] = q[static_cast<size_t>(j) * p + (n1 - 1)];
  for (int j = n1; j < p; ++j) z[j] = q[static_cast<size_t>(j) * p + n1];
  for (int i = 0; i < p; ++i) indxq[i] = i < n1 ? i + 1 : i - n1 + 1;
  int k = 0;
  scipy_dlaed2_(&k, &p, &n1, d, q, &p, indxq, &rho, z, dlamda, w, q2, indx, indxc, indxp, coltyp, &info);
  if (info != 0) return info;
  // d[0 .. k): the roots (below); d[k .. p): the deflated values, q's columns k .. p their vectors
  grow(s.dc_delta, static_cast<size_t>(k) * static_cast<size_t>(std::max(k, 1)));
  double* delta = s.dc_delta.data();
  constexpr int kRootBlock = 64;  // roots, Gu-Eisenstat weights and vectors per task
  if (k > 0) {
    std::vector<int> root_info(static_cast<size_t>((k + kRootBlock - 1) / kRootBlock), 0);
    parallel_blocks(
        k, kRootBlock,
        [&](int64_t j0, int64_t j1) {
          for (int j = static_cast<int>(j0); j < j1; ++j) {
            const int jj = j + 1;
            int inf = 0;
            scipy_dlaed4_(&k, &jj, dlamda, w, delta + static_cast<size_t>(j) * k, &rho, d + j, &inf);
            if (inf != 0) root_info[static_cast<size_t>(j0 / kRootBlock)] = inf;
          }
        },
        t_inner_threads);
    for (int v : root_info)
      if (v != 0) return v;
  }
  // merged ascending order of all p values (dlaed1's dlamrg), then the wanted ones: the top `want`
  if (k > 0) {
    const int n2d = p - k, mone = -1;
    scipy_dlamrg_(&k, &n2d, d, &one, &mone, indxq);
  } else {
    for (int i = 0; i < p; ++i) indxq[i] = i + 1;
  }
  // dlamrg merges two lists that rounding may leave out of order by an ulp (a root of a tight
  // cluster, a value after a deflating rotation): a stable sort makes the order exact
  std::stable_sort(indxq, indxq + p, [&](int a, int b) { return d[a - 1] < d[b - 1]; });
  int jlo = k;  // the first root whose vector is wanted
  for (int c = p - want; c < p; ++c)
    if (indxq[c] - 1 < k) jlo = std::min(jlo, indxq[c] - 1);
  check_cancel();
  if (jlo < k) {
    // the secular problem's eigenvectors for roots jlo .. k (dlaed3's steps, wanted columns only)
    const int kr = k - jlo;
    grow(s.dc_vec, static_cast<size_t>(k) * static_cast<size_t>(kr));
    double* vec = s.dc_vec.data();  // k x kr, column j - jlo
    if (k == 1) {
      vec[0] = delta[0];
    } else if (k == 2) {
      for (int j = jlo; j < k; ++j)
        for (int i = 0; i < 2; ++i)
          vec[static_cast<size_t>(j - jlo) * k + i] = delta[static_cast<size_t>(j) * k + (indxc[i] - 1)];
    } else {
      std::vector<double> wn(static_cast<size_t>(k));
      // wn_i = sign(w_i) sqrt(-delta_ii prod_{j != i} delta_ji / (dlamda_i - dlamda_j)), the
      // product taken in j order for every i; j runs outside so that delta's column j is read
      // contiguously (i inside: one pass over delta instead of a stride-k read per factor)
      parallel_blocks(
          k, kRootBlock,
          [&](int64_t i0, int64_t i1) {
            double* t = wn.data();
            for (int64_t i = i0; i < i1; ++i) t[i] = delta[static_cast<size_t>(i) * k + i];
            for (int j = 0; j < k; ++j) {
              const double* dj = delta + static_cast<size_t>(j) * k;
              const double lj = dlamda[j];
              for (int64_t i = i0; i < i1; ++i)
                if (i != j) t[i] *= dj[i] / (dlamda[i] - lj);
            }
            for (int64_t i = i0; i < i1; ++i) t[i] = std::copysign(std::sqrt(-t[i]), w[i]);
          },
          t_inner_threads);
      parallel_blocks(
          kr, kRootBlock,
          [&](int64_t c0, int64_t c1) {
            std::vector<double> sv(static_cast<size_t>(k));
            for (int c = static_cast<int>(c0); c < c1; ++c) {
              const double* dj = delta + static_cast<size_t>(jlo + c) * k;
              for (int i = 0; i < k; ++i) sv[i] = wn[i] / dj[i];
              const double nrm = scipy_dnrm2_(&k, sv.data(), &one);
              double* out = vec + static_cast<size_t>(c) * k;
              for (int i = 0; i < k; ++i) out[i] = sv[indxc[i] - 1] / nrm;
            }
          },
          t_inner_threads);
    }
    // q[:, jlo .. k) = Q2 blocks times the vectors (dlaed3's two products), fixed column blocks
    const int ctot1 = coltyp[0], ctot2 = coltyp[1], ctot3 = coltyp[2];
    const int n12 = ctot1 + ctot2, n23 = ctot2 + ctot3;
    const double* q2top = q2;                                  // n1 x n12
    const double* q2bot = q2 + static_cast<size_t>(n1) * n12;  // n2 x n23
    parallel_blocks(
        kr, kTopDcCols,
        [&](int64_t cb, int64_t ce) {
          const int c0 = static_cast<int>(cb), nc = static_cast<int>(ce - cb);
          double* qc = q + static_cast<size_t>(jlo + c0) * p;
          const double* v = vec + static_cast<size_t>(c0) * k;
          if (n12 > 0)
            scipy_cblas_dgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, n1, nc, n12, 1.0, q2top, n1, v, k,
                              0.0, qc, p);
          else
            for (int c = 0; c < nc; ++c)
              std::fill(qc + static_cast<size_t>(c) * p, qc + static_cast<size_t>(c) * p + n1, 0.0);
          if (n23 > 0)
            scipy_cblas_dgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, n2, nc, n23, 1.0, q2bot, n2,
                              v + ctot1, k, 0.0, qc + n1, p);
          else
            for (int c = 0; c < nc; ++c)
              std::fill(qc + static_cast<size_t>(c) * p + n1, qc + static_cast<size_t>(c) * p + p, 0.0);
        },
        t_inner_threads);
  }
  // the wanted pairs, ascending, into the last `want` columns (values scaled back)
  grow(s.dc_top, up * static_cast<size_t>(want));
  double* top = s.dc_top.data();
  for (int c = 0; c < want; ++c) {
    const int src = indxq[p - want + c] - 1;
    std::copy(q + static_cast<size_t>(src) * p, q + static_cast<size_t>(src + 1) * p,
              top + static_cast<size_t>(c) * p);
    s.w[p - want + c] = d[src] * orgnrm;
  }
  std::copy(top, top + up * static_cast<size_t>(want), q + static_cast<size_t>(p - want) * p);
  return 0;
}

// Q z for the `want` columns z (column-major, leading dimension p) with Q from tridiagonalise,
// then the columns written to evecs (row-major p x p) in descending order: column c of z (the
// c-th smallest of the `want` values) becomes evecs column want - 1 - c. Fixed blocks of at
// most kBackCols columns run in parallel (see kBackCols).
//
// From p = kOwnBackMinP the reflectors are applied here rather than by LAPACK dormtr: Q =
// H(0) ... H(p - 2) acts on rows 1 .. p - 1 (dormtr's lower case is dormqr on A(1, 0)), in blocks
// of kBackNb reflectors, last block first, each as I - V T V^T (dlarfb) with its T factor
// (dlarft) formed once for all column blocks, the reflector blocks' T in parallel (dormqr forms
// them in every call, so once per column block: 8 times at p = 4096, want = 2048, with blocks of
// 32 reflectors where 64 make better dgemm shapes), and Ctrl-C checked between reflector blocks.
// Every block is one single-threaded LAPACK call on a fixed part of the work: the same result for
// any thread count. Measured (AMD EPYC Zen 3, 2 threads, want = p / 2 of a normalised Gram, the
// back-transformation alone, best of 3-15, ms; dormtr vs this with 32 / 64 / 128 reflectors per
// block): p = 256 0.71-0.84 vs 0.93 / 0.85-1.01 / 0.96-0.99 (dormtr stays below kOwnBackMinP),
// 512 5.1-5.3 vs 4.2-4.9 / 4.1-4.3 / 4.6-4.7, 1024 29.7-29.9 vs 25.6-27.6 / 23.3-24.1 /
// 23.0-24.1, 2048 215 vs - / 157 / 152, 4096 1779 vs 1398 / 1180 / 1055-1237.
constexpr int kOwnBackMinP = 512;
constexpr int kBackNb = 64;

void back_transform(EighScratch& s, int p, double* z, int want, double* evecs) {
  const int nblk = std::max((want + kBackCols - 1) / kBackCols, want >= kBackMinSplit ? 2 : 1);
  const int width = (want + nblk - 1) / nblk;  // balanced blocks, fixed by `want`
  const bool own = p >= kOwnBackMinP;
  const int m = p - 1;                          // rows of Q's active part, and its reflectors
  const int nrb = (m + kBackNb - 1) / kBackNb;  // reflector blocks
  const auto v = [&](int i) { return s.a.data() + static_cast<size_t>(i) * p + 1 + i; };  // block at i
  constexpr int ldt = kBackNb;
  int lwork = width * kBackNb;
  const char side = 'L', uplo = 'L', trans = 'N', direct = 'F', storev = 'C';
  if (own) {
    grow(s.back_t, static_cast<size_t>(nrb) * ldt * kBackNb);
    parallel_for(
        static_cast<size_t>(nrb),
        [&](size_t rb) {
          const int i = static_cast<int>(rb) * kBackNb;
          const int ib = std::min(kBackNb, m - i), mi = m - i;
          scipy_dlarft_(&direct, &storev, &mi, &ib, v(i), &p, s.tau.data() + i,
                        s.back_t.data() + rb * ldt * kBackNb, &ldt, 1, 1);
        },
        t_inner_threads);
  } else {
    int info = 0;
    lwork = -1;
    double wq = 0.0;
    scipy_dormtr_(&side, &uplo, &trans, &p, &width, s.a.data(), &p, s.tau.data(), z, &p, &wq, &lwork, &info,
                  1, 1, 1);
    lwork = static_cast<int>(wq) + 1;
  }
  auto block = [&](size_t bi) {
    const int c0 = static_cast<int>(bi) * width;
    int nc = want - c0 < width ? want - c0 : width;
    double* zb = z + static_cast<size_t>(c0) * p;
    std::vector<double> work(static_cast<size_t>(lwork));
    if (own) {
      for (int rb = nrb - 1; rb >= 0; --rb) {  // Q z = H(0) (H(1) (... z)): the last block first
        check_cancel();
        const int i = rb * kBackNb;
        const int ib = std::min(kBackNb, m - i), mi = m - i;
        scipy_dlarfb_(&side, &trans, &direct, &storev, &mi, &nc, &ib, v(i), &p,
                      s.back_t.data() + static_cast<size_t>(rb) * ldt * kBackNb, &ldt, zb + 1 + i, &p,
                      work.data(), &nc, 1, 1, 1, 1);
      }
    } else {
      int inf = 0;
      scipy_dormtr_(&side, &uplo, &trans, &p, &nc, s.a.data(), &p, s.tau.data(), zb, &p, work.data(), &lwork,
                    &inf, 1, 1, 1);
      FLAGCORE_CHECK_STATE(inf == 0, "eigh_top: LAPACK dormtr failed (info = " << inf << ")");
    }
    // transpose into row-major evecs in tiles of 32 rows (cache-friendly on both sides)
    for (int i0 = 0; i0 < p; i0 += 32) {
      const int i1 = i0 + 32 < p ? i0 + 32 : p;
      for (int c = c0; c < c0 + nc; ++c) {
        const double* col = z + static_cast<size_t>(c) * p;
        const int k = want - 1 - c;
        for (int i = i0; i < i1; ++i) evecs[static_cast<size_t>(i) * p + k] = col[i];
      }
    }
  };
  parallel_for(static_cast<size_t>(nblk), block, t_inner_threads);
}

}  // namespace

int inner_threads() {
  return t_inner_threads;
}

InnerThreads::InnerThreads(int n) : prev_(t_inner_threads) {
  t_inner_threads = n < 0 ? 0 : n;
  ++t_keep;
}

namespace {
// The eigensolver's buffers are a thread-local of the caller's thread: large ones (a matrix of more
// than 4 Mi doubles) are freed once no InnerThreads object keeps them (the IRLS steps share them).
void release_large_scratch() {
  if (t_keep == 0 && scratch().a.size() > (size_t(4) << 20)) scratch() = EighScratch();
}
}  // namespace

InnerThreads::~InnerThreads() {
  t_inner_threads = prev_;
  --t_keep;
  release_large_scratch();
}

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
  struct Release {
    ~Release() { release_large_scratch(); }
  } release;
  grow(s.a, pp);
  grow(s.w, static_cast<size_t>(p));
  std::copy(a, a + pp, s.a.begin());
  int info = tridiagonalise(s, p);
  if (info == 0) {
    check_cancel();
    double* z = nullptr;
    if (int64_t(want) * kMrrrMaxFraction <= p) {
      info = tridiagonal_mrrr(s, p, want);  // s.w[0 .. want): the top values, ascending
      z = s.z.data();
    } else {
      info = p >= kTopDcMinP ? tridiagonal_dc_top(s, p, want) : 1;
      if (info != 0) info = tridiagonal_dc(s, p);
      if (info == 0)
        for (int k = 0; k < want; ++k) s.w[k] = s.w[p - want + k];  // the top `want`, ascending
      z = s.z.data() + static_cast<size_t>(p - want) * p;
    }
    if (info == 0) {
      check_cancel();
      back_transform(s, p, z, want, evecs);
      for (int k = 0; k < want; ++k) evals[k] = s.w[want - 1 - k];
      return;
    }
  }
  // not converged (never seen): the robust driver on the original matrix
  check_cancel();
  std::copy(a, a + pp, s.a.begin());
  info = syevd(s, p);
  FLAGCORE_CHECK_STATE(info == 0, "eigh_top: LAPACK dsyevd failed (info = " << info << ") on a " << p << " x "
                                                                            << p << " matrix");
  for (int k = 0; k < want; ++k) {
    const int src = p - 1 - k;  // ascending -> descending
    evals[k] = s.w[src];
    const double* col = s.a.data() + static_cast<size_t>(src) * p;
    for (int i = 0; i < p; ++i) evecs[static_cast<size_t>(i) * p + k] = col[i];
  }
}

void symv(const double* a, int p, const double* x, double* y) {
  FLAGCORE_CHECK_ARG(p >= 1, "symv: need p >= 1, got p = " << p);
  single_thread();
  check_cancel();
  thread_local DVec part;
  symv_lower(p, a, p, x, y, part, t_inner_threads);
  // (p / 256 blocks) x p doubles: more than 32 MiB (p > ~32768) is not kept between calls
  if (part.size() > (size_t(4) << 20)) DVec().swap(part);
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

void symv_rect(int rows, int w, const double* R, int lda, const double* xb, const double* xc, double* yc,
               double* part) {
  using Fn = void (*)(int, int, const double*, int, const double*, const double*, double*, double*);
  FLAGCORE_SIMD_PICK(Fn, symv_rect)(rows, w, R, lda, xb, xc, yc, part);
}

}  // namespace flagcore
