// mha bench decode: flash decode against KV caches, in µs per step and GB/s of cache read, over the
// machine's read-bandwidth ceiling measured in the same run.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <nlohmann/json.hpp>

#include "check/random.h"
#include "commands.h"
#include "kernels/ceiling.h"
#include "mha/decode.h"
#include "mha/errors.h"
#include "mha/runtime.h"
#include "options.h"
#include "report.h"

namespace mha::cli {

namespace {

struct DecodeBenchArgs {
  std::vector<std::int64_t> contexts{4096, 32768};
  std::vector<std::string> heads{"32/8", "32/32", "32/1"};
  std::vector<std::int64_t> batches{1, 8};
  std::vector<std::string> kv_dtypes{"bf16", "int8"};
  std::vector<std::string> layouts{"contiguous", "paged"};
  std::int64_t head_dim = 128, block_size = 16, working_set_mib = 256;
  double min_time = 0.3;
  std::string json, plot;
};

struct Shape {
  std::int64_t context, hq, hkv, batch;
  CacheDType dtype;
  bool paged;
};

std::size_t element_bytes(CacheDType t) { return t == CacheDType::f32 ? 4 : t == CacheDType::int8 ? 1 : 2; }

// Bytes a step reads: every visible K and V element once (and int8's scales).
double step_bytes(const Shape& s, std::int64_t d) {
  const double elem = double(element_bytes(s.dtype));
  const double per_token_head = 2 * (d * elem + (s.dtype == CacheDType::int8 ? 4 : 0));
  return double(s.batch) * double(s.context) * double(s.hkv) * per_token_head;
}

// Caches of one shape, filled with random K/V. Enough copies ("layers", as in a model) that a pass
// over them all exceeds the working set, so steps read from memory as in a real model, not from L3.
struct Caches {
  std::vector<std::unique_ptr<KvCache>> layers;
  std::vector<std::int32_t> seqs;
};

Caches build(const Shape& s, const DecodeBenchArgs& a) {
  const KvCacheConfig config{.kv_heads = s.hkv,
                             .head_dim = a.head_dim,
                             .dtype = s.dtype,
                             .max_seqs = s.batch,
                             .max_seq_len = s.context,
                             .block_size = s.paged ? a.block_size : 0};
  Caches c;
  const double bytes = step_bytes(s, a.head_dim);
  const std::int64_t layers =
      std::clamp<std::int64_t>(std::int64_t(double(a.working_set_mib) * 1048576.0 / bytes) + 1, 1, 256);
  // A chunk of random tokens, written over and over (values do not change the time), V's apart
  // from K's as in a model.
  const std::int64_t chunk = 256, row = s.hkv * a.head_dim;
  const std::vector<float> rnd_k = check::normal_vector(std::size_t(s.batch * chunk * row), 7),
                           rnd_v = check::normal_vector(std::size_t(s.batch * chunk * row), 8);
  for (std::int64_t l = 0; l < layers; ++l) {
    auto cache = std::make_unique<KvCache>(config);
    c.seqs.clear();
    for (std::int64_t b = 0; b < s.batch; ++b) c.seqs.push_back(cache->add_sequence());
    // Chunks go round-robin over the batch, so a paged cache's sequences get interleaved blocks.
    for (std::int64_t t0 = 0; t0 < s.context; t0 += chunk) {
      const std::int64_t n = std::min(chunk, s.context - t0);
      const std::vector<std::int32_t> pos(std::size_t(s.batch), std::int32_t(t0));
      Tensor k = Tensor::contiguous(const_cast<float*>(rnd_k.data()), DType::f32, {s.batch, n, s.hkv, a.head_dim});
      k.strides = {chunk * row, row, a.head_dim, 1};
      Tensor v = k;
      v.data = const_cast<float*>(rnd_v.data());
      cache->write(c.seqs, pos, k, v);
    }
    c.layers.push_back(std::move(cache));
  }
  return c;
}

// Median µs of one decode step (one new token per sequence), cycling over the layers.
double time_step(const Shape& s, Caches& c, const DecodeBenchArgs& a) {
  const std::vector<float> q = check::normal_vector(std::size_t(s.batch * s.hq * a.head_dim), 3);
  std::vector<float> out(q.size());
  const Tensor qt = Tensor::bshd(const_cast<float*>(q.data()), DType::f32, s.batch, 1, s.hq, a.head_dim);
  const Tensor ot = Tensor::bshd(out.data(), DType::f32, s.batch, 1, s.hq, a.head_dim);
  std::size_t layer = 0;
  const double ms = time_ms(
      [&] {
        decode_attention(qt, *c.layers[layer], c.seqs, {}, ot);
        layer = (layer + 1) % c.layers.size();
      },
      a.min_time);
  return ms * 1000;
}

void run(const DecodeBenchArgs& a) {
  std::vector<Shape> shapes;
  for (std::int64_t ctx : a.contexts)
    for (const std::string& h : a.heads) {
      const auto slash = h.find('/');
      if (slash == std::string::npos)
        throw InvalidArgument("--heads", fmt::format("--heads '{}', expected HQ/HKV", h));
      const std::int64_t hq = std::stoll(h.substr(0, slash)), hkv = std::stoll(h.substr(slash + 1));
      for (std::int64_t b : a.batches)
        for (const std::string& dt : a.kv_dtypes)
          for (const std::string& layout : a.layouts) {
            if (layout != "contiguous" && layout != "paged")
              throw InvalidArgument("--layout",
                                    fmt::format("--layout '{}', expected contiguous or paged", layout));
            shapes.push_back({ctx, hq, hkv, b, parse_cache_dtype(dt, "--kv-dtype"), layout == "paged"});
          }
    }
  const Isa isa = active_isa();
  double ceiling = detail::measure_read_bandwidth_gbps(isa);
  // Decoding with many query heads per KV head (MQA) is compute-bound, not memory-bound: the fp32
  // FMA ceiling is measured too, and each row says which of the two binds.
  double flop_ceiling = detail::measure_ceiling_gflops(isa, detail::PeakKind::fp32_fma);
  fmt::print("## Flash decode (ISA {}, {} threads, head dim {}, one new token per sequence)\n\n",
             to_string(isa), num_threads(), a.head_dim);
  Table table({"context", "heads (q/kv)", "batch", "kv dtype", "layout", "µs/step", "GB/s", "ceiling GB/s",
               "fraction", "GFLOP/s", "of FMA peak"});
  struct Row {
    Shape s;
    double us, gbps, cache_gbps;  // cache_gbps: the read ceiling of the row's own caches
  };
  std::vector<Row> rows;
  for (const Shape& s : shapes) {
    Caches c = build(s, a);
    const double us = time_step(s, c, a);
    // The K and V rows a step reads, of every layer, streamed as the ceiling loop streams.
    const std::size_t bytes = std::size_t(s.batch * s.context * s.hkv * a.head_dim) * element_bytes(s.dtype);
    std::vector<detail::ReadRegion> regions;
    for (const auto& layer : c.layers) {
      const KvCache::Layout l = layer->layout();
      regions.push_back({l.k, bytes});
      regions.push_back({l.v, bytes});
    }
    rows.push_back(
        {s, us, step_bytes(s, a.head_dim) / us * 1e-3, detail::measure_read_bandwidth_gbps(isa, regions)});
  }
  ceiling = std::max(ceiling, detail::measure_read_bandwidth_gbps(isa));
  flop_ceiling = std::max(flop_ceiling, detail::measure_ceiling_gflops(isa, detail::PeakKind::fp32_fma));
  nlohmann::json records = nlohmann::json::array();
  for (const Row& r : rows) {
    const Shape& s = r.s;
    const std::string name = fmt::format("ctx{}_h{}_{}_b{}_{}_{}", s.context, s.hq, s.hkv, s.batch,
                                         to_string(s.dtype), s.paged ? "paged" : "contiguous");
    const double row_ceiling = std::max(ceiling, r.cache_gbps);
    // 4·D flops per (query head, key): q·k and p·v.
    const double gflops =
        4.0 * double(a.head_dim) * double(s.hq) * double(s.context) * double(s.batch) / r.us * 1e-3;
    table.add({std::to_string(s.context), fmt::format("{}/{}", s.hq, s.hkv), std::to_string(s.batch),
               std::string(to_string(s.dtype)),
               s.paged ? fmt::format("paged/{}", a.block_size) : "contiguous", fmt::format("{:.1f}", r.us),
               fmt::format("{:.1f}", r.gbps), fmt::format("{:.1f}", row_ceiling),
               fmt::format("{:.1f}%", 100 * r.gbps / row_ceiling), fmt::format("{:.1f}", gflops),
               fmt::format("{:.1f}%", 100 * gflops / flop_ceiling)});
    records.push_back({{"name", name},
                       {"b", s.batch},
                       {"hq", s.hq},
                       {"hkv", s.hkv},
                       {"context", s.context},
                       {"d", a.head_dim},
                       {"kv_dtype", to_string(s.dtype)},
                       {"layout", s.paged ? "paged" : "contiguous"},
                       {"block_size", s.paged ? a.block_size : 0},
                       {"isa", to_string(isa)},
                       {"threads", num_threads()},
                       {"us", r.us},
                       {"gbps", r.gbps},
                       {"ceiling_gbps", row_ceiling},
                       {"buffer_read_gbps", ceiling},
                       {"cache_read_gbps", r.cache_gbps},
                       {"fraction_of_ceiling", r.gbps / row_ceiling},
                       {"gflops", gflops},
                       {"fma_ceiling_gflops", flop_ceiling},
                       {"fraction_of_fma_ceiling", gflops / flop_ceiling}});
  }
  table.print();
  fmt::print(
      "\nGB/s counts each visible K/V byte once per step (int8: with its scales). The ceiling is the best\n"
      "streaming read on all threads (front to back, and as 8 prefetched streams per thread) of a 512 MiB\n"
      "buffer on huge pages, before and after the shapes, and of the row's own caches right after its steps\n"
      "(a VM's memory need not read at one speed). Steps cycle over copies of the cache (layers) totalling\n"
      "at least {} MiB, so they read from memory, not from L3.\n"
      "GFLOP/s counts 4·D per (query head, key); the FMA peak ({:.1f} GFLOP/s) is measured in the same run. "
      "A\n"
      "step reads 2·D cache elements per (KV head, key) for Hq/Hkv·4·D flops: with many query heads per KV\n"
      "head it is bound by arithmetic, not by memory.\n",
      a.working_set_mib, flop_ceiling);
  // The comparisons: GQA against plain MHA, paged against contiguous.
  auto find = [&](const Shape& want) -> const Row* {
    for (const Row& r : rows)
      if (r.s.context == want.context && r.s.hq == want.hq && r.s.hkv == want.hkv &&
          r.s.batch == want.batch && r.s.dtype == want.dtype && r.s.paged == want.paged)
        return &r;
    return nullptr;
  };
  for (const Row& r : rows) {
    if (r.s.hkv == r.s.hq || r.s.paged) continue;
    Shape mha_shape = r.s;
    mha_shape.hkv = r.s.hq;
    if (const Row* m = find(mha_shape))
      fmt::print("GQA {}/{} vs {}/{} (context {}, batch {}, {}): {:.2f}× faster\n", r.s.hq, r.s.hkv, r.s.hq,
                 r.s.hq, r.s.context, r.s.batch, to_string(r.s.dtype), m->us / r.us);
  }
  for (const Row& r : rows) {
    if (!r.s.paged) continue;
    Shape c = r.s;
    c.paged = false;
    if (const Row* m = find(c))
      fmt::print("paged vs contiguous (context {}, {}/{}, batch {}, {}): {:+.1f}% time\n", r.s.context,
                 r.s.hq, r.s.hkv, r.s.batch, to_string(r.s.dtype), 100 * (r.us / m->us - 1));
  }
  const std::string json = a.json.empty() && !a.plot.empty() ? a.plot + ".json" : a.json;
  if (!json.empty()) write_json_file(json, records.dump(2));
  if (!a.plot.empty()) plot_records(json, a.plot);
}

}  // namespace

void bench_decode_short() {
  DecodeBenchArgs a;
  a.contexts = {4096};
  a.heads = {"32/8", "32/32"};
  a.batches = {1};
  a.kv_dtypes = {"bf16"};
  a.min_time = 0.2;
  run(a);
}

void add_bench_decode(CLI::App& bench) {
  auto a = std::make_shared<DecodeBenchArgs>();
  CLI::App* cmd =
      bench.add_subcommand("decode", "Flash decode against KV caches: µs per step, GB/s vs the ceiling");
  cmd->add_option("--context", a->contexts, "Cache tokens per sequence (repeatable)")
      ->check(CLI::Range(1, 1 << 24));
  cmd->add_option("--heads", a->heads, "Query/KV heads as HQ/HKV (repeatable)");
  cmd->add_option("--batch", a->batches, "Sequences per step (repeatable)")->check(CLI::Range(1, 4096));
  cmd->add_option("--kv-dtype", a->kv_dtypes, "Cache dtype: f32, f16, bf16 or int8 (repeatable)");
  cmd->add_option("--layout", a->layouts, "contiguous or paged (repeatable)");
  cmd->add_option("--head-dim", a->head_dim, "Head dim")->check(CLI::Range(1, 256));
  cmd->add_option("--block-size", a->block_size, "Paged block size (power of two)")
      ->check(CLI::Range(1, 1 << 16));
  cmd->add_option("--working-set", a->working_set_mib, "MiB of cache copies cycled through (beyond L3)")
      ->check(CLI::Range(1, 1 << 16));
  cmd->add_option("--min-time", a->min_time, "Seconds to spend timing each shape")
      ->check(finite_range(0.0, 600.0));
  cmd->add_option("--json", a->json, "Also write JSON records to this file");
  add_plot_option(*cmd, a->plot);
  cmd->callback([a] { run(*a); });
}

}  // namespace mha::cli
