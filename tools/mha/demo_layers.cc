// mha demo self-attention | bert: the tutorials' layers, naive against optimized, with accuracy
// against the float64 layer and first-call against steady-state timing.
#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <nlohmann/json.hpp>

#include "check/compare.h"
#include "check/random.h"
#include "commands.h"
#include "kernels/ceiling.h"
#include "mha/errors.h"
#include "mha/layers.h"
#include "mha/reference.h"
#include "mha/runtime.h"
#include "report.h"

namespace mha::cli {

namespace {

using clock_type = std::chrono::steady_clock;
using check::Agreement;
using check::compare;

double ms_since(clock_type::time_point t0) {
  return std::chrono::duration<double, std::milli>(clock_type::now() - t0).count();
}

std::string fmt_ms(double ms) { return fmt::format("{:.2f}", ms); }
std::string fmt_err(const Agreement& a) {
  return fmt::format("{:.2e} (max |ref| {:.2f})", a.max_err, a.max_ref);
}

nlohmann::json agreement_json(const Agreement& a) { return {{"pcc", a.pcc}, {"max_err", a.max_err}}; }

// The fields both layer demos report: machine, speed against the peak, accuracy of both paths.
nlohmann::json result_fields(double speedup, double steady_gflops, double peak, const Agreement& opt,
                             const Agreement& naive, const Agreement& between) {
  return {{"isa", to_string(active_isa())},
          {"threads", num_threads()},
          {"speedup", speedup},
          {"gflops_steady", steady_gflops},
          {"fma_ceiling_gflops", peak},
          {"fraction_of_fma_ceiling", steady_gflops / peak},
          {"pcc", opt.pcc},
          {"max_err", opt.max_err},
          {"naive_vs_reference", agreement_json(naive)},
          {"optimized_vs_naive", agreement_json(between)}};
}

void print_accuracy(const Agreement& opt, const Agreement& naive, const Agreement& between) {
  Table t({"comparison", "PCC", "max abs error"});
  t.add({"optimized vs float64 reference", fmt::format("{:.7f}", opt.pcc), fmt_err(opt)});
  t.add({"naive vs float64 reference", fmt::format("{:.7f}", naive.pcc), fmt_err(naive)});
  t.add({"optimized vs naive", fmt::format("{:.7f}", between.pcc), fmt_err(between)});
  t.print();
}

// The fp32 FMA peak of all threads, measured now: the ceiling the layers' GFLOP/s are read against.
double fma_peak() { return detail::measure_ceiling_gflops(active_isa(), detail::PeakKind::fp32_fma); }

std::string machine() { return fmt::format("ISA {}, {} threads", to_string(active_isa()), num_threads()); }

// Refuses a demo whose buffers (estimated in floats) exceed the machine's memory, before allocating:
// with overcommit, a 64 GiB weight allocation "succeeds" and the kernel kills the process later.
void require_memory(double floats, const char* what) {
  const double have = double(sysconf(_SC_PHYS_PAGES)) * double(sysconf(_SC_PAGESIZE));
  if (floats * 4 > have)
    throw OutOfMemory(what, fmt::format("{}: needs about {:.1f} GiB, this machine has {:.1f} GiB", what,
                                        floats * 4 / double(1 << 30), have / double(1 << 30)));
}

// ---- self-attention --------------------------------------------------------------------------

struct SelfArgs {
  int count = 3;
  std::int64_t d_in = 2048, d_out = 2048, rows = 1024;
  bool causal = false;
  std::string weights, json;
  std::string weight_dtype = "f32";
  std::uint64_t seed = 1;
};

void self_attention_demo(const SelfArgs& a) {
  // Weights and their fused copy, the naive score matrix, inputs and outputs.
  const double din = double(a.d_in), dout = double(a.d_out), rows = double(a.rows);
  require_memory(6 * din * dout + rows * rows + rows * (din + 6 * dout), "demo self-attention");
  SelfAttentionWeights w = a.weights.empty()
                               ? SelfAttentionWeights::random(a.d_in, a.d_out, a.seed)
                               : SelfAttentionWeights::load(SafeTensors::load(a.weights), a.d_in, a.d_out);
  const SelfAttentionOptions options{.weight_dtype = parse_dtype(a.weight_dtype, "--weight-dtype"),
                                     .causal = a.causal};
  fmt::print("## SelfAttention: {} input tensors of [{}, {}] -> [{}, {}]{} ({})\n\n", a.count, a.rows, a.d_in,
             a.rows, a.d_out, a.causal ? ", causal" : "", machine());
  const auto t_build = clock_type::now();
  SelfAttention layer(w, options);
  const double build_ms = ms_since(t_build);
  std::vector<float> x(std::size_t(a.rows * a.d_in)), y(std::size_t(a.rows * a.d_out)), y_naive(y.size());
  const Tensor xt = Tensor::contiguous(x.data(), DType::f32, {a.rows, a.d_in});
  const Tensor yt = Tensor::contiguous(y.data(), DType::f32, {a.rows, a.d_out});
  const Tensor nt = Tensor::contiguous(y_naive.data(), DType::f32, {a.rows, a.d_out});
  auto fill = [&](int i) {  // in place: xt views x's storage
    const std::vector<float> v = check::normal_vector(x.size(), a.seed * 1000003 + std::uint64_t(i));
    std::copy(v.begin(), v.end(), x.begin());
  };

  // Each tensor is generated outside the timed region; both paths see the same tensors.
  double naive_ms = 0, first_ms = 0, steady_ms = 0;
  for (int i = 0; i < a.count; ++i) {
    fill(i);
    auto t0 = clock_type::now();
    layer.forward_naive(xt, nt);
    naive_ms += ms_since(t0);
    t0 = clock_type::now();
    layer.forward(xt, yt);
    (i == 0 ? first_ms : steady_ms) += ms_since(t0);
  }
  // Accuracy on the last tensor (its outputs are still in y and y_naive).
  const std::vector<double> ref = reference::self_attention_f64(w, a.causal, x.data(), 1, a.rows);
  const Agreement opt = compare(std::span<const float>(y), ref),
                  naive = compare(std::span<const float>(y_naive), ref);
  const Agreement between = compare(std::span<const float>(y), std::span<const float>(y_naive));

  const double naive_per = naive_ms / a.count;
  const double steady_per = a.count > 1 ? steady_ms / (a.count - 1) : first_ms;
  const double flops = 2.0 * double(a.rows) * double(a.d_in) * double(3 * a.d_out) +
                       4.0 * double(a.rows) * double(a.rows) * double(a.d_out) * (a.causal ? 0.5 : 1.0);
  Table t({"path", "total ms", "ms per tensor", "GFLOP/s", "speedup"});
  t.add({"naive (3 projections, [n, n] scores, softmax, matmul)", fmt_ms(naive_ms), fmt_ms(naive_per),
         fmt::format("{:.1f}", flops / naive_per / 1e6), "1.0×"});
  t.add({"optimized, first call (plan built)", fmt_ms(first_ms), fmt_ms(first_ms),
         fmt::format("{:.1f}", flops / first_ms / 1e6), fmt::format("{:.1f}×", naive_per / first_ms)});
  t.add({"optimized, steady state", fmt_ms(steady_ms), fmt_ms(steady_per),
         fmt::format("{:.1f}", flops / steady_per / 1e6), fmt::format("{:.1f}×", naive_per / steady_per)});
  t.print();
  const double peak = fma_peak(), steady_gflops = flops / steady_per / 1e6;
  fmt::print(
      "\nSteady state: {:.1f}% of the fp32 FMA peak measured in this run ({:.1f} GFLOP/s). Weights fused "
      "into one "
      "[{}, {}] operand at construction: {:.1f} ms. Accuracy on tensor {}:\n\n",
      100 * steady_gflops / peak, peak, 3 * a.d_out, a.d_in, build_ms, a.count - 1);
  print_accuracy(opt, naive, between);
  if (!a.json.empty()) {
    nlohmann::json j = {{"demo", "self-attention"},
                        {"count", a.count},
                        {"rows", a.rows},
                        {"d_in", a.d_in},
                        {"d_out", a.d_out},
                        {"causal", a.causal},
                        {"weight_dtype", a.weight_dtype},
                        {"naive_total_ms", naive_ms},
                        {"naive_ms_per_tensor", naive_per},
                        {"first_call_ms", first_ms},
                        {"steady_ms_per_tensor", steady_per},
                        {"optimized_total_ms", first_ms + steady_ms}};
    j.update(result_fields(naive_per / steady_per, steady_gflops, peak, opt, naive, between));
    write_json_file(a.json, j.dump(2));
  }
}

// ---- BERT ------------------------------------------------------------------------------------

struct BertArgs {
  std::int64_t batch = 8, seq = 384, hidden = 1024, heads = 16, kv_heads = 0;
  int iters = 5;
  std::string weights, prefix, json;
  std::string weight_dtype = "f32";
  std::uint64_t seed = 1;
};

void bert_demo(const BertArgs& a) {
  const MultiHeadAttentionConfig config{.hidden = a.hidden,
                                        .heads = a.heads,
                                        .kv_heads = a.kv_heads,
                                        .weight_dtype = parse_dtype(a.weight_dtype, "--weight-dtype")};
  const MultiHeadAttentionConfig c = config.resolved();
  // Weights and their fused copy, the naive path's scores, activations of both paths.
  const double h = double(a.hidden), tokens = double(a.batch) * double(a.seq);
  require_memory(8 * h * h + tokens * double(c.heads) * double(a.seq) + 12 * tokens * h, "demo bert");
  MultiHeadAttentionWeights w =
      a.weights.empty() ? MultiHeadAttentionWeights::random(c, a.seed)
                        : MultiHeadAttentionWeights::load(SafeTensors::load(a.weights), c, a.prefix);
  fmt::print(
      "## MultiHeadAttention (BERT): batch {}, seq {}, hidden {}, {} heads{} of {}, padding mask ({})\n\n",
      a.batch, a.seq, a.hidden, c.heads,
      c.kv_heads != c.heads ? fmt::format(" over {} kv heads", c.kv_heads) : "", c.head_dim, machine());
  // Inputs, and a padding mask [batch, 1, 1, seq]: each sequence keeps a seeded length, the rest is -10000.
  std::vector<float> x = check::normal_vector(std::size_t(a.batch * a.seq * a.hidden), a.seed + 1);
  std::vector<float> m(std::size_t(a.batch * a.seq), 0.f);
  check::Random rng(a.seed + 2);
  for (std::int64_t b = 0; b < a.batch; ++b)
    for (std::int64_t s = rng.range(a.seq / 2, a.seq); s < a.seq; ++s)
      m[std::size_t(b * a.seq + s)] = -10000.f;
  const Tensor mask = Tensor::contiguous(m.data(), DType::f32, {a.batch, 1, 1, a.seq});
  std::vector<float> y(x.size()), y_naive(x.size());
  const Tensor xt = Tensor::contiguous(x.data(), DType::f32, {a.batch, a.seq, a.hidden});
  const Tensor yt = Tensor::contiguous(y.data(), DType::f32, {a.batch, a.seq, a.hidden});
  const Tensor nt = Tensor::contiguous(y_naive.data(), DType::f32, {a.batch, a.seq, a.hidden});

  auto t0 = clock_type::now();
  MultiHeadAttention layer(c, w);
  const double build_ms = ms_since(t0);
  t0 = clock_type::now();
  layer.forward(xt, yt, &mask);
  const double first_ms = ms_since(t0);
  std::vector<double> steady;
  for (int i = 0; i < a.iters; ++i) {
    t0 = clock_type::now();
    layer.forward(xt, yt, &mask);
    steady.push_back(ms_since(t0));
  }
  std::sort(steady.begin(), steady.end());
  const double steady_ms = steady[steady.size() / 2];
  t0 = clock_type::now();
  layer.forward_naive(xt, nt, &mask);
  const double naive_ms = ms_since(t0);

  const std::vector<double> ref = reference::multi_head_attention_f64(c, w, x.data(), a.batch, a.seq, &mask);
  const Agreement opt = compare(std::span<const float>(y), ref),
                  naive = compare(std::span<const float>(y_naive), ref);
  const Agreement between = compare(std::span<const float>(y), std::span<const float>(y_naive));

  const double rows = double(a.batch * a.seq), q = double(c.heads * c.head_dim),
               kv = double(c.kv_heads * c.head_dim);
  const double flops =
      2 * rows * double(a.hidden) * (q + 2 * kv) + 2 * rows * q * double(a.hidden) +
      4.0 * double(a.batch) * double(c.heads) * double(a.seq) * double(a.seq) * double(c.head_dim);
  Table t({"path", "ms", "GFLOP/s", "vs naive"});
  t.add({"naive: six plain ops", fmt_ms(naive_ms), fmt::format("{:.1f}", flops / naive_ms / 1e6), "1.0×"});
  t.add({"optimized: first call (builds the plan)", fmt_ms(first_ms),
         fmt::format("{:.1f}", flops / first_ms / 1e6), fmt::format("{:.1f}×", naive_ms / first_ms)});
  t.add({fmt::format("optimized: steady state (median of {})", a.iters), fmt_ms(steady_ms),
         fmt::format("{:.1f}", flops / steady_ms / 1e6), fmt::format("{:.1f}×", naive_ms / steady_ms)});
  t.print();
  const double peak = fma_peak(), steady_gflops = flops / steady_ms / 1e6;
  fmt::print(
      "\nFirst call / steady state: {:.2f}×. Steady state: {:.1f}% of the fp32 FMA peak measured in this run "
      "({:.1f} "
      "GFLOP/s). Weights fused at construction: {:.1f} ms. Plans built: {}.\n\n",
      first_ms / steady_ms, 100 * steady_gflops / peak, peak, build_ms, layer.plans_built());
  print_accuracy(opt, naive, between);
  if (!a.json.empty()) {
    nlohmann::json j = {{"demo", "bert"},         {"batch", a.batch},
                        {"seq", a.seq},           {"hidden", a.hidden},
                        {"heads", c.heads},       {"kv_heads", c.kv_heads},
                        {"head_dim", c.head_dim}, {"weight_dtype", a.weight_dtype},
                        {"naive_ms", naive_ms},   {"first_call_ms", first_ms},
                        {"steady_ms", steady_ms}, {"first_over_steady", first_ms / steady_ms}};
    j.update(result_fields(naive_ms / steady_ms, steady_gflops, peak, opt, naive, between));
    write_json_file(a.json, j.dump(2));
  }
}

}  // namespace

void demo_bert_short() {
  BertArgs a;
  a.batch = 2;
  a.iters = 3;
  bert_demo(a);
}

void add_demo_layers(CLI::App& demo) {
  auto sa = std::make_shared<SelfArgs>();
  CLI::App* self = demo.add_subcommand("self-attention", "Single-head SelfAttention: naive vs optimized");
  self->add_option("--count", sa->count, "Input tensors to run through each path")
      ->check(CLI::Range(1, 100000));
  self->add_option("--d-in", sa->d_in, "Input width")->check(CLI::Range(1, 1 << 16));
  self->add_option("--d-out", sa->d_out, "Output width (the head dim)")->check(CLI::Range(1, 1 << 16));
  self->add_option("--rows", sa->rows, "Rows (tokens) per input tensor")->check(CLI::Range(1, 1 << 20));
  self->add_flag("--causal", sa->causal, "Causal attention");
  self->add_option("--weights", sa->weights,
                   "safetensors file with W_query/W_key/W_value.weight [d_out, d_in]");
  self->add_option("--weight-dtype", sa->weight_dtype, "Weights held in f32, f16 or bf16");
  self->add_option("--seed", sa->seed, "Seed of the random weights and inputs");
  self->add_option("--json", sa->json, "Write the results as JSON to this file");
  self->callback([sa] { self_attention_demo(*sa); });

  auto ba = std::make_shared<BertArgs>();
  CLI::App* bert =
      demo.add_subcommand("bert", "BERT-size MultiHeadAttention: naive vs optimized, first vs steady");
  bert->add_option("--batch", ba->batch, "Batch")->check(CLI::Range(1, 4096));
  bert->add_option("--seq", ba->seq, "Sequence length")->check(CLI::Range(1, 1 << 20));
  bert->add_option("--hidden", ba->hidden, "Hidden size")->check(CLI::Range(1, 1 << 16));
  bert->add_option("--heads", ba->heads, "Attention heads")->check(CLI::Range(1, 1024));
  bert->add_option("--kv-heads", ba->kv_heads, "KV heads for GQA (default: heads)")
      ->check(CLI::Range(0, 1024));
  bert->add_option("--iters", ba->iters, "Steady-state iterations timed")->check(CLI::Range(1, 10000));
  bert->add_option("--weights", ba->weights,
                   "safetensors file with Hugging Face BERT attention tensor names");
  bert->add_option("--prefix", ba->prefix, "Name prefix inside --weights (e.g. bert.encoder.layer.0.)");
  bert->add_option("--weight-dtype", ba->weight_dtype, "Weights held in f32, f16 or bf16");
  bert->add_option("--seed", ba->seed, "Seed of the random weights, inputs and padding lengths");
  bert->add_option("--json", ba->json, "Write the results as JSON to this file");
  bert->callback([ba] { bert_demo(*ba); });
}

}  // namespace mha::cli
