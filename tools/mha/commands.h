// Subcommands of the `mha` CLI; each registers itself on the app and runs from its callback.
#pragma once

#include <CLI/CLI.hpp>

namespace mha::cli {

void add_attend(CLI::App& app);
void add_bench(CLI::App& app);
// `mha bench decode`, under the bench subcommand.
void add_bench_decode(CLI::App& bench);
void add_check(CLI::App& app);
void add_demo(CLI::App& app);
// `mha demo self-attention` and `mha demo bert`, under the demo subcommand.
void add_demo_layers(CLI::App& demo);
// `mha demo serve`, under the demo subcommand.
void add_demo_serve(CLI::App& demo);

// Short versions for `mha demo`: the BERT layer at batch 2, and decode at context 4096.
void demo_bert_short();
void bench_decode_short();

// Thrown by a subcommand that ran but found failures (exit status 1, no error message).
struct Failed {};

}  // namespace mha::cli
