// Coordinate-wise robust aggregation rules (CPU; the CUDA launcher is in coordinate_cuda.hpp).
//
// Every rule reduces, independently for each coordinate k, the values x[q, i, k] of the active
// workers i of problem q to one number:
//   median        midpoint of the two middle values (numpy convention; the middle one for odd pe)
//   trimmed_mean  drop the t smallest and t largest values, mean of the pe - 2t others
//   meamed        mean of the k values closest to the median
//   phocas        mean of the k values closest to the t-trimmed mean
//   mean          mean of the pe values (no sorting; here for its handling of non-finite workers)
// Ties in "closest" keep the smaller value (the reference sorts by distance, stably by value).
// Means and midpoints are formed in float64 and rounded once to the output type.
//
// Non-finite workers: a worker with any NaN or +-Inf value in problem q is excluded from that
// problem (reported in `excluded`); the rule then runs on the pe = p - e remaining workers with
// f_eff = max(f - e, 0), i.e. an excluded worker counts as one of the f Byzantine ones:
//   t = f_eff (trimmed_mean, phocas), k = pe - f_eff (meamed, phocas), or k = min(keep, pe)
//   when keep >= 0 (Bulyan's final step). A problem with every worker excluded outputs 0.
// The common case costs one read of the data: finiteness is checked while the values are
// gathered, and only a problem that turns out to hold a non-finite worker is recomputed.
//
// coordinate_cpu
//   rows     : b * p pointers; rows[q * p + i] -> n contiguous values of worker i, problem q
//   spec     : rule and f (validated by the caller: p > 2f for trimmed_mean, f < p otherwise)
//   out      : b * n values, out[q * n + k]                                   // [B, N]
//   excluded : b * p bytes, in/out. On entry 1 marks a worker to leave out (it counts as
//              excluded: f_eff shrinks); on exit also 1 where a worker held a non-finite
//              value.                                                          // [B, P]
// A block of columns is sorted with a vectorised sorting network (Batcher's merge exchange for
// any number of inputs, Knuth's Algorithm M, pruned to the positions the rule reads):
// O(p log^2 p) vector min/max per block of 8-16 columns, no branch, at every p (up to
// kMaxNetwork). Parallel over blocks of columns; results do not depend on the thread count.
#pragma once
#include <math.h>  // isfinite in host and device code, as in flag_irls.hpp

#include <cstdint>
#include <utility>
#include <vector>

#include "common/check.hpp"

namespace flagcore {

enum class CoordRule : int { median = 0, trimmed_mean = 1, meamed = 2, phocas = 3, mean = 4 };

struct CoordSpec {
  CoordRule rule = CoordRule::median;
  int64_t f = 0;
  int64_t keep = -1;  // meamed only: explicit number of values kept (Bulyan's beta); -1: pe - f_eff
};

// The counts a rule uses on pe active workers of p (e = p - pe excluded).
struct CoordCounts {
  int pe = 0;  // active workers
  int t = 0;   // trimmed from each end (trimmed_mean, phocas)
  int k = 0;   // values kept around the centre (meamed, phocas)
};

FLAGCORE_HD inline CoordCounts coord_counts(const CoordSpec& s, int64_t p, int64_t pe) {
  const int64_t e = p - pe;
  const int64_t f_eff = s.f - e > 0 ? s.f - e : 0;
  CoordCounts c;
  c.pe = static_cast<int>(pe);
  c.t = static_cast<int>(f_eff);
  int64_t k = s.keep >= 0 ? (s.keep < pe ? s.keep : pe) : pe - f_eff;
  c.k = static_cast<int>(k < 1 ? 1 : k);
  if (2 * c.t >= c.pe) c.t = (c.pe - 1) / 2;  // unreachable for validated input; keeps >= 1 value
  return c;
}

// float64 sums of values near DBL_MAX overflow although their mean does not. The helpers below
// compute as before and, only when that overflowed, again with halved or pre-divided terms
// (partial sums of v_i / cnt stay within max |v_i|). Finite inputs thus give finite results;
// a non-finite input still gives a non-finite value (its worker is then excluded anyway).
template <typename T>
FLAGCORE_HD inline double mean_of(const T* v, int stride, int lo, int hi, int cnt) {
  double s = 0.0;
  for (int i = lo; i < hi; ++i) s += double(v[i * stride]);
  const double m = s / double(cnt);
  if (isfinite(m)) return m;
  const double inv = 1.0 / double(cnt);
  s = 0.0;
  for (int i = lo; i < hi; ++i) s += double(v[i * stride]) * inv;
  return s;
}

FLAGCORE_HD inline double midpoint(double a, double b) {
  const double m = 0.5 * (a + b);
  return isfinite(m) ? m : 0.5 * a + 0.5 * b;
}

// The rule applied to pe sorted values v[0], v[stride], ..., v[(pe - 1) * stride]. Shared by
// the CPU kernels and the CUDA kernel so that both compute the same thing by construction.
template <typename T>
FLAGCORE_HD inline double reduce_sorted(const T* v, int stride, CoordRule rule, CoordCounts c) {
  const int pe = c.pe;
  if (pe <= 0) return 0.0;
  if (rule == CoordRule::mean) return mean_of(v, stride, 0, pe, pe);
  double centre;
  if (rule == CoordRule::median || rule == CoordRule::meamed) {
    centre = midpoint(double(v[((pe - 1) / 2) * stride]), double(v[(pe / 2) * stride]));
    if (rule == CoordRule::median) return centre;
  } else {
    centre = mean_of(v, stride, c.t, pe - c.t, pe - 2 * c.t);
    if (rule == CoordRule::trimmed_mean) return centre;
  }
  // The k values closest to the centre are a window of the sorted values: shrink [l, r] from
  // the farther end; on a tie drop the right (larger) one. Distances that overflow are
  // compared halved (exact for normal numbers, and such values are far from subnormal).
  int l = 0, r = pe - 1;
  for (int d = 0; d < pe - c.k; ++d) {
    const double vl = double(v[l * stride]), vr = double(v[r * stride]);
    double dl = centre - vl, dr = vr - centre;
    if (!isfinite(dl) || !isfinite(dr)) {
      dl = 0.5 * centre - 0.5 * vl;
      dr = 0.5 * vr - 0.5 * centre;
    }
    if (dl > dr)
      ++l;
    else
      --r;
  }
  return mean_of(v, stride, l, r + 1, c.k);
}

// Largest number of workers the native coordinate rules accept (the network for 2^16 values
// has ~4e6 comparators, 32 MB; the binding refuses more with a clear error).
constexpr int64_t kMaxNetwork = int64_t(1) << 16;

// Comparators (i, j), i < j, min to i, of a sorting network for pe <= kMaxNetwork values,
// restricted to those that can affect the positions the rule reads.
std::vector<std::pair<int, int>> coordinate_network(int pe, CoordRule rule, CoordCounts c);

template <typename T>
void coordinate_cpu(const T* const* rows, int64_t b, int64_t p, int64_t n, const CoordSpec& spec, T* out,
                    uint8_t* excluded);

// Row sums in a fixed order (the plain mean, and flag/weighted_sum_cpu.cpp), with the
// instruction-set variant picked at run time:
//   acc[0:len] = sum_{r < m} cs[r] * xs[r][k0:k0+len], the rows added one after another in
//   order, in float64 (cs == nullptr: every coefficient 1, so the float64 sum of a float64
//   input is numpy's sum along axis 0 bit for bit). m == 0 gives zeros.
//   out (optional, [len]): T(acc / d) for d > 0 (the rounded quotient, numpy's mean when d is
//   the row count) or T(acc) for d == 0, written in the same pass. Returns whether every sum
//   is finite (true when out is null).
template <typename T>
bool sum_rows_dispatch(const T* const* xs, const double* cs, int64_t m, int64_t k0, int64_t len, double* acc,
                       T* out = nullptr, double d = 0.0);

// Per-instruction-set block kernels: columns [k0, k1) of the pe active rows sorted by the
// network `comp` (ncomp comparators, pairs flattened), reduced into out[k0:k1]; bad[i] is set
// to 1 when row i holds a non-finite value in these columns (out is then meaningless).
#define FLAGCORE_COORD_DECL(NS)                                                                              \
  namespace NS {                                                                                             \
  void coordinate_block(const float* const* rows, int pe, const int* comp, int ncomp, CoordRule rule,        \
                        CoordCounts c, int64_t k0, int64_t k1, float* out, uint8_t* bad);                    \
  void coordinate_block(const double* const* rows, int pe, const int* comp, int ncomp, CoordRule rule,       \
                        CoordCounts c, int64_t k0, int64_t k1, double* out, uint8_t* bad);                   \
  bool sum_rows(const float* const* xs, const double* cs, int64_t m, int64_t k0, int64_t len, double* acc,   \
                float* out, double d);                                                                       \
  bool sum_rows(const double* const* xs, const double* cs, int64_t m, int64_t k0, int64_t len, double* acc,  \
                double* out, double d);                                                                      \
  void mix_rows(const float* const* xs, int64_t m, const float* A, const float* div, int64_t i0, int64_t i1, \
                int64_t k0, int64_t len, float* const* out);                                                 \
  void mix_rows(const double* const* xs, int64_t m, const double* A, const double* div, int64_t i0,          \
                int64_t i1, int64_t k0, int64_t len, double* const* out);                                    \
  }
FLAGCORE_COORD_DECL(simd_generic)
FLAGCORE_COORD_DECL(simd_avx2)
FLAGCORE_COORD_DECL(simd_avx512)
#undef FLAGCORE_COORD_DECL

}  // namespace flagcore
