// The rectangle step of flagcore's blocked symmetric matrix-vector product (blas.cpp,
// symv_lower), one variant per instruction set, chosen by simd_level().
//
// symv_rect: for the rows x w block R (column-major, leading dimension lda) of the lower
// triangle below a diagonal block,
//   yc[c] += sum_r R[r, c] * xb[r]        (the transpose part, c < w)
//   part[r] = sum_c R[r, c] * xc[c]       (the part, written, r < rows)
// reading R once (8 or 4 columns per pass over the rows). The sums run in a fixed order that
// depends on rows and w only.
#pragma once

namespace flagcore {

#define FLAGCORE_SYMV_DECL(NS)                                                                              \
  namespace NS {                                                                                            \
  void symv_rect(int rows, int w, const double* R, int lda, const double* xb, const double* xc, double* yc, \
                 double* part);                                                                             \
  }
FLAGCORE_SYMV_DECL(simd_generic)
FLAGCORE_SYMV_DECL(simd_avx2)
FLAGCORE_SYMV_DECL(simd_avx512)
#undef FLAGCORE_SYMV_DECL

// The variant of the current simd_level().
void symv_rect(int rows, int w, const double* R, int lda, const double* xb, const double* xc, double* yc,
               double* part);

}  // namespace flagcore
