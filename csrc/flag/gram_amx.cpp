// The AMX float32 Gram kernel (contract in gram_amx.hpp). Compiled with AVX-512 (F, DQ, VL, BW,
// BF16) and AMX (TILE, BF16); called only when gram_amx_supported() (gram_cpu.cpp) says so.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "common/cancel.hpp"
#include "flag/gram_amx.hpp"
#include "flag/gram_packed.hpp"
#include "flag/transpose16_avx512.hpp"

namespace flagcore {
namespace amx {
namespace {

constexpr int64_t kBlock = 512;         // bf16 per tile (16 rows x 64 bytes)
constexpr int64_t kPerKB = 6 * kBlock;  // per k-block of a row tile: A0 B0 A1 B1 A2 B2
// bf16 per row tile and slice of KC columns (48 KiB for 256, 24 KiB for 128)
template <int64_t KC>
constexpr int64_t kPerTile = KC / 32 * kPerKB;
static_assert(kPerTile<kGramAmxKCWide> == gram_amx_tile_elems(kGramAmxKCWide), "gram_amx.hpp's tile size");
constexpr int64_t kChunkTiles = 32;  // column tiles per pass (their B parts: 768 KiB at KC = 256)
// ... except that up to this many tiles right of the item's first one (p <= 1024 for an item of
// all rows) they go in one pass (the packed slice, 24 KiB per tile at KC = 128, stays in L2).
// A/B (2 threads, best of 5, ms, passes of 32 vs one): p = 640 89.9-90.8 vs 82.6-83.7, 768
// 93.9-100.5 vs 86.3-88.7, 896 126.8-129.2 vs 116.8-119.5, 1024 132.0-141.9 vs 126.2-140.8 (a tie);
// one pass of 64 from p = 2048 on: slower (205.0-215.2 vs 232.5-248.6 ms at 2048).
constexpr int64_t kOneChunkMaxTiles = 64;
// The packing prefetches the rows of the tile this many tiles ahead (past the last tile: the
// first ones of the next slice) into L2. One thread, p = 1024, n = 5e4, A/B against the rows of
// the same tile half a slice ahead: 0 (that) 162.6 ms, 1 152.1, 2 146.7, 4 151.5 (2 threads, the
// per-item path, KC = 128); p = 64-256 unchanged (within 3 %).
constexpr int64_t kPrefetchTiles = 2;
// Up to this many tiles (p <= 128) an item packs the next slice while the tiles multiply the
// current one (PackAhead: one k-block of one tile at a time, spread evenly over the k-block
// iterations of the blocks), into a second buffer; the sums are the same. A/B (2 threads, best of
// 5, ms, alternating processes, set_gram_amx("on"), pack-ahead vs pack-then-multiply): p = 33
// 13.8-14.7 vs 15.4-15.5, 48 14.3-14.8 vs 17.9-18.3, 56 19.2-19.5 vs 23.5-25.5, 64 20.6-20.7 vs
// 26.1-27.7, 96 22.0-23.3 vs 26.6-27.8, 112 26.8-27.5 vs 29.0-30.0, 128 31.3-31.9 vs 34.7-35.0;
// 144 29.9-30.9 vs 30.9-32.0, 160 37.6-38.2 vs 37.2-39.0 (a tie), 192 37.8-39.5 vs 32.3-35.7,
// 224 44.9 vs 38.5-41.8, 512 85.5-86.6 vs 71.9-72.5 (slower: two packed slices and the float64
// result no longer fit in L2). Packing in smaller pieces (2, 4 or 8 rows, or the transposes
// apart; six calls per k-block iteration), faster (2x, 4x) at the start of the slice, or
// deferring each block's float64 update into the next block: slower (docs/scaling_history.md,
// "Ninth session").
constexpr int64_t kPackAheadMaxTiles = 8;

// The palette-1 configuration: tiles 0-7 of 16 rows x 64 bytes.
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
  TileConfig() {
    for (int t = 0; t < 8; ++t) {
      colsb[t] = 64;
      rows[t] = 16;
    }
  }
};

// Releases the tiles on every exit (check_cancel throws).
struct TileScope {
  TileScope() {
    static const TileConfig cfg;
    _tile_loadconfig(&cfg);
  }
  ~TileScope() { _tile_release(); }
  TileScope(const TileScope&) = delete;
  TileScope& operator=(const TileScope&) = delete;
};

// The 16 bf16 in one half of v, back in float32 (exact).
inline __m512 widen(__m256i half) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
}

// Splits 32 floats (lo: columns 0-15, hi: 16-31) into three bf16 vectors of 32, s[0] + s[1] + s[2]
// equal to the floats (RNE at each step; each residual is exact in float32).
inline void split3(__m512 lo, __m512 hi, __m512i s[3]) {
  for (int t = 0; t < 3; ++t) {
    const __m512i b = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
    s[t] = b;
    if (t < 2) {
      lo = _mm512_sub_ps(lo, widen(_mm512_castsi512_si256(b)));
      hi = _mm512_sub_ps(hi, widen(_mm512_extracti64x4_epi64(b, 1)));
    }
  }
}

// One unit of pack_tile: k-block kb (columns k + 32 kb ...) of tile t.
template <int64_t KC>
void pack_unit(const float* const* rows, int64_t p, int64_t t, int64_t k, int64_t kc, int64_t kb, bool want_a,
               uint16_t* dst) {
  const float* src[16];
  const float* ahead[16];  // the rows to prefetch (a prefetch past the data does not fault)
  const int64_t tiles = (p + 15) / 16;
  int64_t ta = t + kPrefetchTiles, ka = k;
  while (ta >= tiles) ta -= tiles, ka += KC;
  for (int r = 0; r < 16; ++r) {
    src[r] = 16 * t + r < p ? rows[16 * t + r] + k : nullptr;
    ahead[r] = rows[std::min(p - 1, 16 * ta + r)] + ka;
  }
  const int64_t c0 = kb * 32;
  const int64_t rest = std::min<int64_t>(32, kc - c0);
  const __mmask16 mlo = static_cast<__mmask16>(rest >= 16 ? 0xFFFFu : (1u << rest) - 1u);
  const __mmask16 mhi = static_cast<__mmask16>(rest >= 32   ? 0xFFFFu
                                               : rest <= 16 ? 0u
                                                            : (1u << (rest - 16)) - 1u);
  __m512 v[3][16];
  uint16_t* blk = dst + kb * kPerKB;
  for (int r = 0; r < 16; ++r) {
    __m512i s[3];
    // the same columns of the tile kPrefetchTiles ahead, into L2, so that the memory reads
    // overlap with the packing
    _mm_prefetch(reinterpret_cast<const char*>(ahead[r] + c0), _MM_HINT_T1);
    _mm_prefetch(reinterpret_cast<const char*>(ahead[r] + c0 + 16), _MM_HINT_T1);
    if (src[r] != nullptr) {
      const __m512 lo = _mm512_maskz_loadu_ps(mlo, src[r] + c0);
      const __m512 hi = _mm512_maskz_loadu_ps(mhi, src[r] + c0 + 16);
      split3(lo, hi, s);
    } else {
      s[0] = s[1] = s[2] = _mm512_setzero_si512();
    }
    for (int q = 0; q < 3; ++q) {
      v[q][r] = _mm512_castsi512_ps(s[q]);
      if (want_a) _mm512_store_si512(blk + (2 * q) * kBlock + r * 32, s[q]);
    }
  }
  for (int q = 0; q < 3; ++q) {
    transpose16(v[q]);
    for (int r = 0; r < 16; ++r) _mm512_store_ps(blk + (2 * q + 1) * kBlock + r * 32, v[q][r]);
  }
}

// Packs columns [k, k + kc) of rows 16 t .. 16 t + 15 (zeros past p and past kc) into dst: per
// k-block of 32 columns and split s, the A tile (row r: its 32 bf16) when want_a, and the B tile
// (VNNI: row kk holds, for each of the 16 rows, its bf16 pair at columns 2 kk, 2 kk + 1), which is
// the A tile's 16 x 16 transpose in 32-bit units.
template <int64_t KC>
void pack_tile(const float* const* rows, int64_t p, int64_t t, int64_t k, int64_t kc, bool want_a,
               uint16_t* dst) {
  const int64_t nkb = (kc + 31) / 32;
  for (int64_t kb = 0; kb < nkb; ++kb) pack_unit<KC>(rows, p, t, k, kc, kb, want_a, dst);
}

// The packing of the next slice, done a unit (one k-block of one tile) at a time between the tile
// instructions of the current one, so that the vector units pack while the tiles multiply.
template <int64_t KC>
struct PackAhead {
  const float* const* rows = nullptr;
  int64_t p = 0, k = 0, kc = 0, t1 = 0, tiles = 0, nkb = 0;
  uint16_t* dst = nullptr;
  int64_t t = 0, kb = 0;                  // the next unit
  int64_t units = 0, iters = 1, acc = 0;  // units spread evenly over iters calls of step()
  void unit() {
    if (t >= tiles) return;
    pack_unit<KC>(rows, p, t, k, kc, kb, t < t1, dst + t * kPerTile<KC>);
    if (++kb == nkb) kb = 0, ++t;
  }
  void step() {
    acc += units;
    while (acc >= iters) unit(), acc -= iters;
  }
  void finish() {
    while (t < tiles) unit();
  }
};

struct NoPack {
  void step() {}
};

// The slice's products of row tile a against column tiles b0 (and b1 when Two), nkb k-blocks:
// tiles 0/1 accumulate x0 y0 for b0/b1, tiles 2/3 the five small products; stored to hi and lo
// (16 x 32 floats, columns 0-15 for b0, 16-31 for b1).
template <bool Two, typename Step>
inline void block(const uint16_t* a, const uint16_t* b0, const uint16_t* b1, int64_t nkb, float* hi,
                  float* lo, Step& step) {
  _tile_zero(0);
  _tile_zero(2);
  if (Two) {
    _tile_zero(1);
    _tile_zero(3);
  }
  for (int64_t kb = 0; kb < nkb; ++kb) {
    const uint16_t* A = a + kb * kPerKB;
    const uint16_t* B = b0 + kb * kPerKB + kBlock;
    const uint16_t* C = Two ? b1 + kb * kPerKB + kBlock : B;
    _tile_loadd(4, A, 64);  // x0
    _tile_loadd(5, B, 64);  // y0
    if (Two) _tile_loadd(6, C, 64);
    _tile_dpbf16ps(0, 4, 5);
    if (Two) _tile_dpbf16ps(1, 4, 6);
    _tile_loadd(7, A + 2 * kBlock, 64);  // x1
    _tile_dpbf16ps(2, 7, 5);
    if (Two) _tile_dpbf16ps(3, 7, 6);
    _tile_loadd(5, B + 2 * kBlock, 64);  // y1
    if (Two) _tile_loadd(6, C + 2 * kBlock, 64);
    _tile_dpbf16ps(2, 4, 5);
    if (Two) _tile_dpbf16ps(3, 4, 6);
    _tile_dpbf16ps(2, 7, 5);
    if (Two) _tile_dpbf16ps(3, 7, 6);
    _tile_loadd(7, A + 4 * kBlock, 64);  // x2
    _tile_loadd(5, B, 64);               // y0
    if (Two) _tile_loadd(6, C, 64);
    _tile_dpbf16ps(2, 7, 5);
    if (Two) _tile_dpbf16ps(3, 7, 6);
    _tile_loadd(5, B + 4 * kBlock, 64);  // y2
    if (Two) _tile_loadd(6, C + 4 * kBlock, 64);
    _tile_dpbf16ps(2, 4, 5);
    if (Two) _tile_dpbf16ps(3, 4, 6);
    step.step();
  }
  _tile_stored(0, hi, 128);
  _tile_stored(2, lo, 128);
  if (Two) {
    _tile_stored(1, hi + 16, 128);
    _tile_stored(3, lo + 16, 128);
  }
}

// g[i * p + j] (=) or (+=) hi + lo (one more float32 rounding) for the block's rows i < p and
// ncols columns.
inline void flush(const float* hi, const float* lo, double* g, int64_t p, int64_t i0, int64_t j0,
                  int64_t ncols, bool first) {
  const int64_t nrows = std::min<int64_t>(16, p - i0);
  for (int64_t r = 0; r < nrows; ++r) {
    double* dst = g + (i0 + r) * p + j0;
    for (int64_t c = 0; c < ncols; c += 8) {
      const int rest = static_cast<int>(std::min<int64_t>(8, ncols - c));
      const __mmask8 m = static_cast<__mmask8>(rest == 8 ? 0xFFu : (1u << rest) - 1u);
      const __m512d v =
          _mm512_cvtps_pd(_mm256_add_ps(_mm256_load_ps(hi + r * 32 + c), _mm256_load_ps(lo + r * 32 + c)));
      if (first)
        _mm512_mask_storeu_pd(dst + c, m, v);
      else
        _mm512_mask_storeu_pd(dst + c, m, _mm512_add_pd(_mm512_maskz_loadu_pd(m, dst + c), v));
    }
  }
}

template <int64_t KC>
void pack_tiles(const float* const* rows, int64_t p, int64_t k, int64_t kc, int64_t u0, int64_t u1,
                bool want_a, uint16_t* dst) {
  for (int64_t t = u0; t < u1; ++t) pack_tile<KC>(rows, p, t, k, kc, want_a, dst + t * kPerTile<KC>);
}

// Calls f(I, J, two) for the blocks of a slice's products, in order: row tile I in [t0, t1)
// against column tiles J (and J + 1 when two) from I on, the column tiles in passes of
// kChunkTiles (one pass when at most kOneChunkMaxTiles lie right of t0).
template <typename F>
inline void for_each_block(int64_t tiles, int64_t t0, int64_t t1, F&& f) {
  const int64_t width = tiles - t0 <= kOneChunkMaxTiles ? tiles - t0 : kChunkTiles;
  for (int64_t jc = t0; jc < tiles; jc += width) {
    const int64_t jend = std::min(tiles, jc + width);
    for (int64_t I = t0; I < std::min(t1, jend); ++I)
      for (int64_t J = std::max(I, jc); J < jend; J += 2) f(I, J, J + 1 < jend);
  }
}

template <int64_t KC, typename Step>
void slice_products(const uint16_t* pk, int64_t kc, int64_t p, int64_t t0, int64_t t1, double* g, bool first,
                    Step& step) {
  const int64_t nkb = (kc + 31) / 32;
  alignas(64) float hi[16 * 32];
  alignas(64) float lo[16 * 32];
  const TileScope scope;
  for_each_block((p + 15) / 16, t0, t1, [&](int64_t I, int64_t J, bool two) {
    const uint16_t* a = pk + I * kPerTile<KC>;
    const uint16_t* b0 = pk + J * kPerTile<KC>;
    if (two)
      block<true>(a, b0, b0 + kPerTile<KC>, nkb, hi, lo, step);
    else
      block<false>(a, b0, b0, nkb, hi, lo, step);
    flush(hi, lo, g, p, 16 * I, 16 * J, std::min<int64_t>(two ? 32 : 16, p - 16 * J), first);
  });
}

// Packs the slice [k, k + kc) of the tiles an item needs into dst: A and B tiles of its rows
// [t0, t1), B tiles only of the tiles right of them.
template <int64_t KC>
void pack_slice(const float* const* rows, int64_t p, int64_t k, int64_t kc, int64_t t0, int64_t t1,
                uint16_t* dst) {
  pack_tiles<KC>(rows, p, k, kc, t0, t1, true, dst);
  pack_tiles<KC>(rows, p, k, kc, t1, (p + 15) / 16, false, dst);
}

template <int64_t KC>
void rows_products(const float* const* rows, int64_t p, int64_t t0, int64_t t1, int64_t k0, int64_t k1,
                   double* g) {
  if (k0 >= k1 || t0 >= t1) return;
  const int64_t tiles = (p + 15) / 16;
  const size_t per_slice = static_cast<size_t>(tiles * kPerTile<KC>);
  thread_local Scratch<uint16_t> scratch;
  NoPack none;
  if (tiles > kPackAheadMaxTiles) {
    // a buffer of all tiles (the item fills those from t0 on)
    uint16_t* pk = scratch.get(per_slice);
    for (int64_t k = k0; k < k1; k += KC) {
      check_cancel();
      const int64_t kc = std::min(KC, k1 - k);
      pack_slice<KC>(rows, p, k, kc, t0, t1, pk);
      slice_products<KC>(pk, kc, p, t0, t1, g, k == k0, none);
    }
    return;
  }
  // two buffers: the slice being multiplied and the next one, packed meanwhile
  uint16_t* buf[2] = {scratch.get(2 * per_slice), nullptr};
  buf[1] = buf[0] + per_slice;
  pack_slice<KC>(rows, p, k0, std::min(KC, k1 - k0), t0, t1, buf[0]);
  int cur = 0;
  for (int64_t k = k0; k < k1; k += KC, cur ^= 1) {
    check_cancel();
    const int64_t kc = std::min(KC, k1 - k);
    const int64_t next = k + KC;
    if (next >= k1) {
      slice_products<KC>(buf[cur], kc, p, t0, t1, g, k == k0, none);
      break;
    }
    PackAhead<KC> ahead;
    ahead.rows = rows, ahead.p = p, ahead.k = next, ahead.kc = std::min(KC, k1 - next), ahead.t1 = t1;
    ahead.tiles = tiles, ahead.nkb = (ahead.kc + 31) / 32, ahead.dst = buf[cur ^ 1], ahead.t = t0;
    ahead.units = (tiles - t0) * ahead.nkb;
    int64_t blocks = 0;  // slice_products's blocks, each nkb k-block iterations (calls of step())
    for_each_block(tiles, t0, t1, [&](int64_t, int64_t, bool) { ++blocks; });
    ahead.iters = std::max<int64_t>(1, blocks * ((kc + 31) / 32));
    slice_products<KC>(buf[cur], kc, p, t0, t1, g, k == k0, ahead);
    ahead.finish();
  }
}

// Calls f(std::integral_constant<int64_t, KC>) for KC = slice_cols, one of the two widths the
// kernel is built for; std::invalid_argument naming fn otherwise.
template <typename F>
void with_slice_cols(const char* fn, int64_t slice_cols, F&& f) {
  if (slice_cols == kGramAmxKCNarrow) return f(std::integral_constant<int64_t, kGramAmxKCNarrow>{});
  if (slice_cols == kGramAmxKCWide) return f(std::integral_constant<int64_t, kGramAmxKCWide>{});
  throw std::invalid_argument(std::string(fn) + ": slice_cols must be " + std::to_string(kGramAmxKCNarrow) +
                              " or " + std::to_string(kGramAmxKCWide) + ", got " +
                              std::to_string(slice_cols));
}

}  // namespace

void gram_amx_pack(const float* const* rows, int64_t p, int64_t slice_cols, int64_t k, int64_t kc, int64_t u0,
                   int64_t u1, bool want_a, uint16_t* dst) {
  with_slice_cols("gram_amx_pack", slice_cols,
                  [&](auto KC) { pack_tiles<KC()>(rows, p, k, kc, u0, u1, want_a, dst); });
}

void gram_amx_slice(const uint16_t* pk, int64_t slice_cols, int64_t kc, int64_t p, int64_t t0, int64_t t1,
                    double* g, bool first) {
  with_slice_cols("gram_amx_slice", slice_cols, [&](auto KC) {
    NoPack none;
    slice_products<KC()>(pk, kc, p, t0, t1, g, first, none);
  });
}

void gram_amx_rows(const float* const* rows, int64_t p, int64_t slice_cols, int64_t t0, int64_t t1,
                   int64_t k0, int64_t k1, double* g) {
  with_slice_cols("gram_amx_rows", slice_cols,
                  [&](auto KC) { rows_products<KC()>(rows, p, t0, t1, k0, k1, g); });
}

}  // namespace amx
}  // namespace flagcore
