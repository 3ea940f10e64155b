// One instruction-set variant of symv_rect (symv_kernel.hpp): included by the per-ISA kernel
// files with FLAGCORE_SIMD_NS and FLAGCORE_VEC_BYTES defined and compiled with that ISA's flags.
#include "common/symv_kernel.hpp"

namespace flagcore {
namespace FLAGCORE_SIMD_NS {
namespace {

constexpr int kSymvLanes = FLAGCORE_VEC_BYTES / 8;
typedef double symv_vec __attribute__((vector_size(FLAGCORE_VEC_BYTES), aligned(8)));  // unaligned access

inline double lanes_sum(symv_vec v) {
  double s = 0.0;
  for (int i = 0; i < kSymvLanes; ++i) s += v[i];
  return s;
}

// C columns at once (C = 8 with 32 vector registers, 4, or 1 for the last columns).
template <int C>
void symv_columns(int rows, const double* R, int lda, const double* xb, const double* xc, double* yc,
                  double* part, bool first) {
  symv_vec t[C], a[C];
  for (int c = 0; c < C; ++c) {
    t[c] = symv_vec{};
    a[c] = symv_vec{} + xc[c];
  }
  const double* col[C];
  for (int c = 0; c < C; ++c) col[c] = R + static_cast<long>(c) * lda;
  int r = 0;
  for (; r + kSymvLanes <= rows; r += kSymvLanes) {
    const symv_vec xv = *reinterpret_cast<const symv_vec*>(xb + r);
    symv_vec pv = first ? symv_vec{} : *reinterpret_cast<const symv_vec*>(part + r);
    for (int c = 0; c < C; ++c) {
      const symv_vec v = *reinterpret_cast<const symv_vec*>(col[c] + r);
      t[c] += v * xv;
      pv += v * a[c];
    }
    *reinterpret_cast<symv_vec*>(part + r) = pv;
  }
  double ts[C];
  for (int c = 0; c < C; ++c) ts[c] = lanes_sum(t[c]);
  for (; r < rows; ++r) {
    double pv = first ? 0.0 : part[r];
    for (int c = 0; c < C; ++c) {
      ts[c] += col[c][r] * xb[r];
      pv += col[c][r] * xc[c];
    }
    part[r] = pv;
  }
  for (int c = 0; c < C; ++c) yc[c] += ts[c];
}

}  // namespace

void symv_rect(int rows, int w, const double* R, int lda, const double* xb, const double* xc, double* yc,
               double* part) {
  int c = 0;
#if FLAGCORE_VEC_BYTES == 64  // 32 vector registers: 8 columns per pass over part
  for (; c + 8 <= w; c += 8)
    symv_columns<8>(rows, R + static_cast<long>(c) * lda, lda, xb, xc + c, yc + c, part, c == 0);
#endif
  for (; c + 4 <= w; c += 4)
    symv_columns<4>(rows, R + static_cast<long>(c) * lda, lda, xb, xc + c, yc + c, part, c == 0);
  for (; c < w; ++c)
    symv_columns<1>(rows, R + static_cast<long>(c) * lda, lda, xb, xc + c, yc + c, part, c == 0);
}

}  // namespace FLAGCORE_SIMD_NS
}  // namespace flagcore
