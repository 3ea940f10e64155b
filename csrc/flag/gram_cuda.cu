// Batched Gram matrices on the GPU (see flag_cuda.hpp for the contract).
//
// Pass 1 (one block per (part, tile pair)): float32 products, summed in float32 over at most 32
// columns per thread, then a warp reduce-scatter (each lane ends up owning a few entries) adds
// them into float64 registers; at the end of the part the 8 warps are added in order and the
// block writes one float64 partial per upper-triangle entry. Pass 2 adds the parts of each
// problem in a fixed order and writes both triangles. Pass 3 recomputes in float64 the rows
// whose float32 diagonal overflowed (or holds NaN/Inf): a no-op launch on ordinary data.
#include <cuda_pipeline.h>

#include "flag/flag_cuda_common.cuh"

namespace flagcore {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kProductsPerFlush = 32;
constexpr unsigned kFull = 0xffffffffu;

// acc[0:E32] summed over the warp; afterwards lane l owns entries l * (E32 / 32) + [0, E32 / 32)
// in acc[0:E32/32]. E32 is a multiple of 32. One template instance per level, so every index
// is a compile-time constant and acc stays in registers.
template <int E32, int LVL>
__device__ __forceinline__ void reduce_scatter_level(float (&acc)[E32], int lane) {
  if constexpr (LVL < 5) {
    constexpr int H = E32 >> (LVL + 1);
    constexpr int o = 16 >> LVL;
    const bool upper = (lane & o) != 0;
#pragma unroll
    for (int i = 0; i < H; ++i) {
      const float send = upper ? acc[i] : acc[i + H];
      const float keep = upper ? acc[i + H] : acc[i];
      acc[i] = keep + __shfl_xor_sync(kFull, send, o);
    }
    reduce_scatter_level<E32, LVL + 1>(acc, lane);
  }
}

template <int E32>
__device__ __forceinline__ void warp_reduce_scatter(float (&acc)[E32], int lane) {
  reduce_scatter_level<E32, 0>(acc, lane);
}

template <int E32>
__device__ __forceinline__ void flush(float (&acc)[E32], double (&dacc)[E32 / 32], int lane) {
  warp_reduce_scatter<E32>(acc, lane);
#pragma unroll
  for (int i = 0; i < E32 / 32; ++i) dacc[i] += static_cast<double>(acc[i]);
#pragma unroll
  for (int i = 0; i < E32; ++i) acc[i] = 0.0f;
}

// Rows [RI, RI + MI) x [RJ, RJ + MJ) of one part: the "tile" of entries this block owns.
//   REGS (p <= 8): MI = MJ = P, all upper-triangle pairs of one P x P tile, E = P (P + 1) / 2.
//   TILE (p > 8):   MI = MJ = 8, all 64 pairs of rows I*8.. x J*8.. (I <= J).
// The accumulation is the same: per column, x_i * x_j for each owned pair.
template <int MI, bool SYM>
struct TileShape {
  static constexpr int E = SYM ? MI * (MI + 1) / 2 : MI * MI;
  static constexpr int E32 = (E + 31) / 32 * 32;
  static constexpr int NR = SYM ? MI : 2 * MI;  // rows loaded per column
};

template <int MI, bool SYM>
__device__ __forceinline__ void accumulate(const float (&x)[TileShape<MI, SYM>::NR],
                                           float (&acc)[TileShape<MI, SYM>::E32]) {
  if constexpr (SYM) {
    int e = 0;
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
      for (int j = i; j < MI; ++j) acc[e++] += x[i] * x[j];
  } else {
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
      for (int j = 0; j < MI; ++j) acc[i * MI + j] += x[i] * x[MI + j];
  }
}

// Entry e of the tile -> (row, column) offsets inside it.
template <int MI, bool SYM>
__device__ __forceinline__ void tile_entry(int e, int& i, int& j) {
  if constexpr (SYM) {
    i = 0;
    int rowlen = MI;
    while (e >= rowlen) {
      e -= rowlen;
      --rowlen;
      ++i;
    }
    j = i + e;
  } else {
    i = e / MI;
    j = e % MI;
  }
}

__device__ __forceinline__ int64_t tri_index(int64_t p, int64_t i, int64_t j) {  // i <= j
  return i * p - i * (i - 1) / 2 + (j - i);
}

// SYM: one P x P tile covers the whole problem (p <= P). !SYM: one 8 x 8 tile pair (I, J).
template <typename T, int MI, bool SYM>
__global__ void __launch_bounds__(kThreads, 1)
    gram_partial_kernel(DeviceProblems d, int npairs,
                        double* __restrict__ partials /* [parts, tri(p)] per problem */) {
  using S = TileShape<MI, SYM>;
  constexpr int E32 = S::E32;
  constexpr int NR = S::NR;
  // Bytes per row per load: 16, or 8 for a tile of more than 64 accumulators (none is
  // instantiated now: an all-pairs P = 16 tile spilled even with 8-byte loads).
  constexpr int LB = S::E > 64 ? 8 : 16;
  constexpr int VEC = LB / sizeof(T);
  constexpr int FLUSH_IT = kProductsPerFlush / VEC;  // vector iterations per flush
  __shared__ const T* s_rows[NR];
  __shared__ double s_red[kWarps][E32];

  // SYM: one block per part. Otherwise npairs consecutive blocks per part (its tile pairs run
  // side by side, so the part's rows come from DRAM once and from L2 after).
  const int64_t part = SYM ? int64_t(blockIdx.x) : int64_t(blockIdx.x) / npairs;
  const int64_t q = problem_of_part(d, part);
  const Problem pr = problem_at(d, q);
  const int64_t p = pr.p;
  int RI = 0, RJ = 0;
  if constexpr (!SYM) {
    // tile pair index -> (I, J), I <= J, row-major over the upper triangle of tiles
    const int64_t tiles = (p + MI - 1) / MI;
    int64_t t = int64_t(blockIdx.x) % npairs;
    if (t >= tiles * (tiles + 1) / 2) return;  // uniform for the block
    int I = 0;
    while (t >= tiles - I) {
      t -= tiles - I;
      ++I;
    }
    RI = I * MI;
    RJ = (I + static_cast<int>(t)) * MI;
  }
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  if (tid < NR) {
    const int64_t row = (SYM || tid < MI) ? RI + tid : RJ + (tid - MI);
    s_rows[tid] = row < p ? row_ptr<T>(d, pr, row) : nullptr;
  }
  __syncthreads();
  // Read the row addresses from shared memory at each use (volatile): kept in registers they
  // would take 2 * NR of them and push the accumulators into local memory.
  const T* const volatile* rows_v = s_rows;
  const int64_t local = part - pr.part_off;
  const int64_t k0 = local * kGramPartColumns;
  const int64_t k1 = min(pr.n, k0 + kGramPartColumns);

  float acc[E32];
#pragma unroll
  for (int i = 0; i < E32; ++i) acc[i] = 0.0f;
  double dacc[E32 / 32];
#pragma unroll
  for (int i = 0; i < E32 / 32; ++i) dacc[i] = 0.0;

  int64_t ks = k0;  // start of the scalar remainder
  if (d.aligned16) {
    const int64_t kv1 = k0 + (k1 - k0) / VEC * VEC;
    constexpr int64_t step = int64_t(kThreads) * VEC;
    for (int64_t base = k0; base < kv1; base += step * FLUSH_IT) {
#pragma unroll 1
      for (int f = 0; f < FLUSH_IT; ++f) {
        const int64_t k = base + f * step + int64_t(tid) * VEC;
        if (k < kv1) {
          uint4 v[NR];
#pragma unroll
          for (int i = 0; i < NR; ++i) {
            const T* r = rows_v[i];
            if constexpr (LB == 16) {
              v[i] = r ? load16(r + k) : make_uint4(0u, 0u, 0u, 0u);
            } else {
              const uint2 h = r ? __ldg(reinterpret_cast<const uint2*>(r + k)) : make_uint2(0u, 0u);
              v[i] = make_uint4(h.x, h.y, 0u, 0u);
            }
          }
#pragma unroll
          for (int c = 0; c < VEC; ++c) {
            float x[NR];
#pragma unroll
            for (int i = 0; i < NR; ++i) x[i] = vec_elem<T>(v[i], c);
            accumulate<MI, SYM>(x, acc);
          }
        }
      }
      flush<E32>(acc, dacc, lane);
    }
    ks = kv1;
  }
  for (int64_t base = ks; base < k1; base += int64_t(kThreads) * kProductsPerFlush) {
#pragma unroll 1
    for (int f = 0; f < kProductsPerFlush; ++f) {
      const int64_t k = base + int64_t(f) * kThreads + tid;
      if (k < k1) {
        float x[NR];
#pragma unroll
        for (int i = 0; i < NR; ++i) {
          const T* r = rows_v[i];
          x[i] = r ? to_float<T>(r[k]) : 0.0f;
        }
        accumulate<MI, SYM>(x, acc);
      }
    }
    flush<E32>(acc, dacc, lane);
  }

#pragma unroll
  for (int i = 0; i < E32 / 32; ++i) s_red[warp][lane * (E32 / 32) + i] = dacc[i];
  __syncthreads();
  const int64_t tp = tri(p);
  for (int e = tid; e < S::E; e += kThreads) {
    int ti, tj;
    tile_entry<MI, SYM>(e, ti, tj);
    const int64_t i = RI + ti, j = (SYM ? RI : RJ) + tj;
    if (i > j || j >= p) continue;  // lower half of a diagonal tile pair, or padding
    double s = 0.0;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) s += s_red[w][e];
    partials[pr.partial_off + local * tp + tri_index(p, i, j)] = s;
  }
}

// ---------------------------------------------------------------- staged kernel (8 < p <= 16)
// One block per part: 3 groups of 4 warps, one per tile pair (0, 0), (0, 1), (1, 1) of the
// 16 x 16 problem. The part's rows stream through shared memory in stages of one 16-byte vector
// per group thread and row (cp.async, kStages deep, no registers held by loads in flight), so each
// element comes from DRAM once and the three tile pairs read it from shared memory. The
// tile-pair kernel ran one block per tile pair: each read its 16 rows from L2 (48 row reads per
// column for 15 distinct rows) with one 8-warp block per SM (168 registers), 2.62 ms for the
// Gram of p = 15, n = 1e8 float32 on an H200 (2.3 TB/s; torch.mean of the same tensor 2.13 ms).
// Sums: as the tile-pair kernel (float32 over at most kProductsPerFlush products, then float64
// in a fixed order), so deterministic, in another (fixed) order.
constexpr int kStagedGroupThreads = 128;
constexpr int kStagedGroups = 3;
constexpr int kStagedThreads = kStagedGroupThreads * kStagedGroups;
constexpr int kStagedWarps = kStagedThreads / 32;
constexpr int kStagedRows = 16;
constexpr int kStages = 4;
constexpr int kStageRowBytes = kStagedGroupThreads * 16;
constexpr int kStageBytes = kStagedRows * kStageRowBytes;  // 32 KiB
constexpr size_t kStagedSmem = size_t(kStages) * kStageBytes;

template <typename T>
__global__ void __launch_bounds__(kStagedThreads, 1)
    gram_staged_kernel(DeviceProblems d, double* __restrict__ partials /* [parts, tri(p)] per problem */) {
  using S = TileShape<8, false>;
  constexpr int E32 = S::E32;
  constexpr int VEC = 16 / sizeof(T);
  constexpr int64_t W = int64_t(kStagedGroupThreads) * VEC;   // columns per stage
  constexpr int FLUSH = kProductsPerFlush / VEC;              // stages per flush
  extern __shared__ __align__(16) unsigned char stage_mem[];  // [kStages][kStagedRows][kStageRowBytes]
  __shared__ double s_red[kStagedWarps][E32];
  __shared__ const T* s_rows[kStagedRows];

  const int64_t part = blockIdx.x;
  const Problem pr = problem_at(d, problem_of_part(d, part));
  const int64_t p = pr.p;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = tid / kStagedGroupThreads, gt = tid % kStagedGroupThreads;
  const int RI = g == 2 ? 8 : 0, RJ = g == 0 ? 0 : 8;  // group g -> tile pair (RI / 8, RJ / 8)
  if (tid < kStagedRows) s_rows[tid] = tid < p ? row_ptr<T>(d, pr, tid) : nullptr;
  // rows past p read as zeros: cleared once in every stage (the copies never write them)
  const int zrows = p < kStagedRows ? kStagedRows - static_cast<int>(p) : 0;
  for (int c = tid; c < kStages * zrows * kStagedGroupThreads; c += kStagedThreads) {
    const int st = c / (zrows * kStagedGroupThreads), rem = c % (zrows * kStagedGroupThreads);
    const int r = static_cast<int>(p) + rem / kStagedGroupThreads, v = rem % kStagedGroupThreads;
    *reinterpret_cast<uint4*>(stage_mem + st * kStageBytes + r * kStageRowBytes + v * 16) =
        make_uint4(0u, 0u, 0u, 0u);
  }
  __syncthreads();
  const int64_t local = part - pr.part_off;
  const int64_t k0 = local * kGramPartColumns;
  const int64_t k1 = min(pr.n, k0 + kGramPartColumns);
  const int64_t nst = (k1 - k0) / W;  // full stages; the rest of the part is read directly

  auto issue = [&](int64_t st) {
    if (st < nst) {
      unsigned char* buf = stage_mem + (st % kStages) * kStageBytes;
      const int64_t cb = k0 + st * W;
      for (int c = tid; c < kStagedRows * kStagedGroupThreads; c += kStagedThreads) {
        const int r = c / kStagedGroupThreads, v = c % kStagedGroupThreads;
        const T* row = s_rows[r];
        if (row) __pipeline_memcpy_async(buf + r * kStageRowBytes + v * 16, row + cb + v * VEC, 16);
      }
    }
    __pipeline_commit();  // an empty group past the end keeps the wait counts uniform
  };

  float acc[E32];
#pragma unroll
  for (int i = 0; i < E32; ++i) acc[i] = 0.0f;
  double dacc[E32 / 32];
#pragma unroll
  for (int i = 0; i < E32 / 32; ++i) dacc[i] = 0.0;

  for (int st = 0; st < kStages - 1; ++st) issue(st);
  int pending = 0;
  for (int64_t st = 0; st < nst; ++st) {
    issue(st + kStages - 1);
    __pipeline_wait_prior(kStages - 1);
    __syncthreads();
    const unsigned char* buf = stage_mem + (st % kStages) * kStageBytes + gt * 16;
    uint4 v[16];
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      v[i] = *reinterpret_cast<const uint4*>(buf + (RI + i) * kStageRowBytes);
      v[8 + i] = *reinterpret_cast<const uint4*>(buf + (RJ + i) * kStageRowBytes);
    }
#pragma unroll
    for (int c = 0; c < VEC; ++c) {
      float x[16];
#pragma unroll
      for (int i = 0; i < 16; ++i) x[i] = vec_elem<T>(v[i], c);
      accumulate<8, false>(x, acc);
    }
    if (++pending == FLUSH) {
      flush<E32>(acc, dacc, lane);
      pending = 0;
    }
    __syncthreads();  // every group is done with this buffer before it is refilled
  }
  __pipeline_wait_prior(0);
  if (pending) flush<E32>(acc, dacc, lane);
  // the columns after the last full stage, straight from memory
  for (int64_t base = k0 + nst * W; base < k1; base += int64_t(kStagedGroupThreads) * kProductsPerFlush) {
#pragma unroll 1
    for (int f = 0; f < kProductsPerFlush; ++f) {
      const int64_t k = base + int64_t(f) * kStagedGroupThreads + gt;
      if (k < k1) {
        float x[16];
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          const T* a = s_rows[RI + i];
          const T* b = s_rows[RJ + i];
          x[i] = a ? to_float<T>(a[k]) : 0.0f;
          x[8 + i] = b ? to_float<T>(b[k]) : 0.0f;
        }
        accumulate<8, false>(x, acc);
      }
    }
    flush<E32>(acc, dacc, lane);
  }

#pragma unroll
  for (int i = 0; i < E32 / 32; ++i) s_red[warp][lane * (E32 / 32) + i] = dacc[i];
  __syncthreads();
  const int64_t tp = tri(p);
  for (int e = gt; e < S::E; e += kStagedGroupThreads) {
    const int64_t i = RI + e / 8, j = RJ + e % 8;
    if (i > j || j >= p) continue;  // lower half of a diagonal tile pair, or padding
    double sum = 0.0;
#pragma unroll
    for (int w = 0; w < kStagedGroupThreads / 32; ++w) sum += s_red[g * (kStagedGroupThreads / 32) + w][e];
    partials[pr.partial_off + local * tp + tri_index(p, i, j)] = sum;
  }
}

// ---------------------------------------------------------------- blocked kernel (any p; for p >= 64)
// SGEMM-style tiling. One block per (part, 64 x 64 tile pair I <= J): the slabs of 32 columns of
// rows I*64.. and J*64.. are loaded through registers into shared memory (k-major, rows padded
// to kBlkLd so the transposed stores hit 32 banks; each thread reads its 4 rows and 4 columns of
// a column as two float4, one wavefront each per warp: a warp holds 4 x 8 register tiles), and
// each thread updates a 4 x 4 register tile: 16 fused multiply-adds per 8 values read from
// shared memory, where the tile-pair kernel loads 16 rows from L2 per 64 products and re-reads
// each row p / 8 times. Two groups of 256 threads take alternate slabs (more warps per SM when a
// part has one tile pair, p <= 64); each group has its own buffers. The next slab's global loads
// are in flight while the current one is multiplied. Sums: float32 over one slab (32 products),
// then float64 per thread; at the end group 1's float64 sums are added to group 0's (a fixed
// order), so the result is deterministic. A diagonal tile pair (I == J) loads its rows once, and
// its warps whose entries all lie below the diagonal skip the products. Not yet run on a GPU:
// pinned only (GramKernel::blocked), never chosen by `automatic` (docs/gpu.md).
constexpr int kBlkRows = 64;           // rows per side of a tile pair
constexpr int kBlkLd = kBlkRows + 4;   // a slab row in shared memory: padded, conflict-free stores
constexpr int kBlkK = 32;              // columns per slab (= kProductsPerFlush)
constexpr int kBlkGroupThreads = 256;  // 16 x 16 threads, 4 x 4 entries each
constexpr int kBlkGroups = 2;
constexpr int kBlkThreads = kBlkGroupThreads * kBlkGroups;
static_assert(kBlkK == kProductsPerFlush, "a slab is one float32 flush");
static_assert(kBlkGroups * 2 * kBlkK * kBlkLd * sizeof(float) >= kBlkRows * kBlkRows * sizeof(double),
              "group 1's float64 tile fits in the slab buffers");

// Elements k .. k + 3 of a row as floats; zeros past k1 or for a missing row (nullptr). vec:
// the row is 16-byte aligned (k is a multiple of 4, so the 4 elements are 16 or 8 aligned bytes).
template <typename T>
__device__ __forceinline__ float4 load4(const T* row, int64_t k, int64_t k1, bool vec) {
  float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  if (row == nullptr) return v;
  if (vec && k + 3 < k1) {
    if constexpr (sizeof(T) == 4) {
      const uint4 u = load16(row + k);
      v = make_float4(__uint_as_float(u.x), __uint_as_float(u.y), __uint_as_float(u.z), __uint_as_float(u.w));
    } else {
      const uint2 h = __ldg(reinterpret_cast<const uint2*>(row + k));
      const uint4 u = make_uint4(h.x, h.y, 0u, 0u);
      v = make_float4(vec_elem<T>(u, 0), vec_elem<T>(u, 1), vec_elem<T>(u, 2), vec_elem<T>(u, 3));
    }
    return v;
  }
  if (k < k1) v.x = to_float<T>(row[k]);
  if (k + 1 < k1) v.y = to_float<T>(row[k + 1]);
  if (k + 2 < k1) v.z = to_float<T>(row[k + 2]);
  if (k + 3 < k1) v.w = to_float<T>(row[k + 3]);
  return v;
}

template <typename T>
__global__ void __launch_bounds__(kBlkThreads, 1)
    gram_blocked_kernel(DeviceProblems d, int npairs,
                        double* __restrict__ partials /* [parts, tri(p)] per problem */) {
  // [group][0: rows I, 1: rows J][column of the slab][row of the side]
  __shared__ __align__(16) float s_slab[kBlkGroups][2][kBlkK][kBlkLd];
  __shared__ const T* s_rows[2 * kBlkRows];

  const int64_t part = int64_t(blockIdx.x) / npairs;
  const Problem pr = problem_at(d, problem_of_part(d, part));
  const int64_t p = pr.p;
  const int64_t tiles = (p + kBlkRows - 1) / kBlkRows;
  int64_t t = int64_t(blockIdx.x) % npairs;
  if (t >= tiles * (tiles + 1) / 2) return;  // uniform for the block (a smaller problem of a batch)
  int64_t I = 0;
  while (t >= tiles - I) {
    t -= tiles - I;
    ++I;
  }
  const int64_t RI = I * kBlkRows, RJ = (I + t) * kBlkRows;
  const bool diag = RI == RJ;

  const int tid = threadIdx.x, g = tid / kBlkGroupThreads, gt = tid % kBlkGroupThreads;
  if (tid < 2 * kBlkRows) {
    const int64_t row = (tid < kBlkRows ? RI : RJ - kBlkRows) + tid;
    s_rows[tid] = row < p ? row_ptr<T>(d, pr, row) : nullptr;
  }
  __syncthreads();

  const int64_t local = part - pr.part_off;
  const int64_t k0 = local * kGramPartColumns;
  const int64_t k1 = min(pr.n, k0 + kGramPartColumns);
  const int64_t slabs = (k1 - k0 + kBlkK - 1) / kBlkK;
  const int64_t rounds = (slabs + kBlkGroups - 1) / kBlkGroups;  // the same for both groups
  const bool vec = d.aligned16;

  const int w = gt / 32, l = gt % 32;  // warp and lane within the group
  // loader: rows lr and lr + 32 of each side, columns lc .. lc + 3 of the slab: a warp reads 16
  // rows x 32 bytes (two lanes per 32-byte sector); its transposed stores hit 32 banks (kBlkLd)
  const int lr = (w / 4) * 16 + l / 2, lc = (w % 4) * 8 + (l % 2) * 4;
  // compute: rows ty * 4 .. of side I, rows tx * 4 .. of side J; a warp holds 4 ty x 8 tx, so
  // its two float4 reads per column take one shared-memory wavefront each
  const int ty = (w / 2) * 4 + l / 8, tx = (w % 2) * 8 + l % 8;
  // on a diagonal tile pair, warps 4 and 6 own entries below the diagonal only (rows 32.. of
  // columns ..31): they skip the products (uniform per warp) and still load and store slabs
  const bool idle = diag && w % 2 == 0 && w >= 4;

  float4 ra[2], rb[2];
  auto load = [&](int64_t slab) {
    const int64_t k = k0 + slab * kBlkK + lc;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      ra[h] = load4<T>(s_rows[lr + 32 * h], k, k1, vec);
      rb[h] = diag ? ra[h] : load4<T>(s_rows[kBlkRows + lr + 32 * h], k, k1, vec);
    }
  };

  float acc[4][4];
  double dacc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      acc[i][j] = 0.0f;
      dacc[i][j] = 0.0;
    }

  float (*sa)[kBlkLd] = s_slab[g][0];
  float (*sb)[kBlkLd] = diag ? s_slab[g][0] : s_slab[g][1];
  load(g);  // a slab index past the end loads zeros (k >= k1)
  for (int64_t rd = 0; rd < rounds; ++rd) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = lr + 32 * h;
      sa[lc + 0][r] = ra[h].x;
      sa[lc + 1][r] = ra[h].y;
      sa[lc + 2][r] = ra[h].z;
      sa[lc + 3][r] = ra[h].w;
      if (!diag) {
        sb[lc + 0][r] = rb[h].x;
        sb[lc + 1][r] = rb[h].y;
        sb[lc + 2][r] = rb[h].z;
        sb[lc + 3][r] = rb[h].w;
      }
    }
    __syncthreads();
    if (rd + 1 < rounds) load((rd + 1) * kBlkGroups + g);  // in flight during the products
    if (!idle) {
#pragma unroll 8
      for (int k = 0; k < kBlkK; ++k) {
        const float4 a = *reinterpret_cast<const float4*>(&sa[k][ty * 4]);
        const float4 b = *reinterpret_cast<const float4*>(&sb[k][tx * 4]);
        const float av[4] = {a.x, a.y, a.z, a.w};
        const float bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
      }
    }
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        dacc[i][j] += static_cast<double>(acc[i][j]);
        acc[i][j] = 0.0f;
      }
    __syncthreads();  // every thread is done with the slab before it is overwritten
  }

  // group 1's float64 tile -> shared memory (over the slab buffers), group 0 adds and writes
  double* red = reinterpret_cast<double*>(&s_slab[0][0][0][0]);  // [64][64]
  if (g == 1) {
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) red[(ty * 4 + i) * kBlkRows + tx * 4 + j] = dacc[i][j];
  }
  __syncthreads();
  if (g == 0) {
    const int64_t tp = tri(p);
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int64_t row = RI + ty * 4 + i, col = RJ + tx * 4 + j;
        if (row > col || col >= p) continue;  // lower half of a diagonal tile pair, or padding
        partials[pr.partial_off + local * tp + tri_index(p, row, col)] =
            dacc[i][j] + red[(ty * 4 + i) * kBlkRows + tx * 4 + j];
      }
  }
}

// Pass 2: gram[q] = sum over the parts of problem q, in order, both triangles. Grid: x over the
// upper-triangle entries (32 per block; tri(p) / 32 passes gridDim.y's 65535 from p = 2048 on),
// y over problems q0 + blockIdx.y (launched in groups of at most 65535 problems).
constexpr int kRedX = 32, kRedY = 32;
constexpr int64_t kMaxGridY = 65535;
__global__ void __launch_bounds__(kRedX* kRedY)
    gram_reduce_kernel(DeviceProblems d, int64_t q0, const double* __restrict__ partials,
                       double* __restrict__ gram /* [sum p^2] */) {
  __shared__ double s[kRedY][kRedX + 1];
  const Problem pr = problem_at(d, q0 + blockIdx.y);
  const int64_t tp = tri(pr.p);
  const int64_t e = int64_t(blockIdx.x) * kRedX + threadIdx.x;
  const int64_t parts = gram_parts(pr.n);
  double acc = 0.0;
  if (e < tp)
    for (int64_t t = threadIdx.y; t < parts; t += kRedY) acc += partials[pr.partial_off + t * tp + e];
  s[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && e < tp) {
    double sum = 0.0;
    for (int y = 0; y < kRedY; ++y) sum += s[y][threadIdx.x];
    int64_t i = 0, rem = e, rowlen = pr.p;
    while (rem >= rowlen) {
      rem -= rowlen;
      --rowlen;
      ++i;
    }
    const int64_t j = i + rem;
    gram[pr.gram_off + i * pr.p + j] = sum;
    gram[pr.gram_off + j * pr.p + i] = sum;
  }
}

// Block sum in a fixed order (tree over shared memory).
__device__ double block_sum(double v, double* s) {
  s[threadIdx.x] = v;
  __syncthreads();
  for (int h = kThreads / 2; h > 0; h /= 2) {
    if (threadIdx.x < h) s[threadIdx.x] += s[threadIdx.x + h];
    __syncthreads();
  }
  const double r = s[0];
  __syncthreads();
  return r;
}

// Pass 3: one block per row; rows whose diagonal is finite leave at once. Otherwise the
// diagonal is recomputed in float64; if it is finite (float32 products overflowed), the whole
// row and column are too. Two such rows of one problem both write their shared entry, with the
// same value (the products commute and the order of the sum is the same).
template <typename T>
__global__ void __launch_bounds__(kThreads) gram_refine_kernel(DeviceProblems d, double* __restrict__ gram) {
  __shared__ double s[kThreads];
  const int64_t row = blockIdx.x;
  const Problem pr = problem_at(d, problem_of_row(d, row));
  const int64_t i = row - pr.row_off, p = pr.p;
  double* g = gram + pr.gram_off;
  if (isfinite(g[i * p + i])) return;  // uniform for the block
  const T* xi = row_ptr<T>(d, pr, i);
  double acc = 0.0;
  for (int64_t k = threadIdx.x; k < pr.n; k += kThreads) {
    const double v = to_float<T>(xi[k]);
    acc += v * v;
  }
  const double diag = block_sum(acc, s);
  if (!isfinite(diag)) {
    if (threadIdx.x == 0) g[i * p + i] = diag;
    return;
  }
  for (int64_t j = 0; j < p; ++j) {
    const T* xj = row_ptr<T>(d, pr, j);
    double a = 0.0;
    for (int64_t k = threadIdx.x; k < pr.n; k += kThreads)
      a += static_cast<double>(to_float<T>(xi[k])) * static_cast<double>(to_float<T>(xj[k]));
    const double v = block_sum(a, s);
    if (threadIdx.x == 0) {
      g[i * p + j] = v;
      g[j * p + i] = v;
    }
  }
}

template <typename T>
void launch_gram(const DeviceProblems& d, const FlagCudaPlan& plan, double* partials, double* gram,
                 cudaStream_t st, GramKernel kernel) {
  // An all-pairs kernel for P = 16 (136 accumulators) spilled (255 registers, ~550 bytes of
  // local memory under nvcc 13.0), so 8 < p <= 16 goes to the tile pairs: 3 blocks per part.
  const bool regs = kernel == GramKernel::registers || (kernel == GramKernel::automatic && plan.p_max <= 8);
  const bool staged = kernel == GramKernel::staged ||
                      (kernel == GramKernel::automatic && plan.p_max > 8 && plan.p_max <= 16 && d.aligned16);
  if (staged) {
    FLAGCORE_CHECK_ARG(plan.p_max <= 16 && d.aligned16,
                       "gram_cuda: the staged kernel takes p <= 16 with 16-byte aligned rows, got p = "
                           << plan.p_max << (d.aligned16 ? "" : " (unaligned rows)"));
    FLAGCORE_CUDA_CHECK(cudaFuncSetAttribute(
        gram_staged_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kStagedSmem)));
    gram_staged_kernel<T>
        <<<static_cast<unsigned>(plan.parts), kStagedThreads, kStagedSmem, st>>>(d, partials);
    FLAGCORE_CUDA_CHECK_LAUNCH();
  } else if (kernel == GramKernel::blocked) {
    const int64_t tiles = (plan.p_max + kBlkRows - 1) / kBlkRows;
    const int64_t pairs = tiles * (tiles + 1) / 2;
    FLAGCORE_CHECK_ARG(plan.parts * pairs <= 2147483647LL, "gram_cuda: too many blocks (parts x tile pairs)");
    const dim3 grid(static_cast<unsigned>(plan.parts * pairs));
    gram_blocked_kernel<T><<<grid, kBlkThreads, 0, st>>>(d, static_cast<int>(pairs), partials);
    FLAGCORE_CUDA_CHECK_LAUNCH();
  } else if (regs) {
    FLAGCORE_CHECK_ARG(plan.p_max <= 8, "gram_cuda: the register kernel takes p <= 8, got " << plan.p_max);
    const dim3 grid(static_cast<unsigned>(plan.parts));
    if (plan.p_max <= 4)
      gram_partial_kernel<T, 4, true><<<grid, kThreads, 0, st>>>(d, 1, partials);
    else
      gram_partial_kernel<T, 8, true><<<grid, kThreads, 0, st>>>(d, 1, partials);
    FLAGCORE_CUDA_CHECK_LAUNCH();
  } else {
    const int64_t tiles = (plan.p_max + 7) / 8;
    const int64_t pairs = tiles * (tiles + 1) / 2;
    FLAGCORE_CHECK_ARG(plan.parts * pairs <= 2147483647LL, "gram_cuda: too many blocks (parts x tile pairs)");
    const dim3 grid(static_cast<unsigned>(plan.parts * pairs));
    gram_partial_kernel<T, 8, false><<<grid, kThreads, 0, st>>>(d, static_cast<int>(pairs), partials);
    FLAGCORE_CUDA_CHECK_LAUNCH();
  }
  const int64_t chunks = (tri(plan.p_max) + kRedX - 1) / kRedX;
  FLAGCORE_CHECK_ARG(chunks <= 2147483647LL, "gram_cuda: p too large for the reduction grid");
  for (int64_t q0 = 0; q0 < d.b; q0 += kMaxGridY) {
    const int64_t nq = d.b - q0 < kMaxGridY ? d.b - q0 : kMaxGridY;
    const dim3 rgrid(static_cast<unsigned>(chunks), static_cast<unsigned>(nq));
    gram_reduce_kernel<<<rgrid, dim3(kRedX, kRedY), 0, st>>>(d, q0, partials, gram);
    FLAGCORE_CUDA_CHECK_LAUNCH();
  }
  gram_refine_kernel<T><<<static_cast<unsigned>(plan.rows), kThreads, 0, st>>>(d, gram);
  FLAGCORE_CUDA_CHECK_LAUNCH();
}

}  // namespace

void gram_cuda(const DeviceProblems& d, DType dtype, const FlagCudaPlan& plan, double* partials, double* gram,
               std::uintptr_t stream, GramKernel kernel) {
  if (d.b <= 0 || plan.rows <= 0) return;
  FLAGCORE_CHECK_ARG(d.b <= 2147483647LL && plan.parts <= 2147483647LL && plan.rows <= 2147483647LL,
                     "gram_cuda: batch too large");
  FLAGCORE_CHECK_ARG(kernel == GramKernel::automatic || kernel == GramKernel::registers ||
                         kernel == GramKernel::tile_pairs || kernel == GramKernel::staged ||
                         kernel == GramKernel::blocked,
                     "gram_cuda: unknown Gram kernel " << static_cast<int>(kernel));
  const cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::float32:
      launch_gram<float>(d, plan, partials, gram, st, kernel);
      break;
    case DType::float16:
      launch_gram<__half>(d, plan, partials, gram, st, kernel);
      break;
    case DType::bfloat16:
      launch_gram<__nv_bfloat16>(d, plan, partials, gram, st, kernel);
      break;
    default:
      FLAGCORE_CHECK_ARG(false,
                         "gram_cuda: dtype must be float32, float16 or bfloat16, got " << dtype_name(dtype));
  }
}

}  // namespace cuda
}  // namespace flagcore
