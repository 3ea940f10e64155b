// A "team" is the group of threads that works on one small problem together: one CPU thread
// (SerialTeam), or one CUDA block (BlockTeam, in the .cu files). Code written against a team
// splits its loops as `for (w = t.rank(); w < work; w += t.size())`, gives every output element
// to exactly one thread with a fixed sequential order inside it, and calls t.sync() between
// phases. The result then does not depend on the team size, so the CPU and the GPU compute the
// same numbers from the same source (bitwise where both round alike: no FMA contraction).
#pragma once

#include "common/check.hpp"

namespace flagcore {

struct SerialTeam {
  FLAGCORE_HD int rank() const { return 0; }
  FLAGCORE_HD int size() const { return 1; }
  FLAGCORE_HD void sync() const {}
};

}  // namespace flagcore
