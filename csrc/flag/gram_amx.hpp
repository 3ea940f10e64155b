// The float32 Gram on Intel AMX tiles (Sapphire Rapids and later): each float32 value is split
// into three bfloat16 parts, x = x0 + x1 + x2 exactly (8 significant bits each), and a product
// x * y is formed as the six bf16 products x0 y0 + (x0 y1 + x1 y0 + x0 y2 + x1 y1 + x2 y0), each
// exact in float32; the three dropped ones (x1 y2, x2 y1, x2 y2) add up to at most 2^-23 |x y|
// (|x1| <= 2^-8 |x|, |x2| <= 2^-16 |x|), the size of float32's own rounding of a product (up to
// 2^-24 |x y|). The tiles accumulate in float32 with round-to-nearest, over a slice of slice_cols
// (kGramAmxKCWide or kGramAmxKCNarrow) columns: the leading products x0 y0 in one accumulator (at
// most 256 roundings per slice, where the packed FMA kernel has 512), the five small ones in
// another (their roundings are 2^-8 smaller);
// the two are then added in float32 and the sum into the float64 result. bf16
// denormals count as zero on AMX, so products below ~2^-110 are lost: gram_cpu recomputes rows
// that small in float64 (refine_nonfinite_rows).
//
// gram_amx_rows (one work item of gram_cpu's AMX path)
//   rows  : p pointers, rows[i] -> the n contiguous float32 elements of worker i    // [P] -> [N]
//   t0,t1 : the item's tiles of 16 rows, rows [16 t0, min(p, 16 t1))
//   slice_cols : kGramAmxKCWide or kGramAmxKCNarrow (std::invalid_argument otherwise)
//   k0,k1 : the item's columns, cut into slices of slice_cols from k0
//   g     : p x p row-major float64, entry (i, j), i <= j, at g[i * p + j]. The item writes (=)
//           g[i * p + j] for its rows i and i <= j < p on its first slice and adds (+=) the later
//           slices in order (nothing when k0 == k1); inside its diagonal tiles it also writes
//           entries below the diagonal, which the caller overwrites when it mirrors. // [P, P]
// The operations on an entry do not depend on the item's tiles or on where the rows are in
// memory, so the result is the same whatever the thread count. Calls check_cancel() per slice.
#pragma once
#include <cstdint>
#include <string>

namespace flagcore {

// The slice widths (columns per float32 accumulation): gram_cpu takes the narrow one at large p,
// where a packed slice of all rows must stay in L2 next to the float64 result.
constexpr int64_t kGramAmxKCWide = 256;
constexpr int64_t kGramAmxKCNarrow = 128;
// bf16 elements of one packed tile of one slice of kc columns: per 32 columns the A and B tiles
// of 3 parts
constexpr int64_t gram_amx_tile_elems(int64_t kc) {
  return kc / 32 * 6 * 512;
}

// True when this build has the AMX kernel (FLAGCORE_HAVE_AMX: a compiler with -mamx-bf16) and
// the CPU has AMX-TILE, AMX-BF16 and AVX512-BF16 (cpuid only, no side effect).
bool gram_amx_cpu();
// gram_amx_cpu() and the OS lets this process use the tiles (Linux: the one-time arch_prctl
// request, made on the first call, succeeded). Cached; false on other builds.
bool gram_amx_supported();
// Whether the float32 Gram is to use the tiles (no OS request): gram_amx_cpu(), simd_level()
// avx512, and not switched off by set_gram_amx("off") or FLAGCORE_AMX=0|off. "auto" (the
// default) uses them in the range of p where they measured faster (gram_cpu.cpp), "on" for every
// p > 32 (tests, tuning).
bool gram_amx_wanted();
// gram_amx_wanted() and gram_amx_supported(): checked by each Gram that would use the tiles.
bool gram_amx_enabled();
bool gram_amx_forced_on();
// mode "auto", "on" (std::invalid_argument when unsupported) or "off".
void set_gram_amx(const std::string& mode);

namespace amx {
void gram_amx_rows(const float* const* rows, int64_t p, int64_t slice_cols, int64_t t0, int64_t t1,
                   int64_t k0, int64_t k1, double* g);

// The same work in two steps, for callers that pack a slice once and share it between row parts
// (gram_cpu at large p on many threads), over a buffer of gram_amx_tile_elems(slice_cols) bf16
// per tile of all the tiles:
//   gram_amx_pack  : tiles [u0, u1) of the slice [k, k + kc) into dst (their A tiles only when
//                    want_a: a tile needs them when it is among the multiplying rows)
//   gram_amx_slice : the slice's products for the rows of tiles [t0, t1) against the tiles from
//                    t0 on into g, in gram_amx_rows's layout: stored (=) when first, else added
void gram_amx_pack(const float* const* rows, int64_t p, int64_t slice_cols, int64_t k, int64_t kc, int64_t u0,
                   int64_t u1, bool want_a, uint16_t* dst);
void gram_amx_slice(const uint16_t* pk, int64_t slice_cols, int64_t kc, int64_t p, int64_t t0, int64_t t1,
                    double* g, bool first);
}  // namespace amx

}  // namespace flagcore
