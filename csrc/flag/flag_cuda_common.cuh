// Device-side helpers shared by the Flag Aggregator kernels: problem lookup in a uniform or
// ragged batch, and loads of float32 / float16 / bfloat16 data.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "cuda/check_cuda.hpp"
#include "flag/flag_cuda.hpp"

namespace flagcore {
namespace cuda {

struct Problem {
  int64_t q, p, n, row_off, gram_off, part_off, partial_off, col_off;
};

__device__ __forceinline__ Problem problem_at(const DeviceProblems& d, int64_t q) {
  Problem pr;
  pr.q = q;
  if (d.table == nullptr) {
    const int64_t parts = gram_parts(d.n);
    pr.p = d.p;
    pr.n = d.n;
    pr.row_off = q * d.p;
    pr.gram_off = q * d.p * d.p;
    pr.part_off = q * parts;
    pr.partial_off = q * parts * (d.p * (d.p + 1) / 2);
    pr.col_off = q * d.n;
  } else {
    const int64_t* m = d.table + q * kMetaCols;
    pr.p = m[0];
    pr.n = m[1];
    pr.row_off = m[2];
    pr.gram_off = m[3];
    pr.part_off = m[4];
    pr.partial_off = m[5];
    pr.col_off = m[6];
  }
  return pr;
}

// The problem that owns global part `part` (binary search over part_off for ragged batches).
__device__ __forceinline__ int64_t problem_of_part(const DeviceProblems& d, int64_t part) {
  if (d.table == nullptr) return part / gram_parts(d.n);
  int64_t lo = 0, hi = d.b - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (d.table[mid * kMetaCols + 4] <= part)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

// The problem that owns global row `row`.
__device__ __forceinline__ int64_t problem_of_row(const DeviceProblems& d, int64_t row) {
  if (d.table == nullptr) return row / d.p;
  int64_t lo = 0, hi = d.b - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (d.table[mid * kMetaCols + 2] <= row)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

template <typename T>
__device__ __forceinline__ const T* row_ptr(const DeviceProblems& d, const Problem& pr, int64_t i) {
  if (d.table == nullptr) return static_cast<const T*>(d.base) + pr.q * d.stride_b + i * d.stride_p;
  return reinterpret_cast<const T*>(d.table[d.b * kMetaCols + pr.row_off + i]);
}

template <typename T>
__device__ __forceinline__ float to_float(T v);
template <>
__device__ __forceinline__ float to_float<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ float to_float<__half>(__half v) {
  return __half2float(v);
}
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <typename T>
__device__ __forceinline__ T from_double(double v);
template <>
__device__ __forceinline__ float from_double<float>(double v) {
  return static_cast<float>(v);
}
template <>
__device__ __forceinline__ __half from_double<__half>(double v) {
  return __double2half(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_double<__nv_bfloat16>(double v) {
  return __double2bfloat16(v);
}

// Element c of a 16-byte vector holding 16 / sizeof(T) values of type T (c a compile-time
// constant after unrolling).
template <typename T>
__device__ __forceinline__ float vec_elem(const uint4& v, int c) {
  const unsigned w[4] = {v.x, v.y, v.z, v.w};
  if constexpr (sizeof(T) == 4) {
    return __uint_as_float(w[c]);
  } else {
    const unsigned word = w[c / 2];
    const unsigned short bits =
        (c % 2) ? static_cast<unsigned short>(word >> 16) : static_cast<unsigned short>(word & 0xffffu);
    if constexpr (std::is_same<T, __half>::value)
      return __half2float(__ushort_as_half(bits));
    else
      return __uint_as_float(static_cast<unsigned>(bits) << 16);  // bfloat16
  }
}

__device__ __forceinline__ uint4 load16(const void* p) {
  return __ldg(reinterpret_cast<const uint4*>(p));
}

// Device code for the data types (DType, cuda/dtype.hpp).
template <DType D>
struct DTypeOf;
template <>
struct DTypeOf<DType::float32> {
  using type = float;
};
template <>
struct DTypeOf<DType::float16> {
  using type = __half;
};
template <>
struct DTypeOf<DType::bfloat16> {
  using type = __nv_bfloat16;
};

// Makes `device` current for the scope (restores the previous one), since the caller's
// framework may have another device current on this thread.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    FLAGCORE_CUDA_CHECK(cudaGetDevice(&prev_));
    if (device != prev_) FLAGCORE_CUDA_CHECK(cudaSetDevice(device));
    changed_ = device != prev_;
  }
  ~DeviceGuard() {
    if (changed_) cudaSetDevice(prev_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = 0;
  bool changed_ = false;
};

}  // namespace cuda
}  // namespace flagcore
