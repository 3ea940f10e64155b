#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#if defined(FLAGCORE_X86_DISPATCH) && defined(__linux__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "common/blas.hpp"
#include "common/cancel.hpp"
#include "common/check.hpp"
#include "common/parallel.hpp"
#include "common/simd.hpp"
#include "flag/gram.hpp"
#include "flag/gram_amx.hpp"
#include "flag/gram_packed.hpp"

namespace flagcore {
namespace {

// Parts per problem depend on n only (not on the thread count), so results are reproducible
// on any machine with the same instruction set.
constexpr int64_t kMinPartColumns = 32768;
constexpr int64_t kMaxParts = 32;
// Above this p the Gram is compute-bound: float32 on AVX-512 and AVX2 CPUs runs the packed kernels
// (gram_packed.hpp; AVX2 up to kGramPackedAvx2MaxP), float64 and other CPUs OpenBLAS; at and
// below, the register-tiled kernels run at memory speed.
constexpr int64_t kGramBlasMinP = 32;
// float32 on AVX-512 keeps the register-tiled kernel up to this p: below it the packed kernel's
// 32-row strips waste more of their multiply-adds on the diagonal and its packing is a larger
// share. First set to 48 on an Intel AVX-512 machine (alternating processes, 2 threads, n = 1e6,
// ms, register vs packed): p = 40 11.0-11.5 vs 14.5-16.1, 48 16.4-16.7 vs 18.3-18.5, 56 21.7-22.6
// vs 22.0-23.4, 64 28.6 vs 26.5-26.9. 64 since the register kernel's 128-step flush and its
// diagonal tiles' single loads (both 2026-12-05) made it 25-35 % faster: AMD EPYC Zen 4,
// bench/kernel_ab.py, 2 threads, n = 1e6, fastest of 3 rounds, numpy's rows / rows on a cache
// line, 48 vs 64 (packed vs register at these p): p = 49 22.0 / 21.5 vs 13.7 / 13.7, 56
// 22.6 / 21.6 vs 18.7 / 18.6, 64 27.7 / 26.4 vs 22.8 / 22.9 (72 and 80: register 15 % faster
// too; bench/results/kernel_ab_register_max_p*_zen4_2026-12-05.json). Not re-measured on
// Intel; CPUs with AMX run the tiles from kGramAmxMinP = 56 whatever this says.
// (FLAGCORE_REGISTER_MAX_P_AVX512 / _AVX2: compile-time knobs for A/B experiments,
// bench/kernel_ab.py; a threshold decides the bits of every Gram in its range)
#ifndef FLAGCORE_REGISTER_MAX_P_AVX512
#define FLAGCORE_REGISTER_MAX_P_AVX512 64
#endif
#ifndef FLAGCORE_REGISTER_MAX_P_AVX2
#define FLAGCORE_REGISTER_MAX_P_AVX2 36
#endif
constexpr int64_t kGramRegisterMaxP32 = FLAGCORE_REGISTER_MAX_P_AVX512;
// float32 on AVX2 (3 x 3 tiles of 8-lane vectors) keeps it up to this p. A/B (one process,
// variants alternating, 2 threads, n = 1e6, best of 9, ms, AMD EPYC Zen 3, register vs packed vs
// OpenBLAS): p = 33 12.7 vs 16.4 vs 18.2, 36 16.3 vs 18.8 vs 20.3, 38 19.9 vs 19.5 vs 24.1, 40
// 24.8 vs 20.2 vs 22.1, 42 23.6 vs 20.2 vs 25.7.
constexpr int64_t kGramRegisterMaxP32Avx2 = FLAGCORE_REGISTER_MAX_P_AVX2;
constexpr int64_t kCancelColumns = int64_t(1) << 16;
// float32 on CPUs with AMX (gram_amx.hpp) runs the tile kernel from p = kGramAmxMinP on
// (set_gram_amx("on"): every p > kGramBlasMinP), where it measured faster than the AVX-512 FMA
// kernels. Below, the bf16 splitting and the transposes of the packing (about 0.3 ns per element,
// against 0.2 ns per element of tile work at p = 64) cost more than the tiles save; up to p = 128
// the packing of the next slice runs between the tile instructions (gram_amx.cpp,
// kPackAheadMaxTiles), which brought the tiles below the FMA kernels from p = 56 on. A/B (2
// threads, best of 5, ms, alternating processes, FMA vs AMX): p = 48 14.7-14.8 vs 14.3-14.8, 56
// 19.6-20.7 vs 19.2-19.5, 64 24.2-24.8 vs 20.6-20.7, 80 28.6-29.5 vs 27.3-27.9, 96 26.4 vs
// 22.0-23.3, 112 31.5-32.0 vs 26.8-27.5, 128 34.3-35.0 vs 31.3-31.9. Measured by
// bench/bench_gram_amx.py (bench/results/gram_amx.json, 2 threads; docs/scaling.md has the AMX /
// FMA times per p).
constexpr int64_t kGramAmxMinP = 56;
// From this p the AMX slices are kGramAmxKCNarrow columns: a packed slice of all rows (24 KiB
// per 16-row tile instead of 48) then stays in L2 next to the float64 result, which is updated
// twice as often. A/B (2 threads, best of 5, ms, 256 vs 128 columns): p = 128 28.5 vs 30.1-30.4,
// 192 30.0 vs 30.7-31.0, 256 33.1-36.0 vs 34.1-34.5, 320 43.3-43.8 vs 37.3-37.6, 384 63.0 vs 54,
// 1024 (per-item) 179.1 vs 146.7; 64 columns: slower at 320-1024 (51.7-52.6 at 320).
constexpr int64_t kGramAmxNarrowMinP = 224;
[[maybe_unused]] int64_t gram_amx_slice_cols(int64_t p) {
  return p >= kGramAmxNarrowMinP ? kGramAmxKCNarrow : kGramAmxKCWide;
}

// Column parts of the register / small-p paths: one per kMinPartColumns columns (at most
// kMaxParts). A problem of at most kMinPartColumns columns is cut into min(kSplitParts,
// work / 2^kSplitWorkShift, n / kSplitMinColumns) parts (work: its p (p + 1) / 2 * n
// multiply-adds; two parts from p = 23 at n = 32768, from n = 4096 at p = 64), so that a Gram of
// a fraction of a millisecond runs on more than one thread: before, one part on one thread.
// A/B, AMD Zen 4, float32, two threads, ms (bench/results/kernel_ab_gram_split_zen4_2026-12-05.json):
// p = 64, n = 16384 0.86 -> 0.45; p = 32, n = 32768 0.38 -> 0.20; p = 64, n = 32768 1.76 -> 0.90;
// one thread within 2 % (kernel_ab_gram_split_1t_zen4_2026-12-05.json). Like every part count it depends on n
// and p only, never on the thread count, so results stay identical on any thread count; the problems it cuts
// get other float32 partial sums than before (the same accuracy class).
constexpr int64_t kSplitWorkShift = 22;
constexpr int64_t kSplitMinColumns = 2048;
constexpr int64_t kSplitParts = 4;

int64_t parts_for(int64_t n, int64_t p) {
  if (n <= 0) return 1;
  const int64_t parts =
      std::max<int64_t>(1, std::min<int64_t>(kMaxParts, (n + kMinPartColumns - 1) / kMinPartColumns));
  if (parts > 1) return parts;
  const int64_t work = p * (p + 1) / 2 * n;
  return std::max<int64_t>(1,
                           std::min<int64_t>({kSplitParts, work >> kSplitWorkShift, n / kSplitMinColumns}));
}

template <typename T>
using AccumulateFn = void (*)(const T* const*, int64_t, int64_t, int64_t, double*);

template <typename T>
AccumulateFn<T> pick_kernel() {
  return FLAGCORE_SIMD_PICK(AccumulateFn<T>, gram_accumulate);
}

// The ending of every path: out (b x p x p) = the sum of each problem's `parts` partial matrices
// on one triangle, added in part order, then mirrored to the other triangle. Part g of problem q
// is at partial + g * part_stride + q * q_stride; partial == nullptr: out already holds the sums.
// first_in_out: out already holds part 0 and partial holds parts 1, 2, ... (from its start).
// lower: the sums are on the lower triangle (entry (i, j), i <= j, at [j * p + i]: the packed
// kernel's layout), else on the upper one. From p = kParallelSumMinP the rows and the mirror's
// 32 x 32 blocks (a transposed copy that stays in L1) run in parallel; each entry's sum is the
// same whatever the threads.
constexpr int64_t kParallelSumMinP = 128;

void sum_and_mirror(const double* partial, int64_t parts, int64_t part_stride, int64_t q_stride, bool lower,
                    int64_t b, int64_t p, double* out, bool first_in_out = false) {
  const int64_t pp = p * p;
  constexpr int64_t kB = 32;
  const int64_t nb = (p + kB - 1) / kB;
  const auto run = [&](const std::function<void(size_t)>& fn) {
    const auto task = [&](size_t t) {
      check_cancel();
      fn(t);
    };
    if (p >= kParallelSumMinP)
      parallel_for(static_cast<size_t>(nb), task);
    else
      for (size_t t = 0; t < static_cast<size_t>(nb); ++t) task(t);
  };
  for (int64_t q = 0; q < b; ++q) {
    check_cancel();
    double* gq = out + q * pp;
    if (partial != nullptr)
      run([&](size_t t) {
        for (int64_t r = static_cast<int64_t>(t) * kB; r < std::min(p, (static_cast<int64_t>(t) + 1) * kB);
             ++r) {
          const int64_t c0 = lower ? 0 : r, c1 = lower ? r + 1 : p;  // row r's entries on the triangle
          double* dst = gq + r * p;
          if (!first_in_out) {
            const double* src = partial + q * q_stride + r * p;
            for (int64_t c = c0; c < c1; ++c) dst[c] = src[c];
          }
          for (int64_t g = 1; g < parts; ++g) {
            const double* sg = partial + (first_in_out ? g - 1 : g) * part_stride + q * q_stride + r * p;
            for (int64_t c = c0; c < c1; ++c) dst[c] += sg[c];
          }
        }
      });
    // block row t of the mirror: entries (i, j), j > i, of row i from or to (j, i)
    run([&](size_t t) {
      const int64_t i0 = static_cast<int64_t>(t) * kB, i1 = std::min(p, i0 + kB);
      for (int64_t j0 = i0; j0 < p; j0 += kB) {
        const int64_t j1 = std::min(p, j0 + kB);
        for (int64_t i = i0; i < i1; ++i)
          for (int64_t j = std::max(j0, i + 1); j < j1; ++j) {
            if (lower)
              gq[i * p + j] = gq[j * p + i];
            else
              gq[j * p + i] = gq[i * p + j];
          }
      }
    });
  }
}

template <typename T>
void gram_blas_impl(const T* const* rows, int64_t b, int64_t p, int64_t n, double* out);
bool gram_packed_impl(const float* const* rows, int64_t b, int64_t p, int64_t n, double* out);
bool gram_amx_impl(const float* const* rows, int64_t b, int64_t p, int64_t n, double* out);

template <typename T>
void gram_cpu_impl(const T* const* rows, int64_t b, int64_t p, int64_t n, double* out) {
  if (b <= 0 || p <= 0) return;
  if constexpr (sizeof(T) == 4)
    if (p > kGramBlasMinP && (gram_amx_forced_on() || p >= kGramAmxMinP) && gram_amx_impl(rows, b, p, n, out))
      return;
  const SimdLevel level = simd_level();
  const bool register_f32 = sizeof(T) == 4 && ((level == SimdLevel::avx512 && p <= kGramRegisterMaxP32) ||
                                               (level == SimdLevel::avx2 && p <= kGramRegisterMaxP32Avx2));
  if (p > kGramBlasMinP && !register_f32) {
    if constexpr (sizeof(T) == 4)
      if (gram_packed_impl(rows, b, p, n, out)) return;
    return gram_blas_impl<T>(rows, b, p, n, out);
  }
  const int64_t parts = parts_for(n, p);
  const int64_t pp = p * p;
  const AccumulateFn<T> kernel = pick_kernel<T>();
  std::vector<double> partial(static_cast<size_t>(b * parts * pp), 0.0);
  parallel_for(static_cast<size_t>(b * parts), [&](size_t t) {
    const int64_t q = static_cast<int64_t>(t) / parts;
    const int64_t part = static_cast<int64_t>(t) % parts;
    const int64_t k0 = n * part / parts;
    const int64_t k1 = n * (part + 1) / parts;
    // sub-ranges at fixed offsets (n decides them, not the threads): a cancellation point
    // every ~kCancelColumns * p^2 / 2 multiply-adds
    for (int64_t k = k0; k < k1; k += kCancelColumns) {
      check_cancel();
      kernel(rows + q * p, p, k, std::min(k1, k + kCancelColumns), partial.data() + t * pp);
    }
  });
  sum_and_mirror(partial.data(), parts, pp, parts * pp, false, b, p, out);
}

// ---- BLAS path (p > kGramBlasMinP, where the Gram is compute-bound) ----
// Work items: (problem, tile pair (I <= J) of kTile rows each, column group). The column groups
// depend on n and p only (never on the thread count); each item walks its columns in chunks of
// kChunk, gets the chunk's block from OpenBLAS (ssyrk on the diagonal, sgemm off it; one thread)
// in the input precision and adds it to its float64 accumulator, and the groups are added in
// order at the end. So every entry is the same sum in the same order on any thread count, and
// float32 partial sums hold at most kChunk products (relative error ~2e-6 typical, kChunk * 2^-24
// ~ 6e-5 of the sum of |products| at worst), reduced in float64. kChunk = 1024 and kTile = 512
// keep the float32 -> float64 accumulation (one pass over a tile per chunk) near 1/kChunk of the
// multiply-adds and the tile in L2; the groups give parallelism at small p (at least
// kMinChunksPerGroup chunks each, at most kGroupBytes of float64 partials in all), the tile
// pairs at large p.
constexpr int kTile = 512;
constexpr int64_t kChunk = 1024;
constexpr int64_t kMinChunksPerGroup = 4;
constexpr int64_t kGroupBytes = int64_t(64) << 20;  // float64 partials of all groups: at most this

// Column groups of a problem cut into `chunks` chunks: at most kMaxParts, at most kGroupBytes of
// float64 partials for all of them, at least kMinChunksPerGroup chunks each (n and p decide).
int64_t group_count(int64_t b, int64_t p, int64_t chunks) {
  const int64_t per_group = b * p * p * int64_t(sizeof(double));
  const int64_t groups =
      std::min<int64_t>(kMaxParts, std::max<int64_t>(1, kGroupBytes / std::max<int64_t>(1, per_group)));
  return std::max<int64_t>(1, std::min<int64_t>(groups, chunks / kMinChunksPerGroup));
}

bool blas_ld(const void* const* rows, int64_t p, int64_t esize, int64_t k, int64_t& ld) {
  // Rows equally spaced (a strided (p, n) view) with a leading dimension BLAS accepts.
  if (p == 1) {
    ld = k;
    return true;
  }
  const char* r0 = static_cast<const char*>(rows[0]);
  const int64_t d = static_cast<const char*>(rows[1]) - r0;
  if (d % esize != 0) return false;
  for (int64_t i = 2; i < p; ++i)
    if (static_cast<const char*>(rows[i]) - static_cast<const char*>(rows[i - 1]) != d) return false;
  ld = d / esize;
  return ld >= k && ld <= 2147483647LL;
}

template <typename T>
struct BlasOps;
template <>
struct BlasOps<float> {
  static void syrk(int ni, int k, const float* A, int64_t lda, float* C, int ldc) {
    blas::ssyrk_rows(ni, k, A, lda, C, ldc);
  }
  static void gemm(int ni, int nj, int k, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
                   int ldc) {
    blas::sgemm_rows(ni, nj, k, A, lda, B, ldb, C, ldc);
  }
};
template <>
struct BlasOps<double> {
  static void syrk(int ni, int k, const double* A, int64_t lda, double* C, int ldc) {
    blas::dsyrk_rows(ni, k, A, lda, C, ldc);
  }
  static void gemm(int ni, int nj, int k, const double* A, int64_t lda, const double* B, int64_t ldb,
                   double* C, int ldc) {
    blas::dgemm_rows(ni, nj, k, A, lda, B, ldb, C, ldc);
  }
};

template <typename T>
struct BlasScratch {
  std::vector<T> a, b, c;
};

template <typename T>
void gram_blas_impl(const T* const* rows, int64_t b, int64_t p, int64_t n, double* out) {
  const int64_t pp = p * p;
  const int64_t tiles = (p + kTile - 1) / kTile;
  const int64_t pairs = tiles * (tiles + 1) / 2;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  const int64_t groups = group_count(b, p, chunks);
  // groups == 1: accumulate straight into out
  const int64_t partial_n = groups > 1 ? groups * b * pp : 0;
  const auto partial = uninit_array<double>(partial_n);
  fill_parallel(partial.get(), partial_n, 0.0);
  if (groups == 1) fill_parallel(out, b * pp, 0.0);
  std::vector<int64_t> ld(static_cast<size_t>(b));
  std::vector<char> direct(static_cast<size_t>(b));
  for (int64_t q = 0; q < b; ++q)
    direct[q] =
        blas_ld(reinterpret_cast<const void* const*>(rows + q * p), p, sizeof(T), kChunk, ld[q]) ? 1 : 0;
  std::vector<std::pair<int32_t, int32_t>> pair_ij;
  for (int32_t I = 0; I < tiles; ++I)
    for (int32_t J = I; J < tiles; ++J) pair_ij.emplace_back(I, J);
  parallel_for(static_cast<size_t>(b * pairs * groups), [&](size_t t) {
    const int64_t g = static_cast<int64_t>(t) % groups;
    const int64_t pr = (static_cast<int64_t>(t) / groups) % pairs;
    const int64_t q = static_cast<int64_t>(t) / (groups * pairs);
    const int64_t i0 = int64_t(pair_ij[pr].first) * kTile, j0 = int64_t(pair_ij[pr].second) * kTile;
    const int ni = static_cast<int>(std::min<int64_t>(kTile, p - i0));
    const int nj = static_cast<int>(std::min<int64_t>(kTile, p - j0));
    const bool diag = i0 == j0;
    double* acc = groups > 1 ? partial.get() + (g * b + q) * pp : out + q * pp;
    const T* const* rq = rows + q * p;
    thread_local BlasScratch<T> sc;
    if (sc.c.size() < size_t(kTile) * kTile) sc.c.resize(size_t(kTile) * kTile);
    // group boundaries on chunk boundaries
    const int64_t k0 = std::min(n, chunks * g / groups * kChunk),
                  k1 = std::min(n, chunks * (g + 1) / groups * kChunk);
    for (int64_t k = k0; k < k1; k += kChunk) {
      check_cancel();
      const int len = static_cast<int>(std::min<int64_t>(kChunk, k1 - k));
      const T* A;
      const T* B;
      int64_t lda, ldb;
      if (direct[q]) {
        A = rq[i0] + k;
        B = rq[j0] + k;
        lda = ldb = ld[q];
      } else {  // rows anywhere in memory: pack this chunk of the tile rows
        if (sc.a.size() < size_t(kTile) * kChunk) sc.a.resize(size_t(kTile) * kChunk);
        if (sc.b.size() < size_t(kTile) * kChunk) sc.b.resize(size_t(kTile) * kChunk);
        for (int i = 0; i < ni; ++i)
          std::copy(rq[i0 + i] + k, rq[i0 + i] + k + len, sc.a.data() + size_t(i) * kChunk);
        if (!diag)
          for (int j = 0; j < nj; ++j)
            std::copy(rq[j0 + j] + k, rq[j0 + j] + k + len, sc.b.data() + size_t(j) * kChunk);
        A = sc.a.data();
        B = diag ? sc.a.data() : sc.b.data();
        lda = ldb = kChunk;
      }
      T* C = sc.c.data();
      if (diag) {
        BlasOps<T>::syrk(ni, len, A, lda, C, kTile);
        for (int i = 0; i < ni; ++i) {
          double* arow = acc + (i0 + i) * p + j0;
          const T* crow = C + size_t(i) * kTile;
          for (int j = i; j < nj; ++j) arow[j] += double(crow[j]);
        }
      } else {
        BlasOps<T>::gemm(ni, nj, len, A, lda, B, ldb, C, kTile);
        for (int i = 0; i < ni; ++i) {
          double* arow = acc + (i0 + i) * p + j0;
          const T* crow = C + size_t(i) * kTile;
          for (int j = 0; j < nj; ++j) arow[j] += double(crow[j]);
        }
      }
    }
  });
  sum_and_mirror(groups > 1 ? partial.get() : nullptr, groups, b * pp, pp, false, b, p, out);
}

// ---- Packed AVX-512 path (float32, p > kGramBlasMinP, CPUs with AVX-512) ----
// Work items: (problem, row part, column group). Row parts are runs of kGramPackedMR-row strips
// of about equal work (a strip's work is the number of columns right of its diagonal), more of
// them as p grows (one up to p = 511, p / 256 up to 16); column groups of whole kGramPackedKC
// slices (item_group_count; from p = 512 on, gram_packed_shared instead). Both depend on p and n
// only. Each item writes its rows' upper-triangle entries of its group's float64 partial
// (gram_packed.hpp: the same operations in the same order whatever the thread count), and the
// groups are added in order.
#if defined(FLAGCORE_X86_DISPATCH)
// Large p (>= kGramPackedSharedMinP): the row parts would each re-pack the rows right of them
// (about p * parts / 2 rows per slice), so here a run of up to kSuper slices of all rows is
// packed once (strips in parallel) and shared by the parts (in parallel), whose float64
// accumulators persist over the runs; every part adds its slices in column order, so the sums
// do not depend on the thread count. A run is at most kSuperBytes of packed floats (one slice
// from p = 1024): a run still in L2 when the parts read it. Measured (quiet, 2 threads, best of
// 5, n = 1e5 / 5e4 / 1e4): 32 MiB runs vs 2 MiB p = 512 127-132 vs 118-127 ms, p = 1024 234-257
// vs 215-225 ms, p = 4096 839-912 vs 801-826 ms (a standalone one-thread driver at p = 1024: the
// slice loop 133 GF/s from a 16-slice run, 147 GF/s from a single slice).
constexpr int64_t kGramPackedSharedMinP = 512;
constexpr int64_t kSuperBytes = int64_t(2) << 20;  // packed floats shared by the parts

// The kernel a shared run drives: `units` packed units of rows (strips, tiles), slices of kc columns,
// slice_elems elements of type E per packed slice of all units; pack(rq, k, kc, u0, u1, dst) packs
// units [u0, u1) of the slice at column k into the slice buffer dst; slice(pk, kc, u0, u1, g,
// first) adds (or stores, first) the slice's products of the rows of units [u0, u1) into g, on
// the triangle `lower` says (sum_and_mirror).
template <typename E>
struct SharedKernel {
  int64_t units, kc, slice_elems;
  bool lower;
  std::function<void(const float* const*, int64_t, int64_t, int64_t, int64_t, E*)> pack;
  std::function<void(const E*, int64_t, int64_t, int64_t, double*, bool)> slice;
};

template <typename E>
void gram_shared_runs(const float* const* rows, int64_t b, int64_t p, int64_t n, double* out,
                      const std::vector<int64_t>& bound, const SharedKernel<E>& ker) {
  const int64_t pp = p * p;
  const int64_t KC = ker.kc;
  const int64_t strips = ker.units;
  const int64_t parts = static_cast<int64_t>(bound.size()) - 1;
  const int64_t per_slice = ker.slice_elems;
  const int64_t super = std::max<int64_t>(
      1, std::min<int64_t>(16, kSuperBytes / (per_slice * static_cast<int64_t>(sizeof(E)))));
  // two run buffers: while the parts multiply run r from one, the packing tasks of run r + 1
  // (in the same parallel_for) fill the other, so each run costs one barrier. With two parts
  // the packing tasks are taken first (their memory reads overlap with the other thread's
  // arithmetic); from kPacksLastMinParts parts on they are taken last, so the threads that
  // finish their parts first pack while the others finish theirs (the parts of equal work take
  // unequal times; the tasks' order changes no result). A/B (alternating processes, 2 threads,
  // ms, first vs last): p = 512 (2 parts) 105-110 vs 109-114; 1024 194-209 vs 191-206, 2048
  // 331-345 vs 308-324, 4096 656-692 vs 635-666.
  constexpr int64_t kPacksLastMinParts = 4;
  const bool packs_last = parts >= kPacksLastMinParts;
  const AlignedArray<E> pk = aligned_array<E>(static_cast<size_t>(2 * super * per_slice));
  // rows [i0, i1) of part t (empty when the equal-work cut left it no unit)
  const auto part_rows = [&](size_t t) { return std::make_pair(bound[t], bound[t + 1]); };
  constexpr int64_t kPackStrips = 8;  // units per packing task
  const int64_t pack_tasks = (strips + kPackStrips - 1) / kPackStrips;
  const int64_t run_cols = super * KC;
  const int64_t runs = (n + run_cols - 1) / run_cols;
  // the slices of run r (ns of them): pack task t of the run into buffer r % 2
  const auto slices_of = [&](int64_t r) { return std::min(super, (n - r * run_cols + KC - 1) / KC); };
  const auto pack_task = [&](const float* const* rq, int64_t r, int64_t t) {
    const int64_t j = t / pack_tasks, c = t % pack_tasks;
    const int64_t kj = r * run_cols + j * KC, kc = std::min(KC, n - kj);
    ker.pack(rq, kj, kc, c * kPackStrips, std::min(strips, (c + 1) * kPackStrips),
             pk.get() + ((r % 2) * super + j) * per_slice);
  };
  for (int64_t q = 0; q < b; ++q) {
    const float* const* rq = rows + q * p;
    double* gq = out + q * pp;
    // the parts write straight into gq's triangle, their own rows or columns of it: the first
    // slice stores, the later ones add
    if (runs == 0) {
      fill_parallel(gq, pp, 0.0);
      continue;
    }
    parallel_for(static_cast<size_t>(slices_of(0) * pack_tasks),
                 [&](size_t t) { pack_task(rq, 0, static_cast<int64_t>(t)); });
    for (int64_t r = 0; r < runs; ++r) {
      check_cancel();
      const int64_t ns = slices_of(r);
      const int64_t next = r + 1 < runs ? slices_of(r + 1) * pack_tasks : 0;
      parallel_for(static_cast<size_t>(next + parts), [&](size_t task) {
        const int64_t t = static_cast<int64_t>(task);
        const int64_t part = packs_last ? t : t - next;  // the part of this task, or a packing task
        if (part < 0 || part >= parts) return pack_task(rq, r + 1, packs_last ? t - parts : t);
        const auto [u0, u1] = part_rows(static_cast<size_t>(part));
        if (u0 >= u1) return;
        for (int64_t j = 0; j < ns; ++j) {
          check_cancel();
          const int64_t kc = std::min(KC, n - (r * run_cols + j * KC));
          ker.slice(pk.get() + ((r % 2) * super + j) * per_slice, kc, u0, u1, gq, r == 0 && j == 0);
        }
      });
    }
  }
  sum_and_mirror(nullptr, 1, 0, 0, ker.lower, b, p, out);
}

// AVX2 CPUs run the packed kernel for kGramRegisterMaxP32Avx2 < p <= this, OpenBLAS above.
// Every item packs its own slices: the shared path (gram_packed_shared) was slower there (AMD
// EPYC Zen 3, L2 512 KiB per core, 2 threads, best of 7, ms, per-item vs shared: p = 512 204.2
// vs 250.4, 1024 414.3 vs 457.9). Packed vs OpenBLAS, the variants alternating in a rotating
// order (2 threads, best of 6, ms): p = 1024 350.5 vs 384.1, 2048 600.0 vs 591.9, 4096 1201.6
// vs 1097.9 (there the float64 update of the 128 MiB result per slice costs more than the
// kernel gains); every p: bench/bench_gram_paths.py (bench/results/gram_paths_avx2.json).
constexpr int64_t kGramPackedAvx2MaxP = 2048;

// The packed FMA kernel of this CPU's instruction set (AVX-512: 32-row strips; AVX2: 16-row
// strips; both 512-column slices), or nullptr (other CPUs: the OpenBLAS path).
// own_slices: every item packs its own slices at every p (else from kGramPackedSharedMinP the
// slices are packed once and shared by the row parts); max_p: OpenBLAS above it.
struct PackedKernel {
  int64_t mr, kc;
  bool own_slices;
  int64_t max_p;
  void (*rows)(const float* const*, int64_t, int64_t, int64_t, int64_t, int64_t, double*);
  void (*pack)(const float* const*, int64_t, int64_t, int64_t, int64_t, int64_t, float*);
  void (*slice)(const float*, int64_t, int64_t, int64_t, int64_t, double*, bool);
};

const PackedKernel* packed_kernel() {
  static const PackedKernel k512{kGramPackedMR,
                                 kGramPackedKC,
                                 false,
                                 std::numeric_limits<int64_t>::max(),
                                 &simd_avx512::gram_packed_rows,
                                 &simd_avx512::gram_packed_pack,
                                 &simd_avx512::gram_packed_slice};
  static const PackedKernel k2{kGramPackedAvx2MR,
                               kGramPackedAvx2KC,
                               true,
                               kGramPackedAvx2MaxP,
                               &simd_avx2::gram_packed_rows,
                               &simd_avx2::gram_packed_pack,
                               &simd_avx2::gram_packed_slice};
  switch (simd_level()) {
    case SimdLevel::avx512:
      return &k512;
    case SimdLevel::avx2:
      return &k2;
    default:
      return nullptr;
  }
}

std::atomic<bool> g_packed_shared_forced{false};

void gram_packed_shared(const float* const* rows, int64_t b, int64_t p, int64_t n, double* out,
                        const std::vector<int64_t>& bound, const PackedKernel& pk) {
  const int64_t MR = pk.mr;
  const int64_t strips = (p + MR - 1) / MR;
  SharedKernel<float> ker{strips, pk.kc, strips * pk.kc * MR, true, nullptr, nullptr};
  ker.pack = [p, &pk](const float* const* rq, int64_t k, int64_t kc, int64_t s0, int64_t s1, float* dst) {
    pk.pack(rq, p, k, kc, s0, s1, dst);
  };
  ker.slice = [p, &pk, MR](const float* buf, int64_t kc, int64_t s0, int64_t s1, double* g, bool first) {
    pk.slice(buf, kc, p, std::min(p, s0 * MR), std::min(p, s1 * MR), g, first);
  };
  gram_shared_runs(rows, b, p, n, out, bound, ker);
}
#endif

// The per-item paths keep their column groups' float64 partials (all groups but the first, which
// writes into the output) for the calling thread's next call when they are at most this many
// bytes: fresh pages cost a page fault and a kernel zeroing each.
constexpr size_t kKeepPartialBytes = size_t(16) << 20;

// The column groups' float64 partials of the packed and AMX paths (need doubles; nullptr when 0):
// each item writes (=) its entries in its first slice (every group has slices when groups > 1),
// so the buffer needs no zeroing; kept for the calling thread's next call when at most
// kKeepPartialBytes, else allocated into own and freed with it.
double* group_partials(size_t need, AlignedArray<double>& own) {
  thread_local AlignedArray<double> kept;
  thread_local size_t kept_size = 0;
  if (need == 0) return nullptr;
  if (need * sizeof(double) <= kKeepPartialBytes) {
    if (kept_size < need) {
      kept = aligned_array<double>(need);
      kept_size = need;
    }
    return kept.get();
  }
  own = aligned_array<double>(need);
  return own.get();
}

// Column groups of the per-item paths for a problem of `slices` slices: a power of two (so the
// items split evenly over 2, 4, ... threads), at most kMaxParts, at least kMinChunksPerGroup
// slices each, and the partials of the groups after the first at most kKeepPartialBytes (so they
// are kept between calls) or, where one p x p partial is larger than that, one of them (two
// groups); at least 1. Depends on b, p and n only. Measured against the BLAS path's rule (up to
// 64 MiB of partials in all, any count; 2 threads, best of 5, ms): AMX p = 512 83.7 vs 62.9, 1024
// 145.4 vs 128.8; the FMA kernels p = 384 64.9 vs 55.5, 448 77.4 vs 63.5 (a p = 768 run with 3
// groups on 2 threads: 117 ms, one thread did two of them). Two groups against one group in two
// row parts (AMX): p = 2048 188.0-216.7 vs 229.7-232.6, 4096 452.7-456.6 vs 445.5-456.0.
int64_t item_group_count(int64_t b, int64_t p, int64_t slices) {
  const int64_t per_group = std::max<int64_t>(1, b * p * p * int64_t(sizeof(double)));
  const int64_t kept = std::max<int64_t>(2, 1 + static_cast<int64_t>(kKeepPartialBytes) / per_group);
  const int64_t cap = std::min<int64_t>({kMaxParts, kept, slices / kMinChunksPerGroup});
  int64_t groups = 1;
  while (2 * groups <= cap) groups *= 2;
  return groups;
}

// Cuts `units` tiles or strips of rows into `parts` runs of about equal work (the work of unit s
// is the number of units right of its diagonal, units - s); part t has units [bound[t],
// bound[t + 1]) (empty ones at the end when parts > units).
std::vector<int64_t> equal_work_cut(int64_t units, int64_t parts) {
  parts = std::max<int64_t>(1, parts);
  std::vector<int64_t> bound(static_cast<size_t>(parts + 1), units);
  // work before unit s: sum_{t < s} (units - t)
  const double total = double(units) * double(units + 1) / 2.0;
  int64_t s = 0;
  bound[0] = 0;
  for (int64_t k = 1; k < parts; ++k) {
    while (s < units &&
           double(s) * double(units) - double(s) * double(s - 1) / 2.0 < total * double(k) / double(parts))
      ++s;
    bound[static_cast<size_t>(k)] = std::min(units, std::max(s, bound[static_cast<size_t>(k - 1)] + 1));
  }
  return bound;
}

// How many row parts the AVX-512 packed kernel's driver cuts `units` strips into with up to two
// threads: one up to p = 511, then p / 256 up to 16 (shared_run_bounds gives more threads more).
[[maybe_unused]] int64_t packed_base_parts(int64_t p, int64_t units) {
  return std::max<int64_t>(1, std::min<int64_t>({16, p / 256, units}));
}

// The row parts of a shared run (gram_shared_runs) given `base` parts: with more than two
// threads, at least two parts per thread (at most one per unit), so that every thread has work
// and the parts, taken in order (largest first) by whichever thread is free, even out. Any
// split gives the same bits: each entry belongs to one part, which adds its slices in column
// order. Why: on the 16-core AVX-512 + AMX host of the GPU machine (2026-12-04, run 6,
// bench/results/gram_paths_avx512_h200host_16t_2026-12-04.json) the AVX-512 kernel took 269 ms at
// p = 1024, n = 5e4 against OpenBLAS 105 and the AVX2 kernel (per-item driver) 103: its shared
// runs had p / 256 = 4 parts, i.e. 4 of 16 threads at work. With 2 threads nothing changes
// (the tuning of the 2-core machines). Not yet measured on a machine of more cores.
[[maybe_unused]] std::vector<int64_t> shared_run_bounds(int64_t units, int64_t base) {
  const int64_t threads = num_threads();
  const int64_t want = threads > 2 ? 2 * threads : 1;
  return equal_work_cut(units, std::min<int64_t>(units, std::max<int64_t>(base, want)));
}

// The per-item paths of the packed and AMX kernels. Work items: (problem, row part, column
// group); parts as `bound` cuts the units (strips, tiles), groups of whole kc-column slices
// (item_group_count: p and n decide them). item(rows of the problem, u0, u1, k0, k1, acc) writes
// (=) its rows' entries of acc on its first slice and adds the later ones; group 0 writes into
// the output, the others into partials that are added in order, then the result is mirrored
// from the triangle `lower` says. The row parts change no sum, so `bound` may depend on the
// thread count.
void gram_items(
    const float* const* rows, int64_t b, int64_t p, int64_t n, double* out, const std::vector<int64_t>& bound,
    int64_t kc, bool lower,
    const std::function<void(const float* const*, int64_t, int64_t, int64_t, int64_t, double*)>& item) {
  const int64_t pp = p * p;
  const int64_t parts = static_cast<int64_t>(bound.size()) - 1;
  const int64_t slices = (n + kc - 1) / kc;
  const int64_t groups = item_group_count(b, p, slices);
  AlignedArray<double> own;
  double* partial = group_partials(static_cast<size_t>((groups - 1) * b * pp), own);
  // no slice (n == 0): zeros
  if (slices == 0) fill_parallel(out, b * pp, 0.0);
  parallel_for(static_cast<size_t>(b * parts * groups), [&](size_t t) {
    const int64_t g = static_cast<int64_t>(t) % groups;
    const int64_t part = (static_cast<int64_t>(t) / groups) % parts;
    const int64_t q = static_cast<int64_t>(t) / (groups * parts);
    const int64_t u0 = bound[static_cast<size_t>(part)], u1 = bound[static_cast<size_t>(part + 1)];
    if (u0 >= u1) return;
    const int64_t k0 = std::min(n, slices * g / groups * kc);
    const int64_t k1 = std::min(n, slices * (g + 1) / groups * kc);
    item(rows + q * p, u0, u1, k0, k1, g > 0 ? partial + ((g - 1) * b + q) * pp : out + q * pp);
  });
  sum_and_mirror(partial, groups, b * pp, pp, lower, b, p, out, true);
}

bool gram_packed_impl(const float* const* rows, int64_t b, int64_t p, int64_t n, double* out) {
#if defined(FLAGCORE_X86_DISPATCH)
  const PackedKernel* pk = packed_kernel();
  if (pk == nullptr || p > pk->max_p) return false;
  const int64_t MR = pk->mr;
  const int64_t strips = (p + MR - 1) / MR;
  std::vector<int64_t> bound;
  if (pk->own_slices && !g_packed_shared_forced.load(std::memory_order_relaxed)) {
    // row parts only as many as the threads need, as on the AMX path (gram_amx_impl)
    const int64_t items = b * item_group_count(b, p, (n + pk->kc - 1) / pk->kc);
    bound = equal_work_cut(strips, std::min<int64_t>(strips, (int64_t(num_threads()) + items - 1) / items));
  } else {
    const int64_t base = packed_base_parts(p, strips);
    if (p >= kGramPackedSharedMinP) {
      gram_packed_shared(rows, b, p, n, out, shared_run_bounds(strips, base), *pk);
      return true;
    }
    bound = equal_work_cut(strips, base);
  }
  gram_items(
      rows, b, p, n, out, bound, pk->kc, true,
      [p, pk, MR](const float* const* rq, int64_t u0, int64_t u1, int64_t k0, int64_t k1, double* acc) {
        const int64_t i0 = u0 * MR, i1 = std::min(p, u1 * MR);
        if (i0 < i1) pk->rows(rq, p, i0, i1, k0, k1, acc);
      });
  return true;
#else
  (void)rows, (void)b, (void)p, (void)n, (void)out;
  return false;
#endif
}

// ---- AMX path (float32, p >= kGramAmxMinP, CPUs with AMX-BF16; gram_amx.hpp) ----
// Work items as in the packed path: (problem, row part, column group), column groups of whole
// slices (item_group_count, p and n decide), added in order. Each item packs its own slices, so
// a core's packed tiles stay in its own L2; the row parts (equal work) are only as many as the
// threads need: ceil(threads / (b * groups)). With one group and more than kAmxItemMaxParts
// parts (many threads at large p), where the items would re-pack the rows right of them many
// times over, each slice is packed once and shared by the row parts instead (the same sums: one
// group, slices in order). Measured (2 threads, best of 5, ms, per-item vs shared; the AMX items
// with 128-column slices): p = 512 62.9 vs 117.8-127.0, 1024 128.8 vs 173.9-180.8, 2048 (two
// parts) 217.8 vs 253.4, 4096 (two parts) 454.8 vs 493.4. The shared path is not measured beyond
// 2 threads (this machine), and neither is this switch.
constexpr int64_t kAmxItemMaxParts = 4;

bool gram_amx_impl(const float* const* rows, int64_t b, int64_t p, int64_t n, double* out) {
#if defined(FLAGCORE_X86_DISPATCH) && defined(FLAGCORE_HAVE_AMX)
  if (!gram_amx_enabled()) return false;
  const int64_t tiles = (p + 15) / 16;
  const int64_t kc = gram_amx_slice_cols(p);
  const int64_t groups = item_group_count(b, p, (n + kc - 1) / kc);
  const int64_t items = b * groups;
  const int64_t parts = std::min<int64_t>(tiles, (int64_t(num_threads()) + items - 1) / items);
  if (groups == 1 && parts > kAmxItemMaxParts) {
    SharedKernel<uint16_t> ker{tiles, kc, tiles * gram_amx_tile_elems(kc), false, nullptr, nullptr};
    ker.pack = [p, kc](const float* const* rq, int64_t k, int64_t len, int64_t u0, int64_t u1,
                       uint16_t* dst) { amx::gram_amx_pack(rq, p, kc, k, len, u0, u1, true, dst); };
    ker.slice = [p, kc](const uint16_t* pk, int64_t len, int64_t t0, int64_t t1, double* g, bool first) {
      amx::gram_amx_slice(pk, kc, len, p, t0, t1, g, first);
    };
    gram_shared_runs(rows, b, p, n, out, shared_run_bounds(tiles, parts), ker);
    return true;
  }
  gram_items(rows, b, p, n, out, equal_work_cut(tiles, parts), kc, false,
             [p, kc](const float* const* rq, int64_t t0, int64_t t1, int64_t k0, int64_t k1, double* acc) {
               amx::gram_amx_rows(rq, p, kc, t0, t1, k0, k1, acc);
             });
  return true;
#else
  (void)rows, (void)b, (void)p, (void)n, (void)out;
  return false;
#endif
}

}  // namespace

// ---- AMX availability and the switch (gram_amx.hpp) ----
namespace {
bool detect_amx_cpu() {
#if defined(FLAGCORE_X86_DISPATCH) && defined(FLAGCORE_HAVE_AMX) && defined(__linux__)
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid_max(0, nullptr) < 7) return false;
  __cpuid_count(7, 0, a, b, c, d);
  const bool avx512bw = (b >> 30) & 1u, amx_bf16 = (d >> 22) & 1u, amx_tile = (d >> 24) & 1u;
  if (!avx512bw || !amx_bf16 || !amx_tile) return false;
  __cpuid_count(7, 1, a, b, c, d);
  return (a >> 5) & 1u;  // AVX512-BF16
#else
  return false;
#endif
}

bool request_amx() {
#if defined(FLAGCORE_X86_DISPATCH) && defined(FLAGCORE_HAVE_AMX) && defined(__linux__)
  // Linux >= 5.16 hands the tile state to a process only on request (ARCH_REQ_XCOMP_PERM for
  // XFEATURE_XTILEDATA); it refuses when the signal stacks in use are too small for it, and once
  // granted, later sigaltstack() calls need room for the tiles (8 KiB more). So it is asked only
  // when a Gram is about to use the tiles, never at import.
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return gram_amx_cpu() && syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}

// -1: auto (FLAGCORE_AMX, else on when supported), 0: off, 1: on
std::atomic<int> g_amx_forced{-1};
}  // namespace

bool gram_amx_cpu() {
  static const bool cpu = detect_amx_cpu();
  return cpu;
}

bool gram_amx_supported() {
  static const bool granted = request_amx();
  return granted;
}

bool gram_amx_forced_on() {
  return g_amx_forced.load(std::memory_order_relaxed) == 1;
}

bool gram_amx_wanted() {
  if (simd_level() != SimdLevel::avx512 || !gram_amx_cpu()) return false;
  const int forced = g_amx_forced.load(std::memory_order_relaxed);
  if (forced >= 0) return forced == 1;
  static const bool from_env = [] {
    const char* env = std::getenv("FLAGCORE_AMX");
    return env == nullptr || (std::string(env) != "0" && std::string(env) != "off");  // checked at import
  }();
  return from_env;
}

bool gram_amx_enabled() {
  return gram_amx_wanted() && gram_amx_supported();
}

void set_gram_packed_shared(const std::string& mode) {
  FLAGCORE_CHECK_ARG(mode == "auto" || mode == "on",
                     "set_gram_packed_shared: mode must be 'auto' or 'on', got '" << mode << "'");
#if defined(FLAGCORE_X86_DISPATCH)
  g_packed_shared_forced.store(mode == "on");
#endif
}

void set_gram_amx(const std::string& mode) {
  FLAGCORE_CHECK_ARG(mode == "auto" || mode == "on" || mode == "off",
                     "set_gram_amx: mode must be 'auto', 'on' or 'off', got '" << mode << "'");
  FLAGCORE_CHECK_ARG(mode != "on" || gram_amx_supported(),
                     "set_gram_amx: this CPU or OS does not offer AMX-BF16 tiles (mode 'on' asked)");
  g_amx_forced.store(mode == "auto" ? -1 : mode == "on" ? 1 : 0);
}

// Rare path for float32 input: rows whose diagonal came out non-finite are recomputed in float64
// against every row (finite data whose float32 products overflowed gets its exact value; real
// NaN/Inf data stays non-finite).
// The same for rows so small that float32 products underflow (|x| below ~1e-19: products are
// subnormal or zero): a diagonal below n * 2^-100 (average square far above FLT_MIN otherwise)
// that is not an exactly zero row.
void refine_nonfinite_rows(const float* const* rows, int64_t b, int64_t p, int64_t n, double* out) {
  std::vector<std::pair<int64_t, int64_t>> bad;
  const double tiny = double(n) * 0x1p-100;
  for (int64_t q = 0; q < b; ++q)
    for (int64_t i = 0; i < p; ++i) {
      const double d = out[q * p * p + i * p + i];
      bool redo = !std::isfinite(d);
      if (!redo && d < tiny) {
        const float* xi = rows[q * p + i];
        for (int64_t k = 0; k < n && !redo; ++k) redo = xi[k] != 0.0f;
      }
      if (redo) bad.emplace_back(q, i);
    }
  if (bad.empty()) return;
  std::vector<double> vals(bad.size() * static_cast<size_t>(p));
  parallel_for(bad.size(), [&](size_t t) {
    check_cancel();
    const int64_t q = bad[t].first, i = bad[t].second;
    const float* xi = rows[q * p + i];
    for (int64_t j = 0; j < p; ++j) {
      const float* xj = rows[q * p + j];
      double s = 0.0;
      for (int64_t k = 0; k < n; ++k) s += double(xi[k]) * double(xj[k]);
      vals[t * p + j] = s;
    }
  });
  for (size_t t = 0; t < bad.size(); ++t) {
    double* g = out + bad[t].first * p * p;
    const int64_t i = bad[t].second;
    for (int64_t j = 0; j < p; ++j) {
      g[i * p + j] = vals[t * p + j];
      g[j * p + i] = vals[t * p + j];
    }
  }
}

template <>
void gram_cpu<float>(const float* const* rows, int64_t b, int64_t p, int64_t n, double* out) {
  gram_cpu_impl<float>(rows, b, p, n, out);
  refine_nonfinite_rows(rows, b, p, n, out);
}

template <>
void gram_cpu<double>(const double* const* rows, int64_t b, int64_t p, int64_t n, double* out) {
  gram_cpu_impl<double>(rows, b, p, n, out);
}

}  // namespace flagcore
