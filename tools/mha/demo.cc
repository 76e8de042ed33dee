// mha demo: the README's first command. A short correctness check against the float64 oracle and a
// timing table of the flash kernel against the naive path, on built-in shapes.
#include <fmt/format.h>

#include "check/case.h"
#include "commands.h"
#include "report.h"

namespace mha::cli {

namespace {

using check::Case;
using check::MaskKind;

void correctness() {
  const Case cases[] = {
      {.b = 2, .nq = 200, .nk = 200, .hq = 8, .hkv = 2, .d = 64, .causal = true},
      {.b = 2,
       .nq = 77,
       .nk = 300,
       .hq = 4,
       .hkv = 4,
       .d = 128,
       .dtype = DType::bf16,
       .mask = MaskKind::padding},
      {.b = 1,
       .nq = 150,
       .nk = 150,
       .hq = 4,
       .hkv = 1,
       .d = 96,
       .dtype = DType::f16,
       .out_f32 = false,
       .causal = true,
       .window_left = 32,
       .window_right = 0},
      {.hq = 4, .hkv = 2, .d = 80, .causal = true, .seqlens_q = {100, 1, 37}, .seqlens_k = {100, 130, 60}},
  };
  fmt::print("## Correctness: flash kernel vs the float64 oracle (ISA {}, {} threads)\n\n",
             to_string(active_isa()), num_threads());
  if (run_accuracy({std::begin(cases), std::end(cases)}, {active_isa()}) > 0) throw Failed{};
  fmt::print("\n");
}

void timing() {
  const BenchShape shapes[] = {
      {"h8_n1024_d64", {.b = 1, .nq = 1024, .nk = 1024, .hq = 8, .hkv = 8, .d = 64}, true},
      {"h8_n1024_d64_causal",
       {.b = 1, .nq = 1024, .nk = 1024, .hq = 8, .hkv = 8, .d = 64, .causal = true},
       true},
      {"h8_n1024_d128_bf16",
       {.b = 1, .nq = 1024, .nk = 1024, .hq = 8, .hkv = 8, .d = 128, .dtype = DType::bf16}},
      {"bert_b4_padmask",
       {.b = 4, .nq = 384, .nk = 384, .hq = 16, .hkv = 16, .d = 64, .mask = MaskKind::padding},
       true},
      {"gqa_32_8_n2048_causal",
       {.b = 1, .nq = 2048, .nk = 2048, .hq = 32, .hkv = 8, .d = 128, .causal = true}},
  };
  run_bench({std::begin(shapes), std::end(shapes)}, 0.3, "");
}

}  // namespace

void add_demo(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand("demo",
                                     "Correctness and timing of the flash kernel, the BERT layer and "
                                     "decoding; subcommands run the full demos");
  add_demo_layers(*cmd);
  add_demo_serve(*cmd);
  cmd->callback([cmd] {
    if (!cmd->get_subcommands().empty()) return;  // `mha demo bert` etc. ran instead
    correctness();
    timing();
    fmt::print("\n");
    demo_bert_short();
    fmt::print("\n");
    bench_decode_short();
    fmt::print("\n");
    demo_embeddings();
  });
}

}  // namespace mha::cli
