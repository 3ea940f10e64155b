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

// One of three variants of a kernel by the current level (simd_level()).
template <typename Fn>
Fn simd_pick(Fn generic, Fn avx2, Fn avx512) {
  switch (simd_level()) {
    case SimdLevel::avx512:
      return avx512;
    case SimdLevel::avx2:
      return avx2;
    default:
      return generic;
  }
}

}  // namespace flagcore

// The function pointer of type Fn (which picks the overload) to NS::name for the current level,
// NS = simd_generic, simd_avx2 or simd_avx512 in namespace flagcore: x86-64 builds compile all
// three variants, other builds the generic one only.
#if defined(FLAGCORE_X86_DISPATCH)
#define FLAGCORE_SIMD_PICK(Fn, name)                                                       \
  ::flagcore::simd_pick<Fn>(&::flagcore::simd_generic::name, &::flagcore::simd_avx2::name, \
                            &::flagcore::simd_avx512::name)
#else
#define FLAGCORE_SIMD_PICK(Fn, name) static_cast<Fn>(&::flagcore::simd_generic::name)
#endif
