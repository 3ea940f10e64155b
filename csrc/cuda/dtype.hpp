// Element types and kernel choices named at the Python/C++ boundary of the CUDA path. Plain C++
// (no CUDA headers): bindings.cpp binds them as py::enum_ in every build, so the stub and the
// error messages are the same with and without CUDA.
#pragma once
#include <cstdint>

namespace flagcore {
namespace cuda {

// Element type of a device array (torch dtype names). The FA kernels take float32, float16 and
// bfloat16 data; the coordinate-wise kernel float32 and float64 (its masks and flags are int32);
// workspaces are uint8 and the ragged row tables int64.
enum class DType : int {
  float32 = 0,
  float16 = 1,
  bfloat16 = 2,
  float64 = 3,
  uint8 = 4,
  int32 = 5,
  int64 = 6
};

// Bytes per element; 0 for a value outside the enum (a bad cast from an integer).
inline int64_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::float32:
    case DType::int32:
      return 4;
    case DType::float16:
    case DType::bfloat16:
      return 2;
    case DType::float64:
    case DType::int64:
      return 8;
    case DType::uint8:
      return 1;
  }
  return 0;
}

inline const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::float32:
      return "float32";
    case DType::float16:
      return "float16";
    case DType::bfloat16:
      return "bfloat16";
    case DType::float64:
      return "float64";
    case DType::uint8:
      return "uint8";
    case DType::int32:
      return "int32";
    case DType::int64:
      return "int64";
  }
  return "unknown";
}

// The data types of the FA kernels (gram_cuda, weighted_sum_cuda).
inline bool is_fa_dtype(DType dtype) {
  return dtype == DType::float32 || dtype == DType::float16 || dtype == DType::bfloat16;
}

// Which Gram kernel the FA's CUDA path runs: automatic (registers for p <= 8; staged for
// 8 < p <= 16 with 16-byte aligned rows; tile pairs otherwise), or one of them pinned (tests,
// the sanitizer run and the benchmark's A/B compare them). blocked (64 x 64 tile pairs through
// shared memory, gram_cuda.cu) takes any p and is not chosen automatically until measured on a GPU.
enum class GramKernel : int { automatic = 0, registers = 1, tile_pairs = 2, staged = 3, blocked = 4 };

}  // namespace cuda
}  // namespace flagcore
