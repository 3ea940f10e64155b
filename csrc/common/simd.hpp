// Run-time choice of the instruction set used by the hot CPU loops.
//
// Each hot loop is compiled once per instruction set in its own translation unit; the level is
// detected once (or forced, for tests, with set_simd_level or FLAGCORE_SIMD=generic|avx2|avx512).
#pragma once
#include <string>

namespace flagcore {

enum class SimdLevel { generic = 0, avx2 = 1, avx512 = 2 };

SimdLevel simd_level();
SimdLevel simd_level_supported();  // the best level this CPU runs
// Throws std::invalid_argument for an unknown name or a level this CPU cannot run.
void set_simd_level(const std::string& name);  // "auto" restores detection
std::string simd_level_name(SimdLevel level);

}  // namespace flagcore
