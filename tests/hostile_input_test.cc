// What a hostile caller found (issue 12), one test per finding: each failed before its fix. Sizes
// that wrap, views that lie about their rows, windows at the edge of int64, valid empty inputs.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "check/random.h"
#include "mha/attention.h"
#include "mha/decode.h"
#include "mha/errors.h"
#include "mha/kv_cache.h"

namespace mha {
namespace {

using check::normal_vector;
constexpr std::int64_t kI64Max = std::numeric_limits<std::int64_t>::max();

template <class E, class F>
void expect_error(F&& f, const std::string& argument) {
  try {
    f();
    ADD_FAILURE() << "no exception, expected one naming " << argument;
  } catch (const E& e) {
    EXPECT_EQ(e.argument(), argument) << e.what();
  }
}

TEST(Hostile, AdmitChecksQVAndOutAgainstThePromptRows) {
  DecodeEngine engine({.kv_heads = 1,
                       .head_dim = 8,
                       .dtype = CacheDType::f32,
                       .max_seqs = 2,
                       .max_seq_len = 128,
                       .block_size = 16},
                      2);
  std::vector<float> k(100 * 8), v(100 * 8), q(100 * 2 * 8), out(100 * 2 * 8), one(2 * 8, 7.f);
  const Tensor tk = Tensor::contiguous(k.data(), DType::f32, {100, 1, 8});
  const Tensor tv = Tensor::contiguous(v.data(), DType::f32, {100, 1, 8});
  const Tensor tq = Tensor::contiguous(q.data(), DType::f32, {100, 2, 8});
  const Tensor to = Tensor::contiguous(out.data(), DType::f32, {100, 2, 8});
  const Tensor short_q = Tensor::contiguous(one.data(), DType::f32, {1, 2, 8});
  const Tensor short_kv = Tensor::contiguous(one.data(), DType::f32, {1, 1, 8});
  const std::int64_t free_before = engine.cache().free_blocks();
  expect_error<InvalidArgument>([&] { engine.admit(short_q, tk, tv, to); }, "q");
  expect_error<InvalidArgument>([&] { engine.admit(tq, tk, short_kv, to); }, "v");
  expect_error<InvalidArgument>([&] { engine.admit(tq, tk, tv, short_q); }, "out");
  const Tensor wrong_heads = Tensor::contiguous(q.data(), DType::f32, {100, 1, 8});
  expect_error<InvalidArgument>([&] { engine.admit(wrong_heads, tk, tv, to); }, "q");
  expect_error<InvalidArgument>([&] { engine.admit(tq, tk, tv, to, -4); }, "chunk");  // had meant one chunk
  EXPECT_EQ(engine.cache().free_blocks(), free_before);
  EXPECT_TRUE(engine.active().empty());
  for (float x : one) EXPECT_EQ(x, 7.f);  // nothing written
  EXPECT_NO_THROW(engine.admit(tq, tk, tv, to));
}

TEST(Hostile, KvCacheSizesThatWouldWrapAreRefused) {
  expect_error<InvalidArgument>(
      [] {
        KvCache c({.kv_heads = 1,
                   .head_dim = 8,
                   .max_seqs = 1,
                   .max_seq_len = 16,
                   .block_size = std::int64_t(1) << 62,
                   .num_blocks = 1});
      },
      "block_size");
  // 2^20 kv heads × 256 × 2^20 sequences × 2^30 tokens: no product of these fits in memory.
  try {
    KvCache c({.kv_heads = 1 << 20, .head_dim = 256, .max_seqs = 1 << 20, .max_seq_len = 1 << 30});
    ADD_FAILURE() << "a cache of 2^78 bytes was built, bytes() = " << c.bytes();
  } catch (const Error& e) {
    EXPECT_TRUE(dynamic_cast<const OutOfMemory*>(&e) || dynamic_cast<const InvalidArgument*>(&e)) << e.what();
  }
  expect_error<InvalidArgument>(
      [] {
        KvCache c({.kv_heads = 1, .head_dim = 8, .dtype = CacheDType(9), .max_seqs = 1, .max_seq_len = 16});
      },
      "dtype");
}

TEST(Hostile, Int8CacheRefusesNonFiniteValuesAndKeepsItsData) {
  KvCache cache({.kv_heads = 2, .head_dim = 4, .dtype = CacheDType::int8, .max_seqs = 1, .max_seq_len = 8});
  const std::int32_t s = cache.add_sequence();
  std::vector<float> k = normal_vector(2 * 2 * 4, 1), v = normal_vector(2 * 2 * 4, 2);
  cache.fill(s, Tensor::contiguous(k.data(), DType::f32, {2, 2, 4}),
             Tensor::contiguous(v.data(), DType::f32, {2, 2, 4}));
  std::vector<float> before_k(2 * 2 * 4), before_v(2 * 2 * 4);
  cache.read(s, 0, 2, before_k.data(), before_v.data());
  for (float bad : {std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                    std::numeric_limits<float>::quiet_NaN()}) {
    for (int which = 0; which < 2; ++which) {
      std::vector<float> nk = normal_vector(2 * 4, 3), nv = normal_vector(2 * 4, 4);
      (which == 0 ? nk : nv)[5] = bad;
      expect_error<InvalidArgument>(
          [&] {
            cache.append({&s, 1}, Tensor::contiguous(nk.data(), DType::f32, {1, 1, 2, 4}),
                         Tensor::contiguous(nv.data(), DType::f32, {1, 1, 2, 4}));
          },
          which == 0 ? "k" : "v");
    }
  }
  EXPECT_EQ(cache.length(s), 2);
  std::vector<float> after_k(2 * 2 * 4), after_v(2 * 2 * 4);
  cache.read(s, 0, 2, after_k.data(), after_v.data());
  EXPECT_EQ(after_k, before_k);
  EXPECT_EQ(after_v, before_v);
}

TEST(Hostile, TensorFactoriesRefuseShapesWhoseElementCountOverflows) {
  const std::int64_t big = std::int64_t(1) << 40;
  expect_error<InvalidArgument>([&] { Tensor::contiguous(nullptr, DType::f32, {big, big, 1}); }, "shape");
  expect_error<InvalidArgument>([&] { Tensor::bhsd(nullptr, DType::f32, 1, big, big, 2); }, "shape");
  Tensor t = Tensor::contiguous(nullptr, DType::f32, {1, 1});
  t.shape = {big, big};
  expect_error<InvalidArgument>([&] { (void)t.numel(); }, "shape");
}

// A window wider than every row's keys is unbounded: near INT64_MAX it must not wrap into "no keys".
TEST(Hostile, WindowsNearInt64MaxMeanUnbounded) {
  const std::int64_t B = 1, Nq = 5, Nk = 7, H = 2, D = 8;
  std::vector<float> q = normal_vector(B * Nq * H * D, 1), k = normal_vector(B * Nk * H * D, 2),
                     v = normal_vector(B * Nk * H * D, 3);
  const Tensor tq = Tensor::bshd(q.data(), DType::f32, B, Nq, H, D);
  const Tensor tk = Tensor::bshd(k.data(), DType::f32, B, Nk, H, D);
  const Tensor tv = Tensor::bshd(v.data(), DType::f32, B, Nk, H, D);
  std::vector<float> want(B * Nq * H * D), got(want.size());
  attention(tq, tk, tv, Tensor::bshd(want.data(), DType::f32, B, Nq, H, D));
  const double want_flops = attention_flops(tq, tk, tv);
  for (auto [left, right] : {std::pair{kI64Max, kI64Max}, std::pair{std::int64_t(-1), kI64Max},
                             std::pair{kI64Max, std::int64_t(-1)}, std::pair{kI64Max - 3, kI64Max - 5}}) {
    AttentionOptions o;
    o.window_left = left;
    o.window_right = right;
    std::fill(got.begin(), got.end(), 0.f);
    attention(tq, tk, tv, Tensor::bshd(got.data(), DType::f32, B, Nq, H, D), o);
    EXPECT_EQ(got, want) << left << ", " << right;
    EXPECT_EQ(attention_flops(tq, tk, tv, o), want_flops);
  }
  AttentionOptions causal;
  causal.causal = true;
  causal.window_left = kI64Max;
  std::vector<float> c1(want.size()), c2(want.size());
  attention(tq, tk, tv, Tensor::bshd(c1.data(), DType::f32, B, Nq, H, D), causal);
  causal.window_left = -1;
  attention(tq, tk, tv, Tensor::bshd(c2.data(), DType::f32, B, Nq, H, D), causal);
  EXPECT_EQ(c1, c2);
}

TEST(Hostile, ValidEmptyInputsAreAccepted) {
  const std::int64_t H = 2, D = 4, Nk = 3;
  std::vector<float> k = normal_vector(Nk * H * D, 1), v = normal_vector(Nk * H * D, 2);
  float q_dummy = 0, out_dummy = 0, lse_dummy = 0;
  for (bool bhsd : {false, true}) {
    for (std::int64_t B : {1, 2}) {
      std::vector<float> kb(std::size_t(B) * k.size()), vb(kb.size());
      auto view = [&](void* p, std::int64_t n) {
        return bhsd ? Tensor::bhsd(p, DType::f32, B, n, H, D) : Tensor::bshd(p, DType::f32, B, n, H, D);
      };
      const Tensor lse = Tensor::contiguous(&lse_dummy, DType::f32, {B, H, 0});
      EXPECT_NO_THROW(attention(view(&q_dummy, 0), view(kb.data(), Nk), view(vb.data(), Nk),
                                view(&out_dummy, 0), {}, &lse))
          << "bhsd " << bhsd << " B " << B;
    }
  }
  // An empty varlen batch: no rows at all, with an LSE.
  const std::int32_t cu[2] = {0, 0};
  AttentionOptions o;
  o.cu_seqlens_q = cu;
  o.cu_seqlens_k = cu;
  const Tensor lse = Tensor::contiguous(&lse_dummy, DType::f32, {1, H, 0});
  EXPECT_NO_THROW(attention(Tensor::bshd(&q_dummy, DType::f32, 1, 0, H, D),
                            Tensor::bshd(k.data(), DType::f32, 1, 0, H, D),
                            Tensor::bshd(v.data(), DType::f32, 1, 0, H, D),
                            Tensor::bshd(&out_dummy, DType::f32, 1, 0, H, D), o, &lse));
}

// A step of an engine with no active sequence has no chunk of keys to share out: it divided by zero
// there (SIGFPE). A sequence that holds no token yet is refused, naming seqs (no lengths given).
TEST(Hostile, DecodeWithNoKeysReturnsWithoutWork) {
  const KvCacheConfig config{
      .kv_heads = 1, .head_dim = 8, .dtype = CacheDType::f32, .max_seqs = 2, .max_seq_len = 16};
  DecodeEngine engine(config, 2);
  float dummy = 0;
  const Tensor q0 = Tensor::contiguous(&dummy, DType::f32, {0, 1, 2, 8});
  const Tensor kv0 = Tensor::contiguous(&dummy, DType::f32, {0, 1, 1, 8});
  EXPECT_NO_THROW(engine.step(q0, kv0, kv0, q0));
  EXPECT_NO_THROW(decode_attention(q0, engine.cache(), {}, {}, q0));
  expect_error<InvalidArgument>([&] { engine.blocks_for(-5); }, "tokens");  // had answered 0

  KvCache cache(config);
  const std::int32_t seq = cache.add_sequence();
  std::vector<float> q(2 * 8, 1.f), out(2 * 8, 7.f);
  expect_error<InvalidArgument>(
      [&] {
        decode_attention(Tensor::contiguous(q.data(), DType::f32, {1, 1, 2, 8}), cache, {&seq, 1}, {},
                         Tensor::contiguous(out.data(), DType::f32, {1, 1, 2, 8}));
      },
      "seqs");
  for (float x : out) EXPECT_EQ(x, 7.f);  // nothing written
}

}  // namespace
}  // namespace mha
