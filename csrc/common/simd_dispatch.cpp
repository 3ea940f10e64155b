#include "common/simd.hpp"

#include <atomic>
#include <cstdlib>

#include "common/check.hpp"

namespace flagcore {
namespace {

SimdLevel detect() {
#if defined(FLAGCORE_X86_DISPATCH) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vl"))
    return SimdLevel::avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return SimdLevel::avx2;
#endif
  return SimdLevel::generic;
}

SimdLevel parse(const std::string& name) {
  if (name == "generic") return SimdLevel::generic;
  if (name == "avx2") return SimdLevel::avx2;
  if (name == "avx512") return SimdLevel::avx512;
  FLAGCORE_CHECK_ARG(
      false, "set_simd_level: level must be 'auto', 'generic', 'avx2' or 'avx512', got '" << name << "'");
  return SimdLevel::generic;
}

std::atomic<int> g_forced{-1};

}  // namespace

SimdLevel simd_level_supported() {
  static const SimdLevel level = detect();
  return level;
}

SimdLevel simd_level() {
  int forced = g_forced.load(std::memory_order_relaxed);
  if (forced >= 0) return static_cast<SimdLevel>(forced);
  static const SimdLevel from_env = [] {
    const char* env = std::getenv("FLAGCORE_SIMD");
    SimdLevel best = simd_level_supported();
    if (env == nullptr || std::string(env).empty() || std::string(env) == "auto") return best;
    SimdLevel want = parse(env);
    return static_cast<int>(want) <= static_cast<int>(best) ? want : best;
  }();
  return from_env;
}

void set_simd_level(const std::string& name) {
  if (name == "auto") {
    g_forced.store(-1);
    return;
  }
  SimdLevel want = parse(name);
  FLAGCORE_CHECK_ARG(static_cast<int>(want) <= static_cast<int>(simd_level_supported()),
                     "set_simd_level: this CPU does not support '"
                         << name << "' (best: '" << simd_level_name(simd_level_supported()) << "')");
  g_forced.store(static_cast<int>(want));
}

std::string simd_level_name(SimdLevel level) {
  switch (level) {
    case SimdLevel::avx512:
      return "avx512";
    case SimdLevel::avx2:
      return "avx2";
    default:
      return "generic";
  }
}

}  // namespace flagcore
