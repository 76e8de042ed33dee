// Microbenches of mha::attention: shapes × causal × dtype × ISA, reporting FLOP/s (counting only
// visible pairs, 2·(D + Dv) flops each). `mha bench` is the roofline report; this is for profiling.
#include <benchmark/benchmark.h>

#include "check/case.h"
#include "mha/attention.h"
#include "mha/reference.h"

namespace mha {
namespace {

void run(benchmark::State& state, check::Case c, Isa isa, bool naive) {
  const check::ScopedIsa scoped(isa);
  const check::CaseData data(c);
  std::vector<std::uint8_t> storage;
  const Tensor out = data.make_out(storage, c);
  for (auto _ : state) {
    if (naive) {
      reference::attention_naive(data.tq, data.tk, data.tv, out, data.options);
    } else {
      attention(data.tq, data.tk, data.tv, out, data.options);
    }
    benchmark::ClobberMemory();
  }
  const double flops = attention_flops(data.tq, data.tk, data.tv, data.options);
  state.counters["FLOP/s"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
}

int register_all() {
  using check::Case;
  const std::pair<const char*, Case> shapes[] = {
      {"b1_h8_n1024_d64", {.b = 1, .nq = 1024, .nk = 1024, .hq = 8, .hkv = 8, .d = 64}},
      {"b1_h8_n1024_d64_causal",
       {.b = 1, .nq = 1024, .nk = 1024, .hq = 8, .hkv = 8, .d = 64, .causal = true}},
      {"b1_h8_n1024_d128_bf16",
       {.b = 1, .nq = 1024, .nk = 1024, .hq = 8, .hkv = 8, .d = 128, .dtype = DType::bf16}},
      {"b4_h16_n384_d64_padmask",
       {.b = 4, .nq = 384, .nk = 384, .hq = 16, .hkv = 16, .d = 64, .mask = check::MaskKind::padding}},
      {"decode_b8_h32_kv8_n2048_d128", {.b = 8, .nq = 1, .nk = 2048, .hq = 32, .hkv = 8, .d = 128}},
  };
  for (const auto& [name, c] : shapes) {
    for (Isa isa : supported_isas()) {
      benchmark::RegisterBenchmark((std::string("flash/") + name + "/" + std::string(to_string(isa))).c_str(),
                                   [c = c, isa](benchmark::State& s) { run(s, c, isa, false); })
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
    }
  }
  benchmark::RegisterBenchmark("naive/b4_h16_n384_d64_padmask",
                               [c = shapes[3].second](benchmark::State& s) { run(s, c, Isa::generic, true); })
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime();
  return 0;
}

const int registered = register_all();

}  // namespace
}  // namespace mha

BENCHMARK_MAIN();
