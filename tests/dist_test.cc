// mha::dist under mpirun (ctest runs it with P = 1, 2, 3, 4 ranks): the rank-ordered all-reduce,
// the sharded layer against the single-process layer and the float64 oracle, the sharded decoder
// against the single-process one and against the layer, bitwise agreement across ranks and runs,
// and every error class, which must reach every rank and never hang.
//
// Every test is collective: all ranks run the same tests in the same order. Only rank 0 prints.
#include <gtest/gtest.h>
#include <mpi.h>

#include <chrono>
#include <map>
#include <cmath>
#include <cstring>
#include <thread>

#include "check/compare.h"
#include "check/random.h"
#include "mha/dist.h"
#include "mha/reference.h"
#include "mha/runtime.h"

namespace mha::dist {
namespace {

using namespace std::chrono_literals;

int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
int world_size() {
  int p = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &p);
  return p;
}

// A short timeout, so a test that leaves a rank behind fails instead of hanging the suite.
constexpr auto kTimeout = 30s;

std::uint64_t bits_hash(std::span<const float> x) {
  std::uint64_t h = 1469598103934665603ull;
  for (float f : x) {
    std::uint32_t u;
    std::memcpy(&u, &f, 4);
    h = (h ^ u) * 1099511628211ull;
  }
  return h;
}

std::vector<float> random_vec(std::int64_t n, std::uint64_t seed, float scale = 1.0f) {
  check::Random rng(seed);
  std::vector<float> v(static_cast<std::size_t>(n));
  for (float& x : v) x = scale * float(rng.normal());
  return v;
}

// ---- head shards ------------------------------------------------------------------------------

TEST(ShardHeads, SplitsQueryAndKvHeadsOrReplicates) {
  HeadShard s = shard_heads(12, 4, 1, 2);
  EXPECT_EQ(s.q0, 6);
  EXPECT_EQ(s.nq, 6);
  EXPECT_EQ(s.kv0, 2);
  EXPECT_EQ(s.nkv, 2);
  EXPECT_FALSE(s.kv_replicated);
  // Hkv = 2 < P = 4: ranks 0, 1 hold KV head 0, ranks 2, 3 KV head 1; their query heads read it.
  for (int r = 0; r < 4; ++r) {
    s = shard_heads(12, 2, r, 4);
    EXPECT_EQ(s.nkv, 1);
    EXPECT_EQ(s.kv0, r / 2);
    EXPECT_TRUE(s.kv_replicated);
    EXPECT_EQ(s.q0 / (12 / 2), s.kv0);
    EXPECT_EQ((s.q0 + s.nq - 1) / (12 / 2), s.kv0);
  }
  EXPECT_EQ(shard_heads(8, 1, 3, 4).kv0, 0);  // MQA: every rank a replica
}

TEST(ShardHeads, RefusesSplitsThatDoNotDivide) {
  try {
    shard_heads(12, 12, 0, 5);
    FAIL() << "no error";
  } catch (const InvalidArgument& e) {
    EXPECT_EQ(e.argument(), "heads");
    EXPECT_NE(std::string(e.what()).find("heads = 12 over 5 ranks"), std::string::npos) << e.what();
  }
  try {
    shard_heads(12, 3, 0, 2);
    FAIL() << "no error";
  } catch (const InvalidArgument& e) {
    EXPECT_EQ(e.argument(), "kv_heads");
    EXPECT_NE(std::string(e.what()).find("kv_heads = 3 over 2 ranks"), std::string::npos) << e.what();
  }
  EXPECT_THROW(shard_heads(12, 6, 0, 4), InvalidArgument);  // 6 is neither a multiple of 4 nor divides it
}

// ---- communicator -----------------------------------------------------------------------------

TEST(Communicator, AllReduceSumsInRankOrderWithTheSameBitsOnEveryRank) {
  Communicator comm(MPI_COMM_WORLD, kTimeout);
  const int P = comm.size();
  for (std::int64_t n : {std::int64_t(0), std::int64_t(1), std::int64_t(P + 1), std::int64_t(100003)}) {
    // Values of very different magnitudes per rank, so the summation order shows in the bits.
    auto part = [&](int r) { return random_vec(n, 100 + std::uint64_t(r), std::pow(10.0f, float(r % 4) * 3)); };
    std::vector<float> data = part(comm.rank());
    comm.allreduce_sum(data);
    std::vector<float> want = part(0);
    for (int r = 1; r < P; ++r) {
      const std::vector<float> p = part(r);
      for (std::size_t i = 0; i < want.size(); ++i) want[i] += p[i];
    }
    ASSERT_EQ(data.size(), want.size());
    EXPECT_TRUE(n == 0 || std::memcmp(data.data(), want.data(), data.size() * sizeof(float)) == 0) << "n = " << n;
    const std::vector<std::uint64_t> hashes = comm.allgather(bits_hash(data));
    for (std::uint64_t h : hashes) EXPECT_EQ(h, hashes[0]);
  }
  EXPECT_GE(comm.comm_seconds(), 0.0);
}

TEST(Communicator, BroadcastAndRequireSame) {
  Communicator comm(MPI_COMM_WORLD, kTimeout);
  std::vector<std::byte> bytes(37, std::byte(comm.rank()));
  if (comm.rank() == 0)
    for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = std::byte(i * 7);
  comm.broadcast(bytes);
  for (std::size_t i = 0; i < bytes.size(); ++i) EXPECT_EQ(bytes[i], std::byte(i * 7));
  EXPECT_NO_THROW(comm.require_same(42, "x", "value"));
  if (comm.size() > 1) {
    try {
      comm.require_same(comm.rank() == comm.size() - 1 ? 7 : 42, "x", "value");
      FAIL() << "no error on rank " << comm.rank();
    } catch (const InvalidArgument& e) {  // on every rank, naming the rank that differs
      EXPECT_EQ(e.argument(), "x");
      EXPECT_NE(std::string(e.what()).find("rank " + std::to_string(comm.size() - 1) + "'s value differs"),
                std::string::npos)
          << e.what();
    }
  }
}

TEST(Communicator, RefusesNullCommAndBadTimeout) {
  try {
    Communicator comm(MPI_COMM_NULL);
    FAIL() << "no error";
  } catch (const InvalidArgument& e) {
    EXPECT_EQ(e.argument(), "comm");
  }
  EXPECT_THROW(Communicator(MPI_COMM_WORLD, 0ms), InvalidArgument);
}

// A rank that does not arrive: the waiting ranks get CommError after the timeout, not a hang. The
// late rank then joins, so MPI can drain the collective before MPI_Finalize.
TEST(Communicator, MissingRankIsATimeoutErrorNotAHang) {
  if (world_size() < 2) GTEST_SKIP() << "needs two ranks";
  Communicator comm(MPI_COMM_WORLD, 400ms);
  const bool late = comm.rank() == comm.size() - 1;
  std::vector<float> data(1000, 1.0f);
  if (late) {
    std::this_thread::sleep_for(1500ms);
    try {
      comm.allreduce_sum(data);  // completes or times out, depending on how far the others got
    } catch (const CommError&) {
    }
  } else {
    const auto start = std::chrono::steady_clock::now();
    try {
      comm.allreduce_sum(data);
      FAIL() << "no error on rank " << comm.rank();
    } catch (const CommError& e) {
      EXPECT_EQ(e.argument(), "comm");
      EXPECT_NE(std::string(e.what()).find("waited 400 ms for the other ranks"), std::string::npos) << e.what();
    }
    EXPECT_LT(std::chrono::steady_clock::now() - start, 1400ms);
    EXPECT_THROW(comm.allreduce_sum(data), CommError);  // broken from now on
  }
  MPI_Barrier(MPI_COMM_WORLD);  // the late rank has joined: everything is drained
}

// ---- the sharded layer ------------------------------------------------------------------------

struct LayerCase {
  const char* name;
  std::int64_t kv_heads;
  bool causal, rope, padding, head_mask;
};

// Head counts that split over every P of the suite (12 = lcm(1..4)): MHA, GQA with Hkv a multiple
// of P, and Hkv < P (replicated KV heads), including MQA.
std::vector<LayerCase> layer_cases(int P) {
  std::vector<LayerCase> cases = {
      {"mha", 12, false, false, true, false},
      {"mha_causal_rope", 12, true, true, false, false},
      {"mqa", 1, true, false, false, true},
  };
  cases.push_back({"gqa", P == 3 ? 6 : 4, false, false, false, true});
  if (P == 4) cases.push_back({"gqa_replicated", 2, true, false, true, false});
  if (P == 3 || P == 2) cases.push_back({"gqa_replicated", 1, false, true, true, false});
  return cases;
}

TEST(TensorParallelAttention, EqualsTheSingleProcessLayerWithinTheBar) {
  Communicator comm(MPI_COMM_WORLD, kTimeout);
  const std::int64_t batch = 2, seq = 37, hidden = 96, heads = 12;
  for (const LayerCase& lc : layer_cases(comm.size())) {
    MultiHeadAttentionConfig config{.hidden = hidden, .heads = heads, .kv_heads = lc.kv_heads, .head_dim = 16,
                                    .causal = lc.causal};
    if (lc.rope) config.rope = RopeConfig{.max_positions = 128};
    const MultiHeadAttentionWeights w = MultiHeadAttentionWeights::random(config, 5);
    const std::vector<float> x = random_vec(batch * seq * hidden, 9);
    const Tensor tx = Tensor::contiguous(const_cast<float*>(x.data()), DType::f32, {batch, seq, hidden});
    std::vector<float> mask;
    Tensor tmask;
    if (lc.padding) {  // [batch, 1, 1, seq]: the second entry's last 10 keys are padding
      mask.assign(std::size_t(batch * seq), 0.0f);
      for (std::int64_t j = seq - 10; j < seq; ++j) mask[std::size_t(seq + j)] = -INFINITY;
      tmask = Tensor::contiguous(mask.data(), DType::f32, {batch, 1, 1, seq});
    } else if (lc.head_mask) {  // [1, heads, seq, seq]: a per-head bias, sliced by each rank
      mask = random_vec(heads * seq * seq, 13);
      tmask = Tensor::contiguous(mask.data(), DType::f32, {1, heads, seq, seq});
    }
    const Tensor* pmask = mask.empty() ? nullptr : &tmask;
    const std::vector<std::int32_t> positions = {0, 5};
    const std::span<const std::int32_t> pos = lc.rope ? std::span<const std::int32_t>(positions) : std::span<const std::int32_t>{};

    TensorParallelAttention tp(comm, config, w);
    std::vector<float> out(x.size()), again(x.size());
    const Tensor tout = Tensor::contiguous(out.data(), DType::f32, {batch, seq, hidden});
    tp.forward(tx, tout, pmask, pos);
    tp.forward(tx, Tensor::contiguous(again.data(), DType::f32, {batch, seq, hidden}), pmask, pos);
    EXPECT_EQ(std::memcmp(out.data(), again.data(), out.size() * sizeof(float)), 0) << lc.name << ": run to run";
    const std::vector<std::uint64_t> hashes = comm.allgather(bits_hash(out));
    for (std::uint64_t h : hashes) EXPECT_EQ(h, hashes[0]) << lc.name << ": rank to rank";

    // The single-process layer, its naive path and the float64 oracle.
    MultiHeadAttention single(config, w);
    std::vector<float> ref(x.size()), naive(x.size());
    single.forward(tx, Tensor::contiguous(ref.data(), DType::f32, {batch, seq, hidden}), pmask, pos);
    single.forward_naive(tx, Tensor::contiguous(naive.data(), DType::f32, {batch, seq, hidden}), pmask, pos);
    const std::vector<double> oracle = reference::multi_head_attention_f64(config, w, x.data(), batch, seq, pmask, pos);
    const check::Agreement vs_single = check::compare(std::span<const float>(out), std::span<const float>(ref));
    const check::Agreement tp_err = check::compare(std::span<const float>(out), oracle);
    const check::Agreement naive_err = check::compare(std::span<const float>(naive), oracle);
    EXPECT_GE(vs_single.pcc, 0.99999) << lc.name;
    const double floor = 0x1p-23 * (tp_err.max_ref + 0.3);
    EXPECT_LE(tp_err.max_err, 2 * naive_err.max_err + floor)
        << lc.name << ": tp " << tp_err.max_err << " naive " << naive_err.max_err;
  }
}

TEST(TensorParallelAttention, SameBitsForAnyThreadCount) {
  Communicator comm(MPI_COMM_WORLD, kTimeout);
  const MultiHeadAttentionConfig config{.hidden = 64, .heads = 12, .kv_heads = 12, .head_dim = 8};
  TensorParallelAttention tp(comm, config, MultiHeadAttentionWeights::random(config, 3));
  const std::vector<float> x = random_vec(3 * 50 * 64, 4);
  const Tensor tx = Tensor::contiguous(const_cast<float*>(x.data()), DType::f32, {3, 50, 64});
  std::vector<std::uint64_t> seen;
  const int threads_before = num_threads();
  for (int threads : {1, 2, 3}) {
    set_num_threads(threads);
    std::vector<float> out(x.size());
    tp.forward(tx, Tensor::contiguous(out.data(), DType::f32, {3, 50, 64}));
    seen.push_back(bits_hash(out));
  }
  set_num_threads(threads_before);
  EXPECT_EQ(seen[0], seen[1]);
  EXPECT_EQ(seen[0], seen[2]);
}

TEST(TensorParallelAttention, DifferentWeightsOrConfigFailOnEveryRank) {
  if (world_size() < 2) GTEST_SKIP() << "needs two ranks";
  Communicator comm(MPI_COMM_WORLD, kTimeout);
  MultiHeadAttentionConfig config{.hidden = 48, .heads = 12, .kv_heads = 12, .head_dim = 4};
  MultiHeadAttentionWeights w = MultiHeadAttentionWeights::random(config, 1);
  const bool odd_one = comm.rank() == comm.size() - 1;
  if (odd_one) w.w_out[17] += 1e-6f;
  try {
    TensorParallelAttention tp(comm, config, w);
    FAIL() << "no error on rank " << comm.rank();
  } catch (const InvalidArgument& e) {
    EXPECT_EQ(e.argument(), "weights") << e.what();
  }
  w = MultiHeadAttentionWeights::random(config, 1);
  config.causal = odd_one;
  try {
    TensorParallelAttention tp(comm, config, w);
    FAIL() << "no error on rank " << comm.rank();
  } catch (const InvalidArgument& e) {
    EXPECT_EQ(e.argument(), "config") << e.what();
  }
}

TEST(TensorParallelAttention, HeadsThatDoNotSplitFailOnEveryRank) {
  Communicator comm(MPI_COMM_WORLD, kTimeout);
  const int P = comm.size();
  if (P < 2) GTEST_SKIP() << "every head count splits over one rank";
  const MultiHeadAttentionConfig bad_heads{.hidden = 8 * (P + 1), .heads = P + 1, .kv_heads = 1};
  EXPECT_THROW(TensorParallelAttention(comm, bad_heads, MultiHeadAttentionWeights::random(bad_heads, 1)),
               InvalidArgument);
  const MultiHeadAttentionConfig bad_kv{.hidden = 96, .heads = 12, .kv_heads = P == 3 ? 2 : 3, .head_dim = 8};
  try {
    TensorParallelAttention tp(comm, bad_kv, MultiHeadAttentionWeights::random(bad_kv, 1));
    FAIL() << "no error";
  } catch (const InvalidArgument& e) {
    EXPECT_EQ(e.argument(), "kv_heads");
  }
  // A bad x is refused on every rank before anything is sent (the next collective still works).
  const MultiHeadAttentionConfig ok{.hidden = 24, .heads = 12, .kv_heads = 12, .head_dim = 2};
  TensorParallelAttention tp(comm, ok, MultiHeadAttentionWeights::random(ok, 1));
  std::vector<float> x(2 * 3 * 25), out(2 * 3 * 24);
  try {
    tp.forward(Tensor::contiguous(x.data(), DType::f32, {2, 3, 25}), Tensor::contiguous(out.data(), DType::f32, {2, 3, 24}));
    FAIL() << "no error";
  } catch (const InvalidArgument& e) {
    EXPECT_EQ(e.argument(), "x");
  }
  EXPECT_NO_THROW(tp.forward(Tensor::contiguous(x.data(), DType::f32, {2, 3, 24}),
                             Tensor::contiguous(out.data(), DType::f32, {2, 3, 24})));
}

// ---- the sharded decoder ----------------------------------------------------------------------

// A seeded stream of admissions, steps and retirements, run by a decoder on `comm`: every output
// row in order, tagged with the admission it belongs to, and each admission's x rows.
struct Stream {
  std::vector<std::vector<float>> outputs;  // one [rows, hidden] per operation
  std::vector<int> tags;                    // per output row: the admission (sequence ids are reused)
  std::vector<std::vector<float>> history;  // per admission: its x rows so far
};

Stream run_stream(Communicator& comm, const MultiHeadAttentionConfig& config, const MultiHeadAttentionWeights& w,
                  const KvCacheConfig& cache) {
  TensorParallelDecoder dec(comm, config, w, cache);
  check::Random rng(77);
  Stream s;
  std::map<std::int32_t, int> admission;  // active sequence -> its admission
  const std::int64_t hidden = config.hidden;
  auto record = [&](int adm, const float* row) {
    s.tags.push_back(adm);
    s.history[std::size_t(adm)].insert(s.history[std::size_t(adm)].end(), row, row + hidden);
  };
  for (int round = 0; round < 14; ++round) {
    if (dec.active().size() < 3 && round < 10) {  // admit a prompt of 1..40 tokens, in chunks of 16
      const std::int64_t n = rng.range(1, 40);
      const std::vector<float> x = random_vec(n * hidden, 1000 + std::uint64_t(round));
      std::vector<float> out(x.size());
      const std::int32_t seq = dec.admit(Tensor::contiguous(const_cast<float*>(x.data()), DType::f32, {n, hidden}),
                                         Tensor::contiguous(out.data(), DType::f32, {n, hidden}), 16);
      admission[seq] = int(s.history.size());
      s.history.emplace_back();
      for (std::int64_t i = 0; i < n; ++i) record(admission[seq], x.data() + i * hidden);
      s.outputs.push_back(std::move(out));
    }
    const auto A = std::int64_t(dec.active().size());
    const std::vector<float> x = random_vec(A * hidden, 2000 + std::uint64_t(round));
    std::vector<float> out(x.size());
    dec.step(Tensor::contiguous(const_cast<float*>(x.data()), DType::f32, {A, hidden}),
             Tensor::contiguous(out.data(), DType::f32, {A, hidden}));
    for (std::int64_t a = 0; a < A; ++a) record(admission[dec.active()[std::size_t(a)]], x.data() + a * hidden);
    s.outputs.push_back(std::move(out));
    if (round % 4 == 3) dec.retire(dec.active()[std::size_t(rng.range(0, A - 1))]);
  }
  return s;
}

std::vector<float> flat(const Stream& s) {
  std::vector<float> all;
  for (const auto& o : s.outputs) all.insert(all.end(), o.begin(), o.end());
  return all;
}

TEST(TensorParallelDecoder, EqualsTheSingleProcessDecoderAndTheLayer) {
  Communicator comm(MPI_COMM_WORLD, kTimeout);
  Communicator self(MPI_COMM_SELF, kTimeout);
  for (const LayerCase& lc : layer_cases(comm.size())) {
    MultiHeadAttentionConfig config{.hidden = 96, .heads = 12, .kv_heads = lc.kv_heads, .head_dim = 16};
    if (lc.rope) config.rope = RopeConfig{.max_positions = 512};
    const MultiHeadAttentionWeights w = MultiHeadAttentionWeights::random(config, 21);
    const KvCacheConfig cache{.kv_heads = lc.kv_heads, .head_dim = 16, .dtype = CacheDType::f32, .max_seqs = 4,
                              .max_seq_len = 128, .block_size = 16};
    const Stream sharded = run_stream(comm, config, w, cache);
    const Stream single = run_stream(self, config, w, cache);
    const std::vector<float> a = flat(sharded), b = flat(single);
    ASSERT_EQ(a.size(), b.size()) << lc.name;
    const check::Agreement agree = check::compare(std::span<const float>(a), std::span<const float>(b));
    EXPECT_GE(agree.pcc, 0.99999) << lc.name;
    EXPECT_LE(agree.max_err, 1e-5 * (agree.max_ref + 1)) << lc.name;
    const std::vector<std::uint64_t> hashes = comm.allgather(bits_hash(a));
    for (std::uint64_t h : hashes) EXPECT_EQ(h, hashes[0]) << lc.name << ": rank to rank";

    // Output row t of an admission is row t of the causal layer over that admission's tokens.
    config.causal = true;
    MultiHeadAttention layer(config, w);
    std::vector<std::vector<float>> ref;
    for (const std::vector<float>& tokens : single.history) {
      const auto n = std::int64_t(tokens.size()) / 96;
      ref.emplace_back(tokens.size());
      layer.forward(Tensor::contiguous(const_cast<float*>(tokens.data()), DType::f32, {1, n, 96}),
                    Tensor::contiguous(ref.back().data(), DType::f32, {1, n, 96}));
    }
    std::vector<std::size_t> next(ref.size(), 0);
    double worst = 0, scale = 0;
    for (std::size_t r = 0; r < sharded.tags.size(); ++r) {
      const auto adm = std::size_t(sharded.tags[r]);
      const float* want = ref[adm].data() + next[adm]++ * 96;
      for (std::size_t c = 0; c < 96; ++c) {
        worst = std::max(worst, double(std::fabs(a[r * 96 + c] - want[c])));
        scale = std::max(scale, double(std::fabs(want[c])));
      }
    }
    EXPECT_GT(scale, 0) << lc.name;
    EXPECT_LE(worst, 1e-5 * (scale + 1)) << lc.name;
  }
}

TEST(TensorParallelDecoder, DisagreeingRanksAndFullCachesFailOnEveryRank) {
  Communicator comm(MPI_COMM_WORLD, kTimeout);
  const MultiHeadAttentionConfig config{.hidden = 48, .heads = 12, .kv_heads = 12, .head_dim = 4};
  const MultiHeadAttentionWeights w = MultiHeadAttentionWeights::random(config, 8);
  const KvCacheConfig cache{.kv_heads = 12, .head_dim = 4, .dtype = CacheDType::bf16, .max_seqs = 2,
                            .max_seq_len = 32, .block_size = 8, .num_blocks = 5};
  TensorParallelDecoder dec(comm, config, w, cache);
  std::vector<float> x(40 * 48), out(40 * 48);
  auto admit = [&](std::int64_t n) {
    return dec.admit(Tensor::contiguous(x.data(), DType::f32, {n, 48}), Tensor::contiguous(out.data(), DType::f32, {n, 48}));
  };
  const std::int32_t seq = admit(20);  // 3 of 5 blocks
  try {
    admit(30);  // 4 more blocks: refused on every rank, nothing changed
    FAIL() << "no error";
  } catch (const CapacityExceeded&) {
  }
  EXPECT_EQ(dec.active().size(), 1u);
  if (comm.size() > 1) {
    try {
      if (comm.rank() == 0) {
        dec.step(Tensor::contiguous(x.data(), DType::f32, {1, 48}), Tensor::contiguous(out.data(), DType::f32, {1, 48}));
      } else {
        dec.retire(seq);
      }
      FAIL() << "no error on rank " << comm.rank();
    } catch (const InvalidArgument& e) {
      EXPECT_EQ(e.argument(), "operation") << e.what();
    }
  }
  // The decoder is still usable after the refused calls.
  EXPECT_NO_THROW(dec.step(Tensor::contiguous(x.data(), DType::f32, {1, 48}), Tensor::contiguous(out.data(), DType::f32, {1, 48})));
  EXPECT_NO_THROW(dec.retire(seq));
  EXPECT_THROW(dec.retire(seq), InvalidArgument);
  const KvCacheConfig wrong{.kv_heads = 6, .head_dim = 4, .max_seq_len = 8};
  EXPECT_THROW(TensorParallelDecoder(comm, config, w, wrong), InvalidArgument);
}

}  // namespace
}  // namespace mha::dist

// gtest under MPI: every rank runs every test; rank 0 prints; the exit status is the worst rank's.
int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  if (mha::dist::world_rank() != 0) {
    ::testing::TestEventListeners& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  mha::set_num_threads(1);  // ranks share the host's cores
  int failed = RUN_ALL_TESTS() != 0 ? 1 : 0, any = 0;
  MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (any && mha::dist::world_rank() == 0 && !failed) std::printf("another rank failed a test\n");
  MPI_Finalize();
  return any;
}
