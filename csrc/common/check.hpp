// Error helpers shared by the CPU and CUDA code.
//
// User input is validated in Python (with messages naming the argument); the checks here are
// a second line of defence that throws instead of crashing, never an assert (asserts vanish
// in Release builds).
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

#define FLAGCORE_CHECK_ARG(cond, msg)                  \
  do {                                                 \
    if (!(cond)) {                                     \
      std::ostringstream flagcore_os_;                 \
      flagcore_os_ << msg;                             \
      throw std::invalid_argument(flagcore_os_.str()); \
    }                                                  \
  } while (0)

#define FLAGCORE_CHECK_STATE(cond, msg)                           \
  do {                                                            \
    if (!(cond)) {                                                \
      std::ostringstream flagcore_os_;                            \
      flagcore_os_ << __FILE__ << ":" << __LINE__ << ": " << msg; \
      throw std::runtime_error(flagcore_os_.str());               \
    }                                                             \
  } while (0)

// Marks functions compiled for both host and device (the per-matrix math shared by the CPU
// path and the CUDA kernels, so that both agree by construction).
#if defined(__CUDACC__)
#define FLAGCORE_HD __host__ __device__
#else
#define FLAGCORE_HD
#endif
