// Body of the coordinate-wise block kernel, compiled once per instruction set. The including
// file defines
//   FLAGCORE_SIMD_NS     namespace of this variant (simd_generic, simd_avx2, simd_avx512)
//   FLAGCORE_VEC_BYTES   bytes per vector register (16, 32, 64)
// A block holds L consecutive columns of every active row (row i's L values are contiguous in
// memory, so a row is loaded with plain vector loads); each comparator of the network is a
// vector min and max over the block, so L columns are sorted at once without branches. The
// block (pe rows of L values) lives in a scratch buffer that stays in L1 up to a few hundred
// workers and in L2 beyond, so the cost per column is the comparator count times a small
// constant at every p (no switch to a per-column sort).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#if FLAGCORE_VEC_BYTES >= 32
#include <immintrin.h>
#endif

#include "common/cancel.hpp"
#include "rules/coordinate.hpp"

namespace flagcore {
namespace FLAGCORE_SIMD_NS {
namespace {

constexpr int VB = FLAGCORE_VEC_BYTES;
constexpr int NV = 2;  // vectors per row per block (two independent chains per comparator)

template <typename T>
struct Vec;
template <>
struct Vec<float> {
  typedef float type __attribute__((vector_size(VB)));
};
template <>
struct Vec<double> {
  typedef double type __attribute__((vector_size(VB)));
};

template <typename T>
void block_kernel(const T* const* rows, int pe, const int* comp, int ncomp, CoordRule rule, CoordCounts c,
                  int64_t k0, int64_t k1, T* out, uint8_t* bad) {
  typedef typename Vec<T>::type vec;
  constexpr int W = VB / int(sizeof(T));  // lanes per vector
  constexpr int L = NV * W;               // columns per block
  struct Row {
    vec v[NV];
  };
  std::vector<Row> buf(static_cast<size_t>(pe));
  std::vector<Row> nan_probe(static_cast<size_t>(pe));  // x * 0 summed: NaN iff some x is NaN/Inf
  for (int i = 0; i < pe; ++i)
    for (int u = 0; u < NV; ++u) nan_probe[i].v[u] = vec{} * T(0);
  const int m1 = (pe - 1) / 2, m2 = pe / 2;
  // Ctrl-C: poll about every 2^18 comparator-or-load steps (well under a millisecond).
  const int64_t work_per_block = int64_t(ncomp) + pe;
  int64_t work = 0;

  for (int64_t k = k0; k < k1; k += L) {
    work += work_per_block;
    if (work >= (int64_t(1) << 18)) {
      work = 0;
      check_cancel();
    }
    const int valid = static_cast<int>(std::min<int64_t>(L, k1 - k));
    if (valid == L) {
      for (int i = 0; i < pe; ++i) {
        std::memcpy(buf[i].v, rows[i] + k, sizeof(Row));
        for (int u = 0; u < NV; ++u) nan_probe[i].v[u] += buf[i].v[u] * T(0);
      }
    } else {
      for (int i = 0; i < pe; ++i) {
        T* dst = reinterpret_cast<T*>(buf[i].v);
        std::memcpy(dst, rows[i] + k, sizeof(T) * static_cast<size_t>(valid));
        std::fill(dst + valid, dst + L, T(0));
        for (int u = 0; u < NV; ++u) nan_probe[i].v[u] += buf[i].v[u] * T(0);
      }
    }
    Row* B = buf.data();
    for (int ci = 0; ci < ncomp; ++ci) {
      vec* a = B[comp[2 * ci]].v;
      vec* b = B[comp[2 * ci + 1]].v;
      for (int u = 0; u < NV; ++u) {
        const vec x = a[u], y = b[u];
        const auto lt = x < y;
        a[u] = lt ? x : y;
        b[u] = lt ? y : x;
      }
    }
    const T* s = reinterpret_cast<const T*>(B);  // s[i * L + w]: i-th smallest of column w
    T* o = out + k;
    if (rule == CoordRule::median) {
      for (int w = 0; w < valid; ++w)
        o[w] = static_cast<T>(midpoint(double(s[m1 * L + w]), double(s[m2 * L + w])));
    } else if (rule == CoordRule::trimmed_mean || rule == CoordRule::mean) {
      // Sum in order, then divide (numpy's convention: float64 input gives numpy's result
      // bit for bit; the mean of 1, 4, 7 is exactly 4).
      const int t = rule == CoordRule::mean ? 0 : c.t;
      double acc[L];
      for (int w = 0; w < L; ++w) acc[w] = 0.0;
      for (int i = t; i < pe - t; ++i)
        for (int w = 0; w < L; ++w) acc[w] += double(s[i * L + w]);
      const double cnt = double(pe - 2 * t);
      for (int w = 0; w < valid; ++w) {
        const double m = acc[w] / cnt;  // overflowed only for float64 values near DBL_MAX
        o[w] = static_cast<T>(std::isfinite(m) ? m : mean_of(s + w, L, t, pe - t, pe - 2 * t));
      }
    } else {
      for (int w = 0; w < valid; ++w) o[w] = static_cast<T>(reduce_sorted(s + w, L, rule, c));
    }
  }
  for (int i = 0; i < pe; ++i)
    for (int u = 0; u < NV; ++u)
      for (int w = 0; w < W; ++w)
        if (std::isnan(nan_probe[i].v[u][w])) bad[i] = 1;
}

inline uint64_t exponent_all_ones(double v) {
  uint64_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  return uint64_t(((bits >> 52) & 0x7ff) == 0x7ff);
}

// acc[0:len] = sum_r cs[r] * xs[r][k0:k0+len] (cs == nullptr: every coefficient 1), rows added
// one after another in the order given, in float64. The accumulators (len <= a few thousand)
// stay in L1; R rows at a time are streamed through them, so the memory system sees R
// contiguous streams and the accumulators are loaded and stored once per R rows (the first
// group writes them without reading), without changing the order of the additions. The m % 8
// rows of a count that is not a multiple of 8 go first, as one group (before the nineteenth
// session: groups of 4 and 1, so p = 15 took five passes over the accumulators, now two; the
// same additions in the same order, so the same bits; A/B in alternating processes, AMD EPYC
// Zen 4, 2 threads, n = 6e7 / p, `aggregate(x, "mean")` over torch.mean in the same process:
// p = 5 0.58-0.60 vs 0.50-0.51, 7 0.66-0.78 vs 0.51-0.53, 9-16 within the noise), so the last
// group is a full one: it also writes the caller's output (kFinish: 1 the sum, 2 the sum times
// 1/d for a power-of-two d, 3 the sum divided by d) and checks the sums for NaN/Inf, so the conversion
// and the divisions overlap that group's loads instead of taking a pass of their own. While a
// group streams, the next group's rows (after the last group: the first rows of the next chunk)
// are prefetched into L2, one cache line per row and line of columns: the hardware prefetchers
// lose track of short row segments at page boundaries, and with p rows in flight they cannot
// follow them all.
constexpr int kSumGroup = 8;

template <typename T>
struct SumOut {
  T* out;    // nullptr: acc only
  double d;  // divisor (kFinish 3), 1/d (kFinish 2)
  uint64_t nonfinite;
};

// Columns [k, kend) of one group; the restrict-qualified outputs let the loop vectorise
// without a run-time aliasing check.
template <typename T, bool kOnes, int R, bool kFirst, int kFinish>
inline uint64_t add_span(const T* const* x, const double* c, int64_t k, int64_t kend, double* __restrict acc,
                         T* __restrict out, double d) {
  uint64_t nonfinite = 0;
  for (int64_t kk = k; kk < kend; ++kk) {
    // kOnes: the sum starts from +0.0 as numpy's add.reduce does (a column of -0.0 sums to +0.0)
    double a = kFirst ? (kOnes ? double(x[0][kk]) + 0.0 : c[0] * double(x[0][kk])) : acc[kk];
    for (int j = kFirst ? 1 : 0; j < R; ++j) a += kOnes ? double(x[j][kk]) : c[j] * double(x[j][kk]);
    acc[kk] = a;
    if constexpr (kFinish == 1) out[kk] = static_cast<T>(a);
    if constexpr (kFinish == 2) out[kk] = static_cast<T>(a * d);
    if constexpr (kFinish == 3) out[kk] = static_cast<T>(a / d);
    if constexpr (kFinish != 0) nonfinite |= exponent_all_ones(a);
  }
  return nonfinite;
}

// float32 rows at the AVX2 and AVX-512 levels: the same additions as add_span, a cache line (16
// columns) per step, in pieces of two vectors of float64 (one piece of 2 x 8 lanes at AVX-512,
// two of 2 x 4 at AVX2), each vector converted straight from memory (vcvtps2pd zmm, m256 or
// ymm, m128), the piece's two accumulator vectors chains of their own. GCC vectorises add_span
// by loading a whole vector of floats and extracting its upper half before converting it (a
// shuffle more per conversion, on the units the conversions and additions need), and lowers
// __builtin_convertvector of 8 floats to two 4-lane conversions and an insert. Same operations
// per column in the same order (fused multiply-adds where add_span's are contracted too), so
// the same bits (sha256 over mean, weighted sums, FA at every SIMD level). A/B in alternating
// processes (AMD Zen 4, one thread, data in L2, best of 300 calls, us), AVX-512: mean
// p = 8 x 131072 139 -> 108, 15 x 65536 114 -> 94, 64 x 16384 106 -> 91; weighted sum 127 -> 93,
// 101 -> 80, 91 -> 77 (bench/results/rowsum_line_ab_zen4_2026-12-05.json); the AVX2 build on
// the same CPU: mean 145 -> 113, 125 -> 98, 119 -> 96, weighted sum 156 -> 92, 126 -> 80,
// 119 -> 83 (rowsum_line_ab2_zen4_2026-12-05.json; an AVX2-only CPU is not measured); out of
// cache the difference is inside this VM's noise. (A first AVX2 form, four vector chains per
// step, was slower than GCC's: the conversions hoisted ahead of the additions spilled.)
#if FLAGCORE_VEC_BYTES >= 32
constexpr int kLineDW = VB / 8;                         // float64 lanes per vector
constexpr int kPieceNV = 2;                             // vectors (accumulator chains) per piece
constexpr int kLinePieces = 16 / (kLineDW * kPieceNV);  // pieces per line of 16 columns
typedef double LineD __attribute__((vector_size(VB)));
typedef float LineF __attribute__((vector_size(VB / 2)));
typedef long long LineI __attribute__((vector_size(VB)));
struct LineFlags {
  LineI v;  // all ones in a lane where some sum had an all-ones exponent (Inf or NaN)
};

inline LineD load_line_f32(const float* p) {
#if FLAGCORE_VEC_BYTES == 64
  return _mm512_cvtps_pd(_mm256_loadu_ps(p));
#else
  return _mm256_cvtps_pd(_mm_loadu_ps(p));
#endif
}

// a + v as the fused multiply-add v * one + a with one = 1.0: the same rounded sum (v * 1.0 is
// exact, so the one rounding is that of a + v, signed zeros, Inf and NaN included), issued to the
// multiply-add units instead of the adders the conversions share. The mean, one thread, data in
// L2 / L3 (p 8-256, 1-3 million values): 3-9 % less time at AVX2, 1-5 % at AVX-512, same bits
// (bench/results/kernel_ab_rowsum_zen4_2026-12-05.json).
inline LineD add_line(LineD a, LineD v, LineD one) {
#if FLAGCORE_VEC_BYTES == 64
  return _mm512_fmadd_pd(v, one, a);
#else
  return _mm256_fmadd_pd(v, one, a);
#endif
}

template <bool kOnes, int R, bool kFirst, int kFinish>
inline void add_line_f32(const float* const* x, const double* c, int64_t k, double* __restrict acc,
                         float* __restrict out, double d, LineFlags& flags) {
  const LineD one = LineD{} + 1.0;
  for (int piece = 0; piece < kLinePieces; ++piece) {
    const int64_t kp = k + piece * kPieceNV * kLineDW;
    LineD a[kPieceNV];
    for (int h = 0; h < kPieceNV; ++h) {
      if constexpr (kFirst) {
        const LineD v = load_line_f32(x[0] + kp + h * kLineDW);
        a[h] = kOnes ? v + LineD{} : c[0] * v;  // + 0.0: a column of -0.0 sums to +0.0
      } else {
        std::memcpy(&a[h], acc + kp + h * kLineDW, sizeof(LineD));
      }
    }
    for (int j = kFirst ? 1 : 0; j < R; ++j)
      for (int h = 0; h < kPieceNV; ++h) {
        const LineD v = load_line_f32(x[j] + kp + h * kLineDW);
        if constexpr (kOnes)
          a[h] = add_line(a[h], v, one);
        else
          a[h] += c[j] * v;
      }
    for (int h = 0; h < kPieceNV; ++h) {
      std::memcpy(acc + kp + h * kLineDW, &a[h], sizeof(LineD));
      if constexpr (kFinish != 0) {
        LineF o;
        if constexpr (kFinish == 1) o = __builtin_convertvector(a[h], LineF);
        if constexpr (kFinish == 2) o = __builtin_convertvector(a[h] * d, LineF);
        if constexpr (kFinish == 3) o = __builtin_convertvector(a[h] / d, LineF);
        std::memcpy(out + kp + h * kLineDW, &o, sizeof(o));
        constexpr long long kExp = 0x7ff0000000000000LL;
        flags.v |= ((LineI)a[h] & kExp) == kExp;
      }
    }
  }
}
#endif

template <typename T, bool kOnes, int R, bool kFirst, int kFinish>
inline void add_rows(const T* const* xs, const double* cs, int64_t r, int64_t k0, int64_t len, double* acc,
                     [[maybe_unused]] const T* const* pf, [[maybe_unused]] int npf, SumOut<T>& fin) {
  constexpr int64_t kLine = 64 / int64_t(sizeof(T));  // columns per cache line
  const T* x[R];
  double c[R];
  for (int j = 0; j < R; ++j) {
    x[j] = xs[r + j] + k0;
    c[j] = kOnes ? 1.0 : cs[r + j];
  }
  uint64_t nonfinite = 0;
  int64_t k = 0;
  // A group of fewer than 4 rows (a remainder of 1-3 rows of a count not a multiple of 8) has a
  // body so small that GCC unrolls add_span's line loop below into scalar code: one plain loop
  // instead (vectorised), without the prefetch. add_line_f32's explicit vectors serve every R;
  // the prefetch only from R = 4 (up to 8 prefetches per line cost a 1-row group more than
  // they save).
#if FLAGCORE_VEC_BYTES >= 32
  if constexpr (std::is_same_v<T, float>) {
    LineFlags flags{LineI{}};
    for (; k + kLine <= len; k += kLine) {
      if constexpr (R >= 4)
        for (int q = 0; q < npf; ++q) __builtin_prefetch(pf[q] + k, 0, 2);
      add_line_f32<kOnes, R, kFirst, kFinish>(x, c, k, acc, fin.out, fin.d, flags);
    }
    for (int w = 0; w < kLineDW; ++w) nonfinite |= uint64_t(flags.v[w] != 0);
  } else
#endif
      if constexpr (R >= 4)
    for (; k + kLine <= len; k += kLine) {
      for (int q = 0; q < npf; ++q) __builtin_prefetch(pf[q] + k, 0, 2);
      nonfinite |= add_span<T, kOnes, R, kFirst, kFinish>(x, c, k, k + kLine, acc, fin.out, fin.d);
    }
  nonfinite |= add_span<T, kOnes, R, kFirst, kFinish>(x, c, k, len, acc, fin.out, fin.d);
  fin.nonfinite |= nonfinite;
}

// group(std::integral_constant<int, rem>{}) for the remainder rem in 1 .. sizeof...(I) (nothing
// for 0): a run-time row count to the compile-time group size it needs.
template <typename G, int... I>
inline void group_for_remainder(G& group, int64_t rem, std::integer_sequence<int, I...>) {
  ((rem == I + 1 ? group(std::integral_constant<int, I + 1>{}) : void()), ...);
}

// out (when not null) gets T(acc / d) (d > 0: the rounded quotient as numpy forms it; for a
// power-of-two d the product with 1/d, the same rounded quotient) or T(acc) (d == 0), at
// out[0:len]. Returns whether every sum is finite (true when out is null).
template <typename T, bool kOnes>
bool sum_rows_kernel(const T* const* xs, const double* cs, int64_t m, int64_t k0, int64_t len,
                     double* __restrict acc, T* out, double d) {
  if (m == 0) {
    std::fill(acc, acc + len, 0.0);
    if (out != nullptr) std::fill(out, out + len, T(0));
    return true;
  }
  int finish = 0;
  SumOut<T> fin{out, d, 0};
  if (out != nullptr) {
    int e = 0;
    if (d == 0.0) {
      finish = 1;
    } else if (std::frexp(d, &e) == 0.5) {  // d = 2^(e-1): x * 2^(1-e) is the same quotient
      finish = 2;
      fin.d = 1.0 / d;
    } else {
      finish = 3;
    }
  }
  const T* pf[kSumGroup];
  int64_t r = 0;
  auto group = [&](auto width) {
    constexpr int R = decltype(width)::value;
    // prefetch the next group's rows here, or the first rows of the next chunk
    const int64_t nr = r + R < m ? r + R : 0;
    const int64_t off = r + R < m ? k0 : k0 + len;
    int npf = 0;
    for (int64_t i = nr; i < m && npf < kSumGroup; ++i) pf[npf++] = xs[i] + off;
    const int fm = r + R == m ? finish : 0;
#define FLAGCORE_ADD_ROWS(FIRST, FM) add_rows<T, kOnes, R, FIRST, FM>(xs, cs, r, k0, len, acc, pf, npf, fin)
    if (r == 0) {
      switch (fm) {
        case 1:
          FLAGCORE_ADD_ROWS(true, 1);
          break;
        case 2:
          FLAGCORE_ADD_ROWS(true, 2);
          break;
        case 3:
          FLAGCORE_ADD_ROWS(true, 3);
          break;
        default:
          FLAGCORE_ADD_ROWS(true, 0);
          break;
      }
    } else {
      switch (fm) {
        case 1:
          FLAGCORE_ADD_ROWS(false, 1);
          break;
        case 2:
          FLAGCORE_ADD_ROWS(false, 2);
          break;
        case 3:
          FLAGCORE_ADD_ROWS(false, 3);
          break;
        default:
          FLAGCORE_ADD_ROWS(false, 0);
          break;
      }
    }
#undef FLAGCORE_ADD_ROWS
    r += R;
  };
  // the rows of a count that is not a multiple of kSumGroup: one group first
  group_for_remainder(group, m % kSumGroup, std::make_integer_sequence<int, kSumGroup - 1>{});
  while (r < m) group(std::integral_constant<int, kSumGroup>{});
  return fin.nonfinite == 0;
}

// out[i, k] = (sum_j A[i, j] x_j[k]) / div[i] for rows i in [i0, i1) and columns
// [k0, k0 + len), accumulated in T (the data's precision, as a BLAS GEMM would) in the order
// j = 0, 1, ..., m - 1. From m = kMixPackMinRows input rows (too many separate streams for the
// hardware prefetchers), and for a last partial tile, the columns of a register tile of CW
// columns are first packed into a contiguous j-major panel (zero past len), which the tile
// then streams instead of m separate row segments (p = 1000, n = 1e4 NNM: 326 -> 240 ms on one
// thread; p = 64, n = 1e5: 17-20 -> 13-15 ms; below 64 rows packing cost more than it saved: at
// p = 8 3.7 -> 5.3 ms); the arithmetic is the same. Register tile: MR output rows x 2 vectors of columns
// (MR = 8 with 32 vector registers, else 4); the caller sizes [k0, k0 + len) so that the
// segments stay in L2. Ctrl-C is checked every 64 output rows.
constexpr int64_t kMixPackMinRows = 64;

template <typename T>
void mix_kernel(const T* const* xs, int64_t m, const T* A, const T* div, int64_t i0, int64_t i1, int64_t k0,
                int64_t len, T* const* out) {
  typedef typename Vec<T>::type vec;
  constexpr int W = VB / int(sizeof(T));
  constexpr int NC = 2;                 // vectors of columns per register tile
  constexpr int MR = VB == 64 ? 8 : 4;  // output rows per register tile
  constexpr int CW = NC * W;            // columns per register tile
  const int64_t ntiles = (len + CW - 1) / CW;
  const int64_t full = len / CW;                            // tiles of CW columns
  const int64_t packed0 = m >= kMixPackMinRows ? 0 : full;  // first packed tile
  thread_local std::vector<T> pack_buf;
  const size_t need = static_cast<size_t>((ntiles - packed0) * m * CW);
  if (pack_buf.size() < need) pack_buf.resize(need);
  T* pb = pack_buf.data();
  for (int64_t t = packed0; t < ntiles; ++t) {
    const int64_t k = t * CW;
    const int valid = static_cast<int>(std::min<int64_t>(CW, len - k));
    T* panel = pb + (t - packed0) * m * CW;
    if (valid == CW) {
      for (int64_t j = 0; j < m; ++j) std::memcpy(panel + j * CW, xs[j] + k0 + k, sizeof(T) * CW);
    } else {
      for (int64_t j = 0; j < m; ++j) {
        std::memcpy(panel + j * CW, xs[j] + k0 + k, sizeof(T) * static_cast<size_t>(valid));
        for (int w = valid; w < CW; ++w) panel[j * CW + w] = T(0);
      }
    }
  }
  for (int64_t i = i0; i < i1; i += MR) {
    if ((i - i0) % 64 == 0) check_cancel();
    const int rows = static_cast<int>(std::min<int64_t>(MR, i1 - i));
    const T* a[MR];
    for (int r = 0; r < MR; ++r) a[r] = A + (i + std::min(r, rows - 1)) * m;
    for (int64_t t = 0; t < ntiles; ++t) {
      const int64_t k = t * CW;
      const int valid = static_cast<int>(std::min<int64_t>(CW, len - k));
      vec acc[MR][NC];
      for (int r = 0; r < MR; ++r)
        for (int u = 0; u < NC; ++u) acc[r][u] = vec{};
      // sum over j of the j-th row segment of the tile times the MR coefficients A[i + r][j]
      auto accumulate = [&](auto segment) {
        for (int64_t j = 0; j < m; ++j) {
          const T* xj = segment(j);
          vec x[NC];
          for (int u = 0; u < NC; ++u) std::memcpy(&x[u], xj + u * W, sizeof(vec));
          for (int r = 0; r < MR; ++r) {
            const vec c = a[r][j] - vec{};  // a broadcast (x - 0 is x: no add is emitted)
            for (int u = 0; u < NC; ++u) acc[r][u] += c * x[u];
          }
        }
      };
      if (t >= packed0) {
        const T* panel = pb + (t - packed0) * m * CW;
        accumulate([&](int64_t j) { return panel + j * CW; });
      } else {
        accumulate([&](int64_t j) { return xs[j] + k0 + k; });
      }
      for (int r = 0; r < rows; ++r) {
        alignas(64) T res[CW];
        std::memcpy(res, acc[r], sizeof(res));
        T* o = out[i + r] + k0 + k;
        const T d = div[i + r];
        for (int w = 0; w < valid; ++w) o[w] = res[w] / d;
      }
    }
  }
}

}  // namespace

void mix_rows(const float* const* xs, int64_t m, const float* A, const float* div, int64_t i0, int64_t i1,
              int64_t k0, int64_t len, float* const* out) {
  mix_kernel<float>(xs, m, A, div, i0, i1, k0, len, out);
}
void mix_rows(const double* const* xs, int64_t m, const double* A, const double* div, int64_t i0, int64_t i1,
              int64_t k0, int64_t len, double* const* out) {
  mix_kernel<double>(xs, m, A, div, i0, i1, k0, len, out);
}

bool sum_rows(const float* const* xs, const double* cs, int64_t m, int64_t k0, int64_t len, double* acc,
              float* out, double d) {
  if (cs == nullptr) return sum_rows_kernel<float, true>(xs, cs, m, k0, len, acc, out, d);
  return sum_rows_kernel<float, false>(xs, cs, m, k0, len, acc, out, d);
}
bool sum_rows(const double* const* xs, const double* cs, int64_t m, int64_t k0, int64_t len, double* acc,
              double* out, double d) {
  if (cs == nullptr) return sum_rows_kernel<double, true>(xs, cs, m, k0, len, acc, out, d);
  return sum_rows_kernel<double, false>(xs, cs, m, k0, len, acc, out, d);
}

void coordinate_block(const float* const* rows, int pe, const int* comp, int ncomp, CoordRule rule,
                      CoordCounts c, int64_t k0, int64_t k1, float* out, uint8_t* bad) {
  block_kernel<float>(rows, pe, comp, ncomp, rule, c, k0, k1, out, bad);
}
void coordinate_block(const double* const* rows, int pe, const int* comp, int ncomp, CoordRule rule,
                      CoordCounts c, int64_t k0, int64_t k1, double* out, uint8_t* bad) {
  block_kernel<double>(rows, pe, comp, ncomp, rule, c, k0, k1, out, bad);
}

}  // namespace FLAGCORE_SIMD_NS
}  // namespace flagcore
