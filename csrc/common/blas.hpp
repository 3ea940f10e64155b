// Host BLAS/LAPACK for the p x p work of the Flag Aggregator and for its Gram pass at large p.
//
// The library is the private OpenBLAS of the `scipy-openblas32` wheel (symbols prefixed
// `scipy_`, so it never clashes with the OpenBLAS/MKL of numpy or torch in the same process).
// It is run single-threaded (set once, on first use): flagcore parallelises over its own fixed
// work items (Gram column parts, problems of a batch, blocks of the tridiagonalisation), and a
// BLAS whose result depends on its thread count (threaded dsymv sums per-thread partials) would
// break replicas that run with different thread counts. Every function here is host-only, thread-safe and
// reentrant: scratch lives in thread-local buffers.
#pragma once
#include <cstdint>

namespace flagcore {
namespace blas {

// Top eigenpairs of a symmetric p x p float64 matrix.
//   a      : p x p, both triangles equal (row- or column-major: the same by symmetry); read only
//   want   : eigenpairs wanted, 1 <= want <= p
//   evals  : evals[k] for k < want, descending                                          // [P]
//   evecs  : p x p row-major, column k (evecs[i * p + k]) the unit eigenvector of evals[k] for
//            k < want; the other columns are left untouched                           // [P, P]
// Householder tridiagonalisation (LAPACK dsytrd below p = 1024; from p = 1024 dsytrd's blocked
// algorithm run here, its matrix-vector and rank-2k steps on fixed blocks on flagcore's threads,
// Ctrl-C checked per panel of 32 columns), then the wanted pairs of the tridiagonal T:
// want <= p / 8 by MRRR (dstemr, only those pairs), more by divide and conquer (cheaper than
// MRRR for many pairs on the FA's spectra: below p = 64 dstedc, all pairs of T; from p = 64 the
// two halves of T by dstedc at once on two threads and a last merge, LAPACK's dlaed2/dlaed4 and
// the products of dlaed3, that forms the wanted vectors only); then the back-transformation
// (dormtr) of the `want` wanted vectors only, on fixed blocks of columns run on flagcore's
// threads (InnerThreads); the result does not depend on the thread count. dsyevd on the
// original matrix if a tridiagonal solver reports a failure.
// A non-finite entry in `a` gives NaN eigenvalues (the caller's rank test then yields 0).
// Calls check_cancel() between the panels, the LAPACK calls and the column blocks; the calls
// that cannot be interrupted are the tridiagonal solvers (dstedc of T or of its halves, dstemr;
// O(p^2)-O(p^3) with a small constant: the halves took 12 ms at p = 1024 here).
void eigh_top(const double* a, int p, int want, double* evals, double* evecs);

// y = A x for a symmetric p x p float64 matrix, reading one triangle (the upper of row-major a:
// the lower of its column-major view; the other is not read): flagcore's blocked dsymv (columns
// in blocks of 256, each block one single-threaded call, the blocks' partial sums added in block
// order), on the threads the calling thread's InnerThreads allows from p = 512: the result does
// not depend on the thread count. Half the memory traffic of a full matrix-vector product.
void symv(const double* a, int p, const double* x, double* y);

// Threads eigh_top may use on the calling thread while this object lives (0: flagcore's thread
// count, 1: none besides the caller); restores the previous value when destroyed. Callers that
// already run several problems in parallel pass 1. Results never depend on it. While one lives,
// eigh_top also keeps its buffers between calls on this thread (an IRLS's steps reuse them; large
// ones are freed when the last InnerThreads of the thread ends).
class InnerThreads {
 public:
  explicit InnerThreads(int n);
  ~InnerThreads();
  InnerThreads(const InnerThreads&) = delete;
  InnerThreads& operator=(const InnerThreads&) = delete;

 private:
  int prev_;
};

// The thread count the calling thread's InnerThreads allows (0: flagcore's, as outside one),
// for parallel_for's max_threads in the O(p^2) loops around eigh_top.
int inner_threads();

// Row-major C = alpha * op(A) op(B) + beta * C (op = transpose when ta / tb), float64.
void dgemm_rm(bool ta, bool tb, int m, int n, int k, double alpha, const double* A, int lda, const double* B,
              int ldb, double beta, double* C, int ldc);

// Gram blocks of float32 data, float32 results (column-major view of row-major data: row i of
// the data is column i of an (k x p) column-major matrix with leading dimension ld).
//   syrk: C (ni x ni, row-major, upper triangle i <= j written) = A A^T, A = ni rows of k
//         elements, row i at A + i * lda
//   gemm: C (ni x nj, row-major) = A B^T, A = ni rows, B = nj rows, k elements each
void ssyrk_rows(int ni, int k, const float* A, int64_t lda, float* C, int ldc);
void sgemm_rows(int ni, int nj, int k, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
                int ldc);
void dsyrk_rows(int ni, int k, const double* A, int64_t lda, double* C, int ldc);
void dgemm_rows(int ni, int nj, int k, const double* A, int64_t lda, const double* B, int64_t ldb, double* C,
                int ldc);

// "scipy-openblas32 <version>": for build_info().
const char* library_name();

}  // namespace blas
}  // namespace flagcore
