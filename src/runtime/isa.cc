// CPU feature detection and the process-wide ISA choice (MHA_ISA overrides the detected best).
#include <atomic>
#include <cstdlib>
#include <string>

#include "mha/errors.h"
#include "mha/runtime.h"

namespace mha {

namespace {

bool cpu_has(Isa isa) {
  // __builtin_cpu_supports also checks that the OS saves the wide registers (XGETBV).
  __builtin_cpu_init();
  switch (isa) {
    case Isa::generic: return true;
    case Isa::avx2:
#if defined(__clang__) && __clang_major__ < 15  // clang 14 knows no "f16c" here; every AVX2 CPU has it
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("f16c");
#endif
    case Isa::avx512:
      return cpu_has(Isa::avx2) && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    case Isa::avx512bf16:  // every CPU with AVX-512 BF16 (Cooper Lake, Zen 4 and later) has VNNI
      return cpu_has(Isa::avx512) && __builtin_cpu_supports("avx512bf16") &&
             __builtin_cpu_supports("avx512vnni");
  }
  return false;
}

// Kernels compiled into this build.
constexpr Isa kBuilt[] = {Isa::generic, Isa::avx2, Isa::avx512, Isa::avx512bf16};

Isa best_built() {
  Isa best = Isa::generic;
  for (Isa isa : kBuilt)
    if (cpu_has(isa)) best = isa;
  return best;
}

bool built(Isa isa) {
  for (Isa b : kBuilt)
    if (b == isa) return true;
  return false;
}

void check_runnable(Isa isa, const std::string& argument) {
  if (!built(isa)) {
    throw Unsupported(argument, argument + " = " + std::string(to_string(isa)) +
                                    ": this build has no kernels for it; expected one of " +
                                    "generic, avx2, avx512, avx512bf16");
  }
  if (!cpu_has(isa)) {
    throw Unsupported(argument,
                      argument + " = " + std::string(to_string(isa)) + ": this CPU does not support it");
  }
}

std::atomic<int> g_isa{-1};

}  // namespace

std::string_view to_string(Isa isa) {
  switch (isa) {
    case Isa::generic: return "generic";
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
    case Isa::avx512bf16: return "avx512bf16";
  }
  return "?";
}

Isa parse_isa(std::string_view name) {
  for (Isa isa : {Isa::generic, Isa::avx2, Isa::avx512, Isa::avx512bf16})
    if (name == to_string(isa)) return isa;
  throw InvalidArgument("isa",
                        "isa = '" + std::string(name) + "', expected generic, avx2, avx512 or avx512bf16");
}

bool cpu_supports(Isa isa) { return cpu_has(isa); }

std::vector<Isa> supported_isas() {
  std::vector<Isa> out;
  for (Isa isa : kBuilt)
    if (cpu_has(isa)) out.push_back(isa);
  return out;
}

Isa default_isa() {
  if (const char* env = std::getenv("MHA_ISA"); env != nullptr && *env != '\0') {
    const Isa isa = parse_isa(env);
    check_runnable(isa, "MHA_ISA");
    return isa;
  }
  return best_built();
}

void set_isa(Isa isa) {
  check_runnable(isa, "isa");
  g_isa.store(int(isa));
}

Isa active_isa() {
  int v = g_isa.load();
  if (v < 0) {
    v = int(default_isa());
    g_isa.store(v);
  }
  return Isa(v);
}

}  // namespace mha
