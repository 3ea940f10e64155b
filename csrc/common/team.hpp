// A "team" is the group of threads that works on one small problem together: one CPU thread
// (SerialTeam), or one CUDA block (BlockTeam, in the .cu files). Code written against a team
// splits its loops as `for (w = t.rank(); w < work; w += t.size())`, gives every output element
// to exactly one thread with a fixed sequential order inside it, and calls t.sync() between
// phases. The result then does not depend on the team size, so the CPU and the GPU compute the
// same numbers from the same source (bitwise where both round alike: no FMA contraction).
//
// poll(): a cancellation point (Ctrl-C, common/cancel.hpp) that long loops call once per outer
// step; it may throw on the host, so only teams whose threads all leave together (one thread)
// poll for real. host_blas: the team runs on the host as one thread and may call the host
// BLAS/LAPACK (common/blas.hpp) for the p x p work above kJacobiMaxP.
#pragma once

#include "common/check.hpp"
#if !defined(__CUDA_ARCH__)
#include "common/cancel.hpp"
#endif

namespace flagcore {

struct SerialTeam {
  static constexpr bool host_blas = true;
  FLAGCORE_HD int rank() const { return 0; }
  FLAGCORE_HD int size() const { return 1; }
  FLAGCORE_HD void sync() const {}
  FLAGCORE_HD void poll() const {
#if !defined(__CUDA_ARCH__)
    check_cancel();
#endif
  }
};

}  // namespace flagcore
