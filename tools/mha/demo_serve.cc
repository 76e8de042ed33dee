// mha demo serve: continuous batching of synthetic requests through DecodeEngine over a paged cache.
#include <fmt/format.h>

#include <chrono>
#include <deque>
#include <nlohmann/json.hpp>

#include "check/random.h"
#include "commands.h"
#include "mha/decode.h"
#include "mha/errors.h"
#include "mha/runtime.h"
#include "report.h"

namespace mha::cli {

namespace {

struct ServeArgs {
  int requests = 48, max_batch = 16;
  std::int64_t heads = 32, kv_heads = 8, head_dim = 128, block_size = 16, num_blocks = 0, chunk = 256;
  std::int64_t prompt_min = 32, prompt_max = 1024, gen_min = 16, gen_max = 256;
  std::string kv_dtype = "bf16", json;
  std::uint64_t seed = 1;
};

struct Request {
  std::int64_t prompt, gen, done = 0;
  std::int32_t seq = -1;
};

using clock_type = std::chrono::steady_clock;
double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

void serve(const ServeArgs& a) {
  check::Random rng(a.seed);
  std::deque<Request> pending;
  for (int i = 0; i < a.requests; ++i)
    pending.push_back({rng.range(a.prompt_min, a.prompt_max), rng.range(a.gen_min, a.gen_max)});
  const std::int64_t max_len = a.prompt_max + a.gen_max;
  // Default pool: room for half of max_batch requests at their longest, so admission waits on
  // blocks as well as on batch slots and freed blocks are reused.
  const std::int64_t per_seq_blocks = (max_len + a.block_size - 1) / a.block_size;
  const std::int64_t num_blocks =
      a.num_blocks > 0 ? a.num_blocks
                       : std::max<std::int64_t>(per_seq_blocks, per_seq_blocks * a.max_batch / 2);
  DecodeEngine engine({.kv_heads = a.kv_heads,
                       .head_dim = a.head_dim,
                       .dtype = parse_cache_dtype(a.kv_dtype, "--kv-dtype"),
                       .max_seqs = a.max_batch,
                       .max_seq_len = max_len,
                       .block_size = a.block_size,
                       .num_blocks = num_blocks},
                      a.heads);
  // A request admitted only when the pool holds its whole length: one longer than the pool would
  // wait forever (this loop once spun at 100 % CPU on --num-blocks 1).
  for (const Request& r : pending) {
    const std::int64_t need = engine.blocks_for(r.prompt + r.gen);
    if (need > num_blocks)
      throw CapacityExceeded("--num-blocks",
                             fmt::format("demo serve: a request of {} + {} tokens needs {} blocks of {}, the "
                                         "pool has {}; expected --num-blocks >= {} or shorter requests",
                                         r.prompt, r.gen, need, a.block_size, num_blocks, need));
  }
  // Token vectors come from one random pool (their values do not change the work).
  const std::int64_t qrow = a.heads * a.head_dim, kvrow = a.kv_heads * a.head_dim;
  const std::vector<float> pool = check::normal_vector(
      std::size_t(std::max(a.prompt_max, std::int64_t(a.max_batch)) * qrow * 2), a.seed + 1);
  std::vector<float> out(std::size_t(std::max(a.prompt_max, std::int64_t(a.max_batch)) * qrow));
  auto rows = [&](std::int64_t n, std::int64_t width, std::int64_t salt) {
    const std::int64_t room = std::int64_t(pool.size()) - n * width;
    return const_cast<float*>(pool.data()) + (salt * 7919) % (room + 1);
  };

  std::vector<Request> active;  // in engine.active() order
  std::int64_t reserved = 0, steps = 0, generated = 0, prefilled = 0, batch_sum = 0, peak_blocks = 0,
               handed_out = 0, finished = 0;
  double prefill_s = 0, decode_s = 0, occupancy_sum = 0, fill_sum = 0;
  const auto start = clock_type::now();
  while (!pending.empty() || !active.empty()) {
    // Admit while a batch slot and the blocks for the whole request (prompt + generation) are free.
    while (!pending.empty() && std::int64_t(active.size()) < a.max_batch) {
      Request r = pending.front();
      const std::int64_t need = engine.blocks_for(r.prompt + r.gen);
      if (reserved + need > num_blocks) break;
      const float* q = rows(r.prompt, qrow, finished + std::int64_t(active.size()));
      const float* k = rows(r.prompt, kvrow, 3 + std::int64_t(pending.size()));
      const float* v = rows(r.prompt, kvrow, 5 + std::int64_t(pending.size()));
      const std::int64_t free_before = engine.cache().free_blocks();
      const auto t0 = clock_type::now();
      r.seq = engine.admit(
          Tensor::contiguous(const_cast<float*>(q), DType::f32, {r.prompt, a.heads, a.head_dim}),
          Tensor::contiguous(const_cast<float*>(k), DType::f32, {r.prompt, a.kv_heads, a.head_dim}),
          Tensor::contiguous(const_cast<float*>(v), DType::f32, {r.prompt, a.kv_heads, a.head_dim}),
          Tensor::contiguous(out.data(), DType::f32, {r.prompt, a.heads, a.head_dim}), a.chunk);
      prefill_s += seconds_since(t0);
      handed_out += free_before - engine.cache().free_blocks();
      prefilled += r.prompt;
      reserved += need;
      active.push_back(r);
      pending.pop_front();
    }
    // One decode step for every active sequence.
    const std::int64_t A = std::int64_t(active.size());
    const std::int64_t free_before = engine.cache().free_blocks();
    const auto t0 = clock_type::now();
    engine.step(Tensor::bshd(rows(A, qrow, steps), DType::f32, A, 1, a.heads, a.head_dim),
                Tensor::bshd(rows(A, kvrow, steps + 1), DType::f32, A, 1, a.kv_heads, a.head_dim),
                Tensor::bshd(rows(A, kvrow, steps + 2), DType::f32, A, 1, a.kv_heads, a.head_dim),
                Tensor::bshd(out.data(), DType::f32, A, 1, a.heads, a.head_dim));
    decode_s += seconds_since(t0);
    handed_out += free_before - engine.cache().free_blocks();
    ++steps;
    generated += A;
    batch_sum += A;
    const std::int64_t used = num_blocks - engine.cache().free_blocks();
    peak_blocks = std::max(peak_blocks, used);
    occupancy_sum += double(used) / double(num_blocks);
    std::int64_t tokens = 0;
    for (const Request& r : active) tokens += r.prompt + r.done + 1;
    fill_sum += double(tokens) / double(std::max<std::int64_t>(1, used * a.block_size));
    // Retire the finished ones; their blocks go back to the pool.
    for (std::size_t i = 0; i < active.size();) {
      if (++active[i].done == active[i].gen) {
        engine.retire(active[i].seq);
        reserved -= engine.blocks_for(active[i].prompt + active[i].gen);
        active.erase(active.begin() + std::ptrdiff_t(i));
        ++finished;
      } else {
        ++i;
      }
    }
  }
  const double wall = seconds_since(start);

  fmt::print(
      "## Continuous batching: {} requests, max batch {}, {}/{} heads of {}, {} paged cache ({} blocks of "
      "{}) "
      "({}, {} threads)\n\n",
      a.requests, a.max_batch, a.heads, a.kv_heads, a.head_dim, a.kv_dtype, num_blocks, a.block_size,
      to_string(active_isa()), num_threads());
  Table t({"metric", "value"});
  t.add({"decode steps", std::to_string(steps)});
  t.add({"tokens generated (decode)", std::to_string(generated)});
  t.add({"decode attention tokens/s", fmt::format("{:.0f}", double(generated) / decode_s)});
  t.add({"mean batch per step", fmt::format("{:.2f}", double(batch_sum) / double(steps))});
  t.add({"mean step time (ms)", fmt::format("{:.3f}", 1e3 * decode_s / double(steps))});
  t.add({"prompt tokens prefilled", std::to_string(prefilled)});
  t.add({"prefill attention tokens/s", fmt::format("{:.0f}", double(prefilled) / prefill_s)});
  t.add(
      {"mean cache occupancy (blocks in use)", fmt::format("{:.1f}%", 100 * occupancy_sum / double(steps))});
  t.add({"peak cache occupancy",
         fmt::format("{:.1f}% ({} of {} blocks)", 100.0 * double(peak_blocks) / double(num_blocks),
                     peak_blocks, num_blocks)});
  t.add({"mean fill of used blocks (tokens / capacity)",
         fmt::format("{:.1f}%", 100 * fill_sum / double(steps))});
  t.add({"blocks handed out (reuse: above the pool size)",
         fmt::format("{} ({:.2f}× the pool)", handed_out, double(handed_out) / double(num_blocks))});
  t.add({"wall time (s), including input generation", fmt::format("{:.2f}", wall)});
  t.print();
  fmt::print(
      "\nEvery request is admitted when a batch slot and the blocks for its prompt plus its whole generation "
      "are "
      "free, prefilled in chunks of {} tokens, stepped with the others, and retired when done.\n",
      a.chunk);
  if (!a.json.empty()) {
    const nlohmann::json j = {{"demo", "serve"},
                              {"requests", a.requests},
                              {"max_batch", a.max_batch},
                              {"hq", a.heads},
                              {"hkv", a.kv_heads},
                              {"d", a.head_dim},
                              {"kv_dtype", a.kv_dtype},
                              {"block_size", a.block_size},
                              {"num_blocks", num_blocks},
                              {"isa", to_string(active_isa())},
                              {"threads", num_threads()},
                              {"steps", steps},
                              {"tokens_generated", generated},
                              {"decode_tokens_per_s", double(generated) / decode_s},
                              {"prefill_tokens", prefilled},
                              {"prefill_tokens_per_s", double(prefilled) / prefill_s},
                              {"mean_batch", double(batch_sum) / double(steps)},
                              {"mean_occupancy", occupancy_sum / double(steps)},
                              {"peak_occupancy", double(peak_blocks) / double(num_blocks)},
                              {"blocks_handed_out", handed_out},
                              {"finished", finished}};
    write_json_file(a.json, j.dump(2));
  }
}

}  // namespace

void add_demo_serve(CLI::App& demo) {
  auto a = std::make_shared<ServeArgs>();
  CLI::App* cmd =
      demo.add_subcommand("serve", "Continuous batching of synthetic requests over a paged KV cache");
  cmd->add_option("--requests", a->requests, "Requests to serve")->check(CLI::Range(1, 1000000));
  cmd->add_option("--max-batch", a->max_batch, "Sequences stepped together at most")
      ->check(CLI::Range(1, 4096));
  cmd->add_option("--heads", a->heads, "Query heads")->check(CLI::Range(1, 1024));
  cmd->add_option("--kv-heads", a->kv_heads, "KV heads (divides --heads)")->check(CLI::Range(1, 1024));
  cmd->add_option("--head-dim", a->head_dim, "Head dim")->check(CLI::Range(1, 256));
  cmd->add_option("--kv-dtype", a->kv_dtype, "Cache dtype: f32, f16, bf16 or int8");
  cmd->add_option("--block-size", a->block_size, "Tokens per cache block (power of two)")
      ->check(CLI::Range(1, 1 << 16));
  cmd->add_option("--num-blocks", a->num_blocks,
                  "Blocks in the pool (default: half of max-batch longest requests)")
      ->check(CLI::Range(0, 1 << 30));
  cmd->add_option("--chunk", a->chunk, "Prefill chunk in tokens")->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--prompt-min", a->prompt_min, "Shortest prompt")->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--prompt-max", a->prompt_max, "Longest prompt")->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--gen-min", a->gen_min, "Fewest generated tokens")->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--gen-max", a->gen_max, "Most generated tokens")->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--seed", a->seed, "Seed of the request lengths and token vectors");
  cmd->add_option("--json", a->json, "Write the results as JSON to this file");
  cmd->callback([a] {
    if (a->prompt_min > a->prompt_max || a->gen_min > a->gen_max)
      throw InvalidArgument("--prompt-min",
                            "demo serve: the minimum lengths must not exceed the maximum ones");
    serve(*a);
  });
}

}  // namespace mha::cli
