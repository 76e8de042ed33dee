// Subcommands of the `mha` CLI; each registers itself on the app and runs from its callback.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>
#include <vector>

namespace mha::cli {

void add_attend(CLI::App& app);
void add_bench(CLI::App& app);
// `mha bench decode`, under the bench subcommand.
void add_bench_decode(CLI::App& bench);
void add_check(CLI::App& app);
void add_demo(CLI::App& app);
void add_embed(CLI::App& app);
// `mha dist demo` (built with libmha_dist, MHA_HAVE_DIST).
void add_dist(CLI::App& app);
// `mha demo self-attention` and `mha demo bert`, under the demo subcommand.
void add_demo_layers(CLI::App& demo);
// `mha demo serve`, under the demo subcommand.
void add_demo_serve(CLI::App& demo);

// Short versions for `mha demo`: the BERT layer at batch 2, and decode at context 4096.
void demo_bert_short();
void bench_decode_short();

// A BertEncoder run over token ids from .npy files (mha embed, and the demo's embedding line): the
// embeddings, and the first and steady-state call times.
struct EmbedRun {
  std::int64_t batch = 0, tokens = 0, hidden = 0;
  std::vector<float> embeddings;  // [batch, hidden]
  double first_ms = 0, steady_ms = 0, flops = 0;
};
EmbedRun embed_ids(const std::string& model_dir, const std::string& ids_path, const std::string& cu_path,
                   bool normalize = true);

// The demo's line: all-MiniLM-L6-v2 (MHA_MODEL_DIR) on the golden token ids, timed and compared
// with the golden embeddings of sentence-transformers.
void demo_embeddings();

// Thrown by a subcommand that ran but found failures (exit status 1, no error message).
struct Failed {};

}  // namespace mha::cli
