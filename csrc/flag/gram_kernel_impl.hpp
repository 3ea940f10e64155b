// Body of the Gram micro-kernel, compiled once per instruction set. The including file defines
//   FLAGCORE_SIMD_NS  namespace of this variant (simd_generic, simd_avx2, simd_avx512)
//   FLAGCORE_VLEN     float64 lanes per vector register (2, 4, 8)
//   FLAGCORE_TILE     rows per register tile (the tile is TILE x TILE pairs of rows)
// GCC/Clang vector extensions keep the code portable while pinning the vectorisation: each
// tile keeps TILE*TILE vector accumulators in registers and loads 2*TILE vectors per step.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "flag/gram.hpp"

namespace flagcore {
namespace FLAGCORE_SIMD_NS {
namespace {

constexpr int V = FLAGCORE_VLEN;
constexpr int TL = FLAGCORE_TILE;
typedef double vd __attribute__((vector_size(V * 8)));
typedef float vf __attribute__((vector_size(V * 4)));

inline vd load(const double* p) {
  vd v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline vd load(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return __builtin_convertvector(v, vd);
}

template <int MR, int NR, typename T>
inline void tile(const T* const* ri, const T* const* rj, int64_t k0, int64_t k1, double* acc, int64_t ld) {
  vd s[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) s[i][j] = vd{0};
  int64_t k = k0;
  for (; k + V <= k1; k += V) {
    vd a[MR], b[NR];
    for (int i = 0; i < MR; ++i) a[i] = load(ri[i] + k);
    for (int j = 0; j < NR; ++j) b[j] = load(rj[j] + k);
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) s[i][j] += a[i] * b[j];
  }
  double t[MR][NR] = {};
  for (; k < k1; ++k)
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) t[i][j] += double(ri[i][k]) * double(rj[j][k]);
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) {
      double sum = t[i][j];
      for (int l = 0; l < V; ++l) sum += s[i][j][l];
      acc[i * ld + j] += sum;
    }
}

// float32 inputs: products and short partial sums in float32 (twice the lanes of float64),
// flushed into float64 accumulators every kFlushSteps vector steps, so each float32 partial sum
// holds at most kFlushSteps products (relative error ~ kFlushSteps * 2^-24 in the worst case).
// A product that overflows float32 (|x| > ~1e19) shows up as a non-finite diagonal, and
// gram_cpu recomputes such rows in float64.
constexpr int VF = 2 * V;
constexpr int kFlushSteps = 32;
typedef float vf2 __attribute__((vector_size(VF * 4)));

inline vf2 loadf(const float* p) {
  vf2 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline vd widen_sum(const vf2& s) {
  float tmp[VF];
  std::memcpy(tmp, &s, sizeof tmp);
  vf lo, hi;
  std::memcpy(&lo, tmp, sizeof lo);
  std::memcpy(&hi, tmp + V, sizeof hi);
  return __builtin_convertvector(lo, vd) + __builtin_convertvector(hi, vd);
}

template <int MR, int NR>
inline void tile_f32(const float* const* ri, const float* const* rj, int64_t k0, int64_t k1, double* acc,
                     int64_t ld) {
  vd d[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) d[i][j] = vd{0};
  int64_t k = k0;
  while (k + VF <= k1) {
    const int64_t steps = std::min<int64_t>(kFlushSteps, (k1 - k) / VF);
    vf2 s[MR][NR];
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) s[i][j] = vf2{0};
    for (int64_t st = 0; st < steps; ++st, k += VF) {
      vf2 a[MR], b[NR];
      for (int i = 0; i < MR; ++i) a[i] = loadf(ri[i] + k);
      for (int j = 0; j < NR; ++j) b[j] = loadf(rj[j] + k);
      for (int i = 0; i < MR; ++i)
        for (int j = 0; j < NR; ++j) s[i][j] += a[i] * b[j];
    }
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) d[i][j] += widen_sum(s[i][j]);
  }
  double t[MR][NR] = {};
  for (; k < k1; ++k)
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) t[i][j] += double(ri[i][k]) * double(rj[j][k]);
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) {
      double sum = t[i][j];
      for (int l = 0; l < V; ++l) sum += d[i][j][l];
      acc[i * ld + j] += sum;
    }
}

template <int MR, int NR, typename T>
inline void tile_dispatch(const T* const* ri, const T* const* rj, int64_t k0, int64_t k1, double* acc,
                          int64_t ld) {
  if constexpr (sizeof(T) == 4)
    tile_f32<MR, NR>(ri, rj, k0, k1, acc, ld);
  else
    tile<MR, NR, T>(ri, rj, k0, k1, acc, ld);
}

template <typename T>
inline void tile_any(int mi, int nj, const T* const* ri, const T* const* rj, int64_t k0, int64_t k1,
                     double* acc, int64_t ld) {
  // clang-format off: one row of the 4 x 4 tile table per line
#define FLAGCORE_TILE_CASE(M, N) \
  case M * 8 + N:                \
    if constexpr (M <= TL && N <= TL) tile_dispatch<M, N, T>(ri, rj, k0, k1, acc, ld); \
    return;
  switch (mi * 8 + nj) {
    FLAGCORE_TILE_CASE(1, 1) FLAGCORE_TILE_CASE(1, 2) FLAGCORE_TILE_CASE(1, 3) FLAGCORE_TILE_CASE(1, 4)
    FLAGCORE_TILE_CASE(2, 1) FLAGCORE_TILE_CASE(2, 2) FLAGCORE_TILE_CASE(2, 3) FLAGCORE_TILE_CASE(2, 4)
    FLAGCORE_TILE_CASE(3, 1) FLAGCORE_TILE_CASE(3, 2) FLAGCORE_TILE_CASE(3, 3) FLAGCORE_TILE_CASE(3, 4)
    FLAGCORE_TILE_CASE(4, 1) FLAGCORE_TILE_CASE(4, 2) FLAGCORE_TILE_CASE(4, 3) FLAGCORE_TILE_CASE(4, 4)
    default: break;
  }
#undef FLAGCORE_TILE_CASE
  // clang-format on
}

// Columns per chunk: the chunk of all p rows should stay in L2 (~256 KiB) while every tile
// passes over it.
inline int64_t chunk_columns(int64_t p, int64_t elem_size) {
  int64_t c = (256 * 1024) / std::max<int64_t>(1, p * elem_size);
  c = std::max<int64_t>(64, std::min<int64_t>(8192, c));
  return c - c % 16;
}

template <typename T>
void accumulate(const T* const* rows, int64_t p, int64_t k0, int64_t k1, double* acc) {
  const int64_t ch = chunk_columns(p, static_cast<int64_t>(sizeof(T)));
  for (int64_t c0 = k0; c0 < k1; c0 += ch) {
    const int64_t c1 = std::min(c0 + ch, k1);
    for (int64_t I = 0; I < p; I += TL) {
      const int mi = static_cast<int>(std::min<int64_t>(TL, p - I));
      for (int64_t J = I; J < p; J += TL) {
        const int nj = static_cast<int>(std::min<int64_t>(TL, p - J));
        tile_any<T>(mi, nj, rows + I, rows + J, c0, c1, acc + I * p + J, p);
      }
    }
  }
}

// Column-vector outer loop, rows inner: each group of U vectors of columns is accumulated in
// registers over all contributing rows (U independent FMA chains), so the float64
// accumulators never travel to memory until they are final.
template <typename T>
void wsum(const T* const* rows, const double* coef, int64_t p, int64_t k0, int64_t len, double* acc) {
  constexpr int U = 4;
  const T* xs[256];
  double cs[256];
  for (int64_t base = 0; base < p; base += 256) {
    int m = 0;
    for (int64_t i = base; i < std::min<int64_t>(p, base + 256); ++i)
      if (coef[i] != 0.0) {
        xs[m] = rows[i] + k0;
        cs[m] = coef[i];
        ++m;
      }
    if (m == 0) continue;
    int64_t k = 0;
    for (; k + U * V <= len; k += U * V) {
      vd a[U];
      for (int u = 0; u < U; ++u) a[u] = load(acc + k + u * V);
      for (int r = 0; r < m; ++r) {
        const vd c = vd{0} + cs[r];
        for (int u = 0; u < U; ++u) a[u] += c * load(xs[r] + k + u * V);
      }
      for (int u = 0; u < U; ++u) std::memcpy(acc + k + u * V, &a[u], sizeof(vd));
    }
    for (; k < len; ++k) {
      double a = acc[k];
      for (int r = 0; r < m; ++r) a += cs[r] * double(xs[r][k]);
      acc[k] = a;
    }
  }
}

}  // namespace

void weighted_sum_accumulate(const float* const* rows, const double* coef, int64_t p, int64_t k0, int64_t len,
                             double* acc) {
  wsum<float>(rows, coef, p, k0, len, acc);
}
void weighted_sum_accumulate(const double* const* rows, const double* coef, int64_t p, int64_t k0,
                             int64_t len, double* acc) {
  wsum<double>(rows, coef, p, k0, len, acc);
}

void gram_accumulate(const float* const* rows, int64_t p, int64_t k0, int64_t k1, double* acc) {
  accumulate<float>(rows, p, k0, k1, acc);
}
void gram_accumulate(const double* const* rows, int64_t p, int64_t k0, int64_t k1, double* acc) {
  accumulate<double>(rows, p, k0, k1, acc);
}

}  // namespace FLAGCORE_SIMD_NS
}  // namespace flagcore
