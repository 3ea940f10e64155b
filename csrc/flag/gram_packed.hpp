// The float32 Gram at large p on AVX-512: a packed outer-product micro-kernel (the GotoBLAS/BLIS
// structure, specialised to X X^T with row-major X).
//
// gram_packed_rows (one work item of gram_cpu's large-p path)
//   rows  : p pointers, rows[i] -> the n contiguous float32 elements of worker i    // [P] -> [N]
//   i0,i1 : the item's block of rows, i0 a multiple of kGramPackedMR, i0 < i1 <= p
//   k0,k1 : the item's columns
//   g     : p x p row-major float64, the Gram's entry (i, j), i <= j, at g[j * p + i] (the lower
//           triangle holds the upper one, transposed: a register tile's column is a contiguous
//           run there). The item writes (=) g[j * p + i] for i0 <= i < i1, i <= j < p: the sum
//           over k in [k0, k1) of rows[i][k] * rows[j][k] (nothing when k0 == k1); it may also
//           write the same sums to some entries g[j * p + i] with i0 <= j < i < i1 (inside its
//           diagonal tiles), which the caller overwrites when it mirrors the lower triangle.
//                                                                                     // [P, P]
// Columns go in slices of kGramPackedKC. Per slice, rows i0 .. p are packed into k-major strips of
// kGramPackedMR rows (a 16 x 16 register transpose; rows past p read as zeros), and a 32 x 8
// register tile of float32 accumulators multiplies two 16-lane vectors of the row strip by 8
// broadcast values of the column strip per step; tiles entirely below the diagonal are skipped and
// tiles whose lower half is below it run on the upper 16 rows only. Each slice's float32 tile
// (kGramPackedKC products per entry, summed in order) is added into g in float64, so the sum over
// a slice is the same sequence of operations whatever the thread count, the block or the
// position in memory of the data; slices are added in order. Calls check_cancel() once per slice.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>

namespace flagcore {

constexpr int64_t kGramPackedMR = 32;
constexpr int64_t kGramPackedKC = 512;
// The AVX2 kernel (gram_packed_avx2.cpp): the same contract with strips of 16 rows and 16 x 6
// register tiles.
constexpr int64_t kGramPackedAvx2MR = 16;
constexpr int64_t kGramPackedAvx2KC = 512;

// 64-byte aligned arrays (the kernel's aligned vector loads and stores go through them).
struct FreeDeleter {
  void operator()(void* ptr) const { std::free(ptr); }
};
template <typename T>
using AlignedArray = std::unique_ptr<T[], FreeDeleter>;
template <typename T>
AlignedArray<T> aligned_array(size_t count) {
  const size_t bytes = ((count > 0 ? count : 1) * sizeof(T) + 63) / 64 * 64;
  T* ptr = static_cast<T*>(std::aligned_alloc(64, bytes));
  if (ptr == nullptr) throw std::bad_alloc();
  return AlignedArray<T>(ptr);
}

// 64-byte aligned scratch that only grows (one per thread).
template <typename T>
struct Scratch {
  AlignedArray<T> data;
  size_t size = 0;
  T* get(size_t count) {
    if (count > size) {
      data = aligned_array<T>(count);
      size = count;
    }
    return data.get();
  }
};

// Per instruction set (simd_avx512: kGramPackedMR, kGramPackedKC; simd_avx2: kGramPackedAvx2MR,
// kGramPackedAvx2KC):
//   gram_packed_rows  : one work item, as above
// and the same work in two steps, for callers that pack a slice once and share it between row
// parts (gram_cpu at large p):
//   gram_packed_pack  : strips [s0, s1) of the slice [k0, k0 + kc) of all p rows into out
//                       (out[s * kc * MR + k * MR + r], rows past p zero)         // [S, KC, MR]
//   gram_packed_slice : the slice's products for rows [i0, i1) against rows [i0, p) into g, in
//                       gram_packed_rows's layout: stored (=) when first, added (+=) otherwise
#define FLAGCORE_GRAM_PACKED_DECL(NS)                                                                        \
  namespace NS {                                                                                             \
  void gram_packed_rows(const float* const* rows, int64_t p, int64_t i0, int64_t i1, int64_t k0, int64_t k1, \
                        double* g);                                                                          \
  void gram_packed_pack(const float* const* rows, int64_t p, int64_t k0, int64_t kc, int64_t s0, int64_t s1, \
                        float* out);                                                                         \
  void gram_packed_slice(const float* pk, int64_t kc, int64_t p, int64_t i0, int64_t i1, double* g,          \
                         bool first);                                                                        \
  }
FLAGCORE_GRAM_PACKED_DECL(simd_avx512)
FLAGCORE_GRAM_PACKED_DECL(simd_avx2)
#undef FLAGCORE_GRAM_PACKED_DECL

}  // namespace flagcore
