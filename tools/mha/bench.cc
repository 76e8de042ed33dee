// mha bench: attention throughput per shape against the machine's ceiling measured in the same run
// (fp32 FMA loop for f32/f16 inputs; AVX-512 BF16 dot loop for bf16 inputs when the CPU has it).
#include <fmt/format.h>
#include <sys/resource.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "check/case.h"
#include "commands.h"
#include "kernels/ceiling.h"
#include "kernels/flash_fwd.h"
#include "mha/backward.h"
#include "mha/errors.h"
#include "mha/reference.h"
#include "options.h"
#include "report.h"
#include "table.h"

namespace mha::cli {

namespace {

using check::Case;
using check::MaskKind;

struct BenchArgs {
  std::vector<std::string> shapes;
  bool causal = false;
  std::string dtype = "f32";
  std::string mask = "none";
  std::string layout = "bshd";
  std::string json, plot;
  bool long_context = false;
  bool naive = false;
  bool backward = false;
  double min_time = 0.5;
};

Case make_case(const std::vector<std::int64_t>& v, bool causal, DType dt, MaskKind mask, bool bhsd = false) {
  return {.b = v[0],
          .nq = v[3],
          .nk = v[4],
          .hq = v[1],
          .hkv = v[2],
          .d = v[5],
          .dtype = dt,
          .causal = causal,
          .mask = mask,
          .bhsd = bhsd};
}

std::vector<std::int64_t> parse_shape(const std::string& text) {
  std::vector<std::int64_t> v;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    try {
      std::size_t used = 0;
      v.push_back(std::stoll(item, &used));
      if (used != item.size()) throw std::invalid_argument(item);
    } catch (const std::exception&) {
      throw InvalidArgument(
          "--shape",
          fmt::format("--shape '{}': '{}' is not an integer, expected B,Hq,Hkv,Nq,Nk,D", text, item));
    }
  }
  if (v.size() != 6)
    throw InvalidArgument(
        "--shape", fmt::format("--shape '{}' has {} values, expected 6: B,Hq,Hkv,Nq,Nk,D", text, v.size()));
  for (std::int64_t x : v)
    if (x < 1)
      throw InvalidArgument(
          "--shape", fmt::format("--shape '{}': {} is not a size, expected B,Hq,Hkv,Nq,Nk,D >= 1", text, x));
  return v;
}

std::vector<BenchShape> default_shapes() {
  std::vector<BenchShape> s;
  for (DType dt : {DType::f32, DType::bf16}) {
    const std::string suffix = dt == DType::bf16 ? "_bf16" : "";
    for (bool causal : {false, true}) {
      const std::string c = causal ? "_causal" : "";
      s.push_back(
          {"attn_2k" + c + suffix, make_case({1, 12, 12, 2048, 2048, 128}, causal, dt, MaskKind::none)});
      if (dt == DType::f32)
        s.push_back({"attn_4k" + c, make_case({1, 12, 12, 4096, 4096, 128}, causal, dt, MaskKind::none)});
    }
    s.push_back({"bert_padmask" + suffix, make_case({8, 16, 16, 384, 384, 64}, false, dt, MaskKind::padding),
                 dt == DType::f32});
    if (dt == DType::f32)
      s.push_back({"gqa_2k", make_case({1, 32, 8, 2048, 2048, 128}, false, dt, MaskKind::none)});
  }
  return s;
}

// The backward's set: the forward's main shapes, named with a _bwd suffix.
std::vector<BenchShape> backward_shapes() {
  const std::pair<const char*, Case> shapes[] = {
      {"attn_2k_bwd", make_case({1, 12, 12, 2048, 2048, 128}, false, DType::f32, MaskKind::none)},
      {"attn_2k_causal_bwd", make_case({1, 12, 12, 2048, 2048, 128}, true, DType::f32, MaskKind::none)},
      {"bert_padmask_bwd", make_case({8, 16, 16, 384, 384, 64}, false, DType::f32, MaskKind::padding)},
      {"gqa_2k_bwd", make_case({1, 32, 8, 2048, 2048, 128}, false, DType::f32, MaskKind::none)},
      {"attn_2k_bf16_bwd", make_case({1, 12, 12, 2048, 2048, 128}, false, DType::bf16, MaskKind::none)},
  };
  std::vector<BenchShape> s;
  for (const auto& [name, c] : shapes) s.push_back({name, c, false, true});
  return s;
}

double peak_rss_mib() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return double(ru.ru_maxrss) / 1024.0;
}

void run(const BenchArgs& args) {
  std::vector<BenchShape> shapes;
  const DType dt = parse_dtype(args.dtype, "--dtype");
  const MaskKind mask = args.mask == "padding" ? MaskKind::padding : MaskKind::none;
  for (const auto& text : args.shapes)
    shapes.push_back({"shape_" + text + (args.layout == "bhsd" ? "_bhsd" : "") + (args.backward ? "_bwd" : ""),
                      make_case(parse_shape(text), args.causal, dt, mask, args.layout == "bhsd"),
                      args.naive && !args.backward,
                      args.backward});
  if (args.long_context)
    shapes.push_back({"long_64k_causal", make_case({1, 8, 8, 65536, 65536, 128}, true, dt, mask)});
  if (shapes.empty()) shapes = args.backward ? backward_shapes() : default_shapes();
  const std::string json = args.json.empty() && !args.plot.empty() ? args.plot + ".json" : args.json;
  run_bench(shapes, args.min_time, json);
  if (!args.plot.empty()) plot_records(json, args.plot);
}

}  // namespace

void run_bench(const std::vector<BenchShape>& shapes, double min_time, const std::string& json) {
  const Isa isa = active_isa();
  const bool has_bf16_dot = cpu_supports(Isa::avx512bf16);
  // The ceilings are measured before and after the shapes and the best run counts: a noisy
  // neighbour can only lower a run, never raise it.
  double fp32_ceiling = 0, bf16_ceiling = 0;
  auto measure_ceilings = [&] {
    fp32_ceiling = std::max(fp32_ceiling, detail::measure_ceiling_gflops(isa, detail::PeakKind::fp32_fma));
    if (has_bf16_dot)
      bf16_ceiling =
          std::max(bf16_ceiling, detail::measure_ceiling_gflops(Isa::avx512bf16, detail::PeakKind::bf16_dot));
  };
  measure_ceilings();

  struct Measured {
    double flops, ms, naive_ms, peak_rss_mib, tensors_mib;
    std::vector<std::int64_t> valid_keys;  // per sequence, for a padding mask
  };
  std::vector<Measured> measured;
  for (const BenchShape& s : shapes) {
    const Case& c = s.c;
    const check::CaseData data(c);
    std::vector<std::uint8_t> storage;
    // A backward is timed as training runs it: out, dout and the gradients in the input dtype (a
    // bf16 model's autograd hands bf16 dout), reading the forward's out and lse.
    Case out_case = c;
    if (s.backward) out_case.out_f32 = false;
    const Tensor out = data.make_out(storage, out_case);
    Measured m{};
    if (s.backward) {
      std::vector<float> lse_storage;
      const Tensor lse = data.make_lse(lse_storage);
      attention(data.tq, data.tk, data.tv, out, data.options, &lse);
      std::vector<std::uint8_t> dout_storage, dq_storage, dk_storage, dv_storage;
      const Tensor dout = data.make_out(dout_storage, out_case);
      std::fill(dout_storage.begin(), dout_storage.end(), std::uint8_t(0x3c));  // small finite values
      const auto like = [&](std::vector<std::uint8_t>& st, const Tensor& t) {
        st.assign(std::size_t(t.numel()) * size_of(t.dtype), 0);
        Tensor g = t;
        g.data = st.data();
        return g;
      };
      const Tensor dq = like(dq_storage, data.tq), dk = like(dk_storage, data.tk), dv = like(dv_storage, data.tv);
      m.flops = attention_backward_flops(data.tq, data.tk, data.tv, data.options);
      m.ms = time_ms([&] { attention_backward(data.tq, data.tk, data.tv, out, dout, lse, dq, dk, dv, data.options); },
                     min_time);
    } else {
      m.flops = attention_flops(data.tq, data.tk, data.tv, data.options);
      m.ms = time_ms([&] { attention(data.tq, data.tk, data.tv, out, data.options); }, min_time);
    }
    if (s.with_naive)
      m.naive_ms =
          time_ms([&] { reference::attention_naive(data.tq, data.tk, data.tv, out, data.options); }, 0.1);
    m.peak_rss_mib = peak_rss_mib();
    m.tensors_mib =
        double(data.q.size() + data.k.size() + data.v.size() + storage.size()) / (1024.0 * 1024.0);
    if (c.mask == MaskKind::padding) {  // so peers (scripts/bench-peers) can be given the same mask
      const Tensor& mk = *data.options.mask;
      const auto* mf = static_cast<const float*>(mk.data);
      for (std::int64_t b = 0; b < mk.shape[0]; ++b) {
        std::int64_t n = 0;
        while (n < mk.shape[3] && mf[b * mk.shape[3] + n] == 0.0f) ++n;
        m.valid_keys.push_back(n);
      }
    }
    measured.push_back(m);
  }
  measure_ceilings();

  const bool any_backward = std::any_of(shapes.begin(), shapes.end(), [](const BenchShape& s) { return s.backward; });
  fmt::print("## mha bench: flash {}, ISA {}, {} threads\n\n", any_backward ? "backward" : "forward",
             to_string(isa), num_threads());
  const Isa fma_isa = isa == Isa::avx512bf16 ? Isa::avx512 : isa;  // the FMA loop that ISA runs
  fmt::print(
      "Ceiling measured in this run (best of runs before and after the shapes) on {} threads: fp32 FMA ({}) "
      "{:.1f} GFLOP/s",
      num_threads(), to_string(fma_isa), fp32_ceiling);
  if (has_bf16_dot) fmt::print(", bf16 dot (vdpbf16ps) {:.1f} GFLOP/s", bf16_ceiling);
  fmt::print(
      ".\nf32/f16 rows are measured against the fp32 ceiling, bf16 rows against the machine's bf16 "
      "ceiling.\n\n");

  Table table({"name", "B", "Hq/Hkv", "Nq", "Nk", "D", "causal", "mask", "dtype", "ms", "GFLOP/s", "ceiling",
               "fraction", "vs naive"});
  nlohmann::json records = nlohmann::json::array();
  for (std::size_t i = 0; i < shapes.size(); ++i) {
    const BenchShape& s = shapes[i];
    const Case& c = s.c;
    const Measured& m = measured[i];
    const double gflops = m.flops / m.ms * 1e-6;
    const double ceiling = c.dtype == DType::bf16 && has_bf16_dot ? bf16_ceiling : fp32_ceiling;
    nlohmann::json r = {{"name", s.name},
                        {"b", c.b},
                        {"hq", c.hq},
                        {"hkv", c.hkv},
                        {"nq", c.nq},
                        {"nk", c.nk},
                        {"d", c.d},
                        {"causal", c.causal},
                        {"mask", c.mask == MaskKind::padding ? "padding" : "none"},
                        {"dtype", std::string(to_string(c.dtype))},
                        {"layout", c.bhsd ? "bhsd" : "bshd"},
                        {"isa", std::string(to_string(isa))},
                        {"pass", s.backward ? "backward" : "forward"},
                        {"threads", num_threads()},
                        {"ms", m.ms},
                        {"gflops", gflops},
                        {"ceiling_gflops", ceiling},
                        {"fraction_of_ceiling", gflops / ceiling}};
    if (!m.valid_keys.empty()) r["padding_valid_keys"] = m.valid_keys;
    std::string vs_naive = "-";
    if (s.with_naive) {
      r["naive_ms"] = m.naive_ms;
      r["speedup_vs_naive"] = m.naive_ms / m.ms;
      vs_naive = fmt::format("{:.1f}×", m.naive_ms / m.ms);
    }
    if (s.name.rfind("long", 0) == 0) {
      // Peak RSS against the bytes of q, k, v and out: the rest is the process and the kernel's
      // per-thread scratch (the score matrix alone would be Nq·Nk·4 bytes per head).
      r["peak_rss_mib"] = m.peak_rss_mib;
      r["tensors_mib"] = m.tensors_mib;
      r["scratch_per_thread_kib"] = double(detail::kFlashScratchFloats) * 4 / 1024;
    }
    table.add({s.name, std::to_string(c.b), fmt::format("{}/{}", c.hq, c.hkv), std::to_string(c.nq),
               std::to_string(c.nk), std::to_string(c.d), c.causal ? "yes" : "no",
               c.mask == MaskKind::padding ? "padding" : "-", std::string(to_string(c.dtype)),
               fmt::format("{:.2f}", m.ms), fmt::format("{:.1f}", gflops), fmt::format("{:.1f}", ceiling),
               fmt::format("{:.1f}%", 100 * gflops / ceiling), vs_naive});
    records.push_back(std::move(r));
  }
  table.print();
  fmt::print(
      "\nFLOPs = 2·(D + Dv) per visible (query, key) pair (4·B·Hq·Nq·Nk·D for full attention); a backward "
      "counts 2.5× its forward (FlashAttention's convention). Times are medians.\n");
  if (!json.empty()) {
    write_json_file(json, records.dump(2));
  }
}

void add_bench(CLI::App& app) {
  auto args = std::make_shared<BenchArgs>();
  CLI::App* cmd = app.add_subcommand(
      "bench", "Throughput per shape against the machine's ceiling measured in the same run");
  cmd->add_option("--shape", args->shapes, "B,Hq,Hkv,Nq,Nk,D (repeatable; default: the standard set)");
  cmd->add_flag("--causal", args->causal, "Causal (for --shape and --long)");
  cmd->add_option("--dtype", args->dtype, "Input dtype for --shape: f32, f16 or bf16")
      ->check(CLI::IsMember({"f32", "f16", "bf16"}));
  cmd->add_option("--mask", args->mask,
                  "Mask for --shape: none or padding ([B,1,1,Nk], random valid lengths)")
      ->check(CLI::IsMember({"none", "padding"}));
  cmd->add_option("--layout", args->layout,
                  "Memory layout of q, k, v and out for --shape: bshd (FlashAttention's) or bhsd (PyTorch's)")
      ->check(CLI::IsMember({"bshd", "bhsd"}));
  cmd->add_flag("--naive", args->naive, "Also time the naive path for --shape");
  cmd->add_flag("--backward", args->backward,
                "Time the backward (dq, dk, dv) instead; without --shape, the backward's standard set");
  cmd->add_flag("--long", args->long_context,
                "Add the long-context case: 65536 tokens, 8 heads, head dim 128, causal");
  cmd->add_option("--min-time", args->min_time, "Seconds to spend timing each shape")
      ->check(finite_range(0.0, 600.0));
  cmd->add_option("--json", args->json, "Also write JSON records to this file");
  add_plot_option(*cmd, args->plot);
  add_bench_decode(*cmd);
  cmd->callback([cmd, args] {
    if (!cmd->get_subcommands().empty()) return;  // `mha bench decode` ran instead
    run(*args);
  });
}

}  // namespace mha::cli
