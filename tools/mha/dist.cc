// mha dist demo: tensor parallelism over MPI ranks (`mpirun -np P mha --threads T dist demo`): the
// BERT layer and a decode step sharded over the ranks, each against the single-process layer or
// decoder (run on rank 0), with per-rank shards, time per call and the communication share of it.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <nlohmann/json.hpp>

#include "check/compare.h"
#include "check/random.h"
#include "commands.h"
#include "mha/dist.h"
#include "mha/runtime.h"
#include "report.h"

namespace mha::cli {

namespace {

struct DistArgs {
  std::int64_t batch = 8, seq = 384, hidden = 1024, heads = 16, kv_heads = 0;
  std::int64_t context = 32768, decode_heads = 32, decode_kv_heads = 8, head_dim = 128, decode_batch = 1;
  int iters = 5;
  double timeout = 120;
  std::string json;
};

// MPI for the command's lifetime (unless the caller's program already runs it).
struct MpiSession {
  bool owned = false;
  MpiSession() {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) {
      MPI_Init(nullptr, nullptr);
      owned = true;
    }
  }
  ~MpiSession() {
    if (owned) MPI_Finalize();
  }
};

std::vector<float> random_vec(std::int64_t n, std::uint64_t seed) {
  check::Random rng(seed);
  std::vector<float> v(static_cast<std::size_t>(n));
  for (float& x : v) x = float(rng.normal());
  return v;
}

Tensor view2(std::vector<float>& v, std::int64_t rows, std::int64_t cols) {
  return Tensor::contiguous(v.data(), DType::f32, {rows, cols});
}

// Medians of the calls' wall and communication seconds.
struct Timing {
  double ms = 0, comm_ms = 0;
  double share() const { return ms > 0 ? comm_ms / ms : 0; }
};
Timing median_timing(std::vector<std::pair<double, double>> calls) {
  std::sort(calls.begin(), calls.end());
  const auto& mid = calls[calls.size() / 2];
  return {mid.first * 1e3, mid.second * 1e3};
}

// Each rank's heads, gathered for rank 0's table.
void print_shards(dist::Communicator& comm, const dist::HeadShard& s, std::int64_t dh, std::int64_t hidden) {
  const std::uint64_t packed = std::uint64_t(s.q0) | std::uint64_t(s.nq) << 16 | std::uint64_t(s.kv0) << 32 |
                               std::uint64_t(s.nkv) << 48;
  const std::vector<std::uint64_t> all = comm.allgather(packed);
  if (comm.rank() != 0) return;
  Table t({"rank", "query heads", "KV heads", "W_qkv rows", "W_out columns"});
  for (std::size_t r = 0; r < all.size(); ++r) {
    const std::uint64_t q0 = all[r] & 0xFFFF, nq = all[r] >> 16 & 0xFFFF, kv0 = all[r] >> 32 & 0xFFFF,
                        nkv = all[r] >> 48;
    t.add({std::to_string(r), fmt::format("[{}, {})", q0, q0 + nq),
           fmt::format("[{}, {}){}", kv0, kv0 + nkv, s.kv_replicated ? " (replica)" : ""),
           fmt::format("{} × {}", (nq + 2 * nkv) * std::uint64_t(dh), hidden),
           fmt::format("{} × {}", hidden, nq * std::uint64_t(dh))});
  }
  t.print();
}

nlohmann::json run_layer(dist::Communicator& comm, const DistArgs& a) {
  const MultiHeadAttentionConfig config{.hidden = a.hidden, .heads = a.heads, .kv_heads = a.kv_heads};
  const MultiHeadAttentionWeights w = MultiHeadAttentionWeights::random(config, 11);
  std::vector<float> x = random_vec(a.batch * a.seq * a.hidden, 12), out(x.size());
  const Tensor tx = Tensor::contiguous(x.data(), DType::f32, {a.batch, a.seq, a.hidden});
  const Tensor tout = Tensor::contiguous(out.data(), DType::f32, {a.batch, a.seq, a.hidden});
  dist::TensorParallelAttention tp(comm, config, w);
  if (comm.rank() == 0)
    fmt::print("\n## BERT layer: batch {}, seq {}, hidden {}, {}/{} heads over {} ranks × {} threads\n\n", a.batch,
               a.seq, a.hidden, tp.config().heads, tp.config().kv_heads, comm.size(), num_threads());
  print_shards(comm, tp.shard(), tp.config().head_dim, a.hidden);
  tp.forward(tx, tout);  // warm-up: plans, pages, connections
  std::vector<std::pair<double, double>> calls;
  for (int i = 0; i < a.iters; ++i) {
    tp.forward(tx, tout);
    calls.emplace_back(tp.last_seconds(), tp.last_comm_seconds());
  }
  const Timing t = median_timing(calls);
  nlohmann::json j = {{"batch", a.batch}, {"seq", a.seq}, {"hidden", a.hidden}, {"heads", tp.config().heads},
                      {"kv_heads", tp.config().kv_heads}, {"ms", t.ms}, {"comm_ms", t.comm_ms},
                      {"comm_share", t.share()}};
  if (comm.rank() == 0) {  // the single-process layer, on this rank's threads
    MultiHeadAttention single(config, w);
    std::vector<float> ref(x.size());
    single.forward(tx, Tensor::contiguous(ref.data(), DType::f32, {a.batch, a.seq, a.hidden}));
    const check::Agreement ag = check::compare(std::span<const float>(out), std::span<const float>(ref));
    j["pcc"] = ag.pcc;
    j["max_err"] = ag.max_err;
    const double flops = 2.0 * double(a.batch * a.seq) * double(a.hidden) *
                             double((tp.config().heads * 2 + 2 * tp.config().kv_heads) * tp.config().head_dim) +
                         4.0 * double(a.batch * tp.config().heads) * double(a.seq * a.seq) * double(tp.config().head_dim);
    j["gflops"] = flops / (t.ms * 1e6);
    Table tab({"ms per call", "communication ms", "communication share", "GFLOP/s", "PCC vs 1 process",
               "max abs error"});
    tab.add({fmt::format("{:.2f}", t.ms), fmt::format("{:.2f}", t.comm_ms), fmt::format("{:.1f}%", 100 * t.share()),
             fmt::format("{:.1f}", flops / (t.ms * 1e6)), fmt::format("{:.7f}", ag.pcc),
             fmt::format("{:.2e} (max |ref| {:.2f})", ag.max_err, ag.max_ref)});
    fmt::print("\n");
    tab.print();
  }
  return j;
}

nlohmann::json run_decode(dist::Communicator& comm, const DistArgs& a) {
  const MultiHeadAttentionConfig config{.hidden = a.decode_heads * a.head_dim, .heads = a.decode_heads,
                                        .kv_heads = a.decode_kv_heads, .head_dim = a.head_dim, .causal = true};
  const MultiHeadAttentionWeights w = MultiHeadAttentionWeights::random(config, 21);
  const KvCacheConfig cache{.kv_heads = a.decode_kv_heads, .head_dim = a.head_dim, .dtype = CacheDType::bf16,
                            .max_seqs = a.decode_batch, .max_seq_len = a.context + a.iters + 2, .block_size = 16};
  // Every sequence starts from the same cached prefix of `context` tokens (as from a prefill node).
  std::vector<float> k = random_vec(a.context * a.decode_kv_heads * a.head_dim, 22),
                     v = random_vec(a.context * a.decode_kv_heads * a.head_dim, 23);
  const Tensor tk = Tensor::contiguous(k.data(), DType::f32, {a.context, a.decode_kv_heads, a.head_dim});
  const Tensor tv = Tensor::contiguous(v.data(), DType::f32, {a.context, a.decode_kv_heads, a.head_dim});
  auto fill = [&](dist::TensorParallelDecoder& d) {
    for (std::int64_t b = 0; b < a.decode_batch; ++b) d.admit_kv(tk, tv);
  };
  dist::TensorParallelDecoder dec(comm, config, w, cache);
  if (comm.rank() == 0)
    fmt::print("\n## Decode step: {}/{} heads × {}, context {}, batch {}, bf16 cache, over {} ranks × {} threads\n\n",
               a.decode_heads, a.decode_kv_heads, a.head_dim, a.context, a.decode_batch, comm.size(), num_threads());
  print_shards(comm, dec.shard(), a.head_dim, config.hidden);
  fill(dec);
  std::vector<float> x = random_vec(a.decode_batch * config.hidden, 24), out(x.size()), first(x.size());
  dec.step(view2(x, a.decode_batch, config.hidden), view2(first, a.decode_batch, config.hidden));
  std::vector<std::pair<double, double>> calls;
  for (int i = 0; i < a.iters; ++i) {
    dec.step(view2(x, a.decode_batch, config.hidden), view2(out, a.decode_batch, config.hidden));
    calls.emplace_back(dec.last_seconds(), dec.last_comm_seconds());
  }
  const Timing t = median_timing(calls);
  const double cache_mib = double(dec.cache().bytes()) / double(1 << 20);
  nlohmann::json j = {{"heads", a.decode_heads}, {"kv_heads", a.decode_kv_heads}, {"context", a.context},
                      {"batch", a.decode_batch}, {"us", t.ms * 1e3}, {"comm_us", t.comm_ms * 1e3},
                      {"comm_share", t.share()}, {"rank_cache_mib", cache_mib}};
  if (comm.rank() == 0) {  // the same first step by one process holding every head
    dist::Communicator self(MPI_COMM_SELF, comm.timeout());
    dist::TensorParallelDecoder single(self, config, w, cache);
    fill(single);
    std::vector<float> ref(x.size());
    single.step(view2(x, a.decode_batch, config.hidden), view2(ref, a.decode_batch, config.hidden));
    const check::Agreement ag = check::compare(std::span<const float>(first), std::span<const float>(ref));
    j["pcc"] = ag.pcc;
    j["max_err"] = ag.max_err;
    Table tab({"µs per step", "communication µs", "communication share", "cache per rank", "PCC vs 1 process",
               "max abs error"});
    tab.add({fmt::format("{:.0f}", t.ms * 1e3), fmt::format("{:.0f}", t.comm_ms * 1e3),
             fmt::format("{:.1f}%", 100 * t.share()), fmt::format("{:.1f} MiB", cache_mib),
             fmt::format("{:.7f}", ag.pcc), fmt::format("{:.2e} (max |ref| {:.2f})", ag.max_err, ag.max_ref)});
    fmt::print("\n");
    tab.print();
  }
  return j;
}

void run(const DistArgs& a) {
  MpiSession mpi;
  try {
    dist::Communicator comm(MPI_COMM_WORLD, std::chrono::milliseconds(std::int64_t(a.timeout * 1000)));
    if (comm.rank() == 0)
      fmt::print("mha dist demo: tensor parallel over {} MPI rank(s), {} thread(s) each, ISA {}\n", comm.size(),
                 num_threads(), to_string(active_isa()));
    nlohmann::json j = {{"ranks", comm.size()}, {"threads", num_threads()}, {"isa", to_string(active_isa())}};
    j["bert"] = run_layer(comm, a);
    j["decode"] = run_decode(comm, a);
    if (comm.rank() == 0 && !a.json.empty()) write_json_file(a.json, j.dump(2));
    // The sharded results must be the single-process ones up to rounding (rank 0 compared them).
    if (comm.rank() == 0 && (j["bert"]["pcc"].get<double>() < 0.99999 || j["decode"]["pcc"].get<double>() < 0.99999)) {
      fmt::print("\nFAIL: PCC against one process below 0.99999\n");
      throw Failed{};
    }
  } catch (const dist::CommError& e) {
    // The other ranks may be gone or stuck: end the job rather than wait in MPI_Finalize.
    std::fprintf(stderr, "mha: error: %s\n", e.what());
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
}

}  // namespace

void add_dist(CLI::App& app) {
  CLI::App* dist = app.add_subcommand("dist", "Tensor parallel over MPI ranks (run under mpirun)");
  dist->require_subcommand(1);
  auto args = std::make_shared<DistArgs>();
  CLI::App* cmd = dist->add_subcommand(
      "demo", "mpirun -np P mha dist demo: the BERT layer and a decode step sharded over P ranks");
  cmd->add_option("--batch", args->batch, "BERT layer: batch")->check(CLI::Range(1, 4096));
  cmd->add_option("--seq", args->seq, "BERT layer: sequence length")->check(CLI::Range(1, 65536));
  cmd->add_option("--hidden", args->hidden, "BERT layer: hidden size")->check(CLI::Range(1, 65536));
  cmd->add_option("--heads", args->heads, "BERT layer: query heads")->check(CLI::Range(1, 4096));
  cmd->add_option("--kv-heads", args->kv_heads, "BERT layer: KV heads (0: = heads)")->check(CLI::Range(0, 4096));
  cmd->add_option("--context", args->context, "Decode: cached tokens per sequence")->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--decode-heads", args->decode_heads, "Decode: query heads")->check(CLI::Range(1, 4096));
  cmd->add_option("--decode-kv-heads", args->decode_kv_heads, "Decode: KV heads")->check(CLI::Range(1, 4096));
  cmd->add_option("--head-dim", args->head_dim, "Decode: head dim")->check(CLI::Range(1, 256));
  cmd->add_option("--decode-batch", args->decode_batch, "Decode: sequences per step")->check(CLI::Range(1, 256));
  cmd->add_option("--iters", args->iters, "Timed calls of each part (median)")->check(CLI::Range(1, 1000));
  cmd->add_option("--timeout", args->timeout, "Seconds a collective waits for every rank")
      ->check(CLI::Range(0.001, 86400.0));
  cmd->add_option("--json", args->json, "Also write the results as JSON (rank 0)");
  cmd->callback([args] { run(*args); });
}

}  // namespace mha::cli
