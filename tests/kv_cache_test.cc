// KV cache bookkeeping: writes and reads in every dtype, capacity errors that leave data intact,
// block reuse, and argument errors.
#include "mha/kv_cache.h"

#include <gtest/gtest.h>

#include "check/random.h"
#include "mha/errors.h"

namespace mha {
namespace {

using check::normal_vector;

Tensor kv(std::vector<float>& x, std::int64_t n_seqs, std::int64_t n_tok, std::int64_t hkv, std::int64_t d) {
  return Tensor::contiguous(x.data(), DType::f32, {n_seqs, n_tok, hkv, d});
}

TEST(KvCache, WritesReadBackInEveryDtypeAndLayout) {
  for (CacheDType dt : {CacheDType::f32, CacheDType::f16, CacheDType::bf16}) {
    for (std::int64_t block : {0, 1, 4, 32}) {
      KvCache cache(
          {.kv_heads = 3, .head_dim = 5, .dtype = dt, .max_seqs = 2, .max_seq_len = 40, .block_size = block});
      const std::int32_t a = cache.add_sequence(), b = cache.add_sequence();
      // Values exact in every dtype: small integers.
      std::vector<float> k(2 * 7 * 15), v(k.size());
      for (std::size_t i = 0; i < k.size(); ++i) {
        k[i] = float(int(i % 17) - 8);
        v[i] = float(int(i % 13) - 6);
      }
      const std::int32_t seqs[2] = {a, b}, pos[2] = {0, 0};
      cache.write(seqs, pos, kv(k, 2, 7, 3, 5), kv(v, 2, 7, 3, 5));
      std::vector<float> k1(7 * 15), v1(7 * 15);
      cache.append({&b, 1}, kv(k1, 1, 7, 3, 5), kv(v1, 1, 7, 3, 5));  // zeros after b's first 7
      EXPECT_EQ(cache.length(a), 7);
      EXPECT_EQ(cache.length(b), 14);
      std::vector<float> rk(14 * 15), rv(14 * 15);
      cache.read(b, 0, 14, rk.data(), rv.data());
      for (int i = 0; i < 7 * 15; ++i) {
        ASSERT_EQ(rk[std::size_t(i)], k[std::size_t(7 * 15 + i)]);
        ASSERT_EQ(rv[std::size_t(i)], v[std::size_t(7 * 15 + i)]);
        ASSERT_EQ(rk[std::size_t(7 * 15 + i)], 0.f);
      }
    }
  }
}

// K = V from one Tensor object: both caches hold it. write had told K from V by address, so the
// second pass wrote K again and left V unwritten (zero pages, or a freed sequence's rows).
TEST(KvCache, OneTensorPassedAsKAndVFillsBoth) {
  for (CacheDType dt : {CacheDType::f32, CacheDType::bf16, CacheDType::int8}) {
    KvCache cache({.kv_heads = 2, .head_dim = 4, .dtype = dt, .max_seqs = 1, .max_seq_len = 8, .block_size = 0});
    const std::int32_t s = cache.add_sequence();
    std::vector<float> x(6 * 8);
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = float(int(i % 11) - 5);
    const Tensor t = kv(x, 1, 6, 2, 4);
    const std::int32_t pos = 0;
    cache.write({&s, 1}, {&pos, 1}, t, t);
    std::vector<float> rk(x.size(), -99.f), rv(x.size(), -99.f);
    cache.read(s, 0, 6, rk.data(), rv.data());
    for (std::size_t i = 0; i < x.size(); ++i) {
      ASSERT_NEAR(rk[i], x[i], 0.05f) << to_string(dt) << " k " << i;
      ASSERT_NEAR(rv[i], x[i], 0.05f) << to_string(dt) << " v " << i;
    }
  }
}

TEST(KvCache, PoolExhaustionIsCapacityExceededAndLeavesEverySequenceIntact) {
  KvCache cache({.kv_heads = 1,
                 .head_dim = 4,
                 .dtype = CacheDType::f32,
                 .max_seqs = 3,
                 .max_seq_len = 64,
                 .block_size = 4,
                 .num_blocks = 5});
  const std::int32_t a = cache.add_sequence(), b = cache.add_sequence();
  std::vector<float> x = normal_vector(2 * 8 * 4, 1);
  const std::int32_t seqs[2] = {a, b}, pos[2] = {0, 0};
  cache.write(seqs, pos, kv(x, 2, 6, 1, 4), kv(x, 2, 6, 1, 4));  // 2 + 2 blocks
  EXPECT_EQ(cache.free_blocks(), 1);
  std::vector<float> before(6 * 4), vb(6 * 4);
  cache.read(a, 0, 6, before.data(), vb.data());
  // 3 tokens each: a needs 1 more block (6+3=9 -> 3 blocks), b too: 2 > 1 free.
  std::vector<float> y = normal_vector(2 * 3 * 4, 2);
  const std::int32_t at[2] = {6, 6};
  EXPECT_THROW(cache.write(seqs, at, kv(y, 2, 3, 1, 4), kv(y, 2, 3, 1, 4)), CapacityExceeded);
  EXPECT_EQ(cache.free_blocks(), 1);
  EXPECT_EQ(cache.length(a), 6);
  EXPECT_EQ(cache.length(b), 6);
  std::vector<float> after(6 * 4), va(6 * 4);
  cache.read(a, 0, 6, after.data(), va.data());
  EXPECT_EQ(before, after);
  // One of them fits.
  cache.write({&a, 1}, {&at[0], 1}, kv(y, 1, 3, 1, 4), kv(y, 1, 3, 1, 4));
  EXPECT_EQ(cache.free_blocks(), 0);
  // Past max_seq_len is CapacityExceeded naming positions, even with blocks to spare.
  KvCache small({.kv_heads = 1, .head_dim = 4, .dtype = CacheDType::bf16, .max_seqs = 1, .max_seq_len = 8});
  const std::int32_t s = small.add_sequence(), p7 = 7;
  small.write({&s, 1}, {&pos[0], 1}, kv(x, 1, 7, 1, 4), kv(x, 1, 7, 1, 4));
  try {
    small.write({&s, 1}, {&p7, 1}, kv(x, 1, 2, 1, 4), kv(x, 1, 2, 1, 4));
    ADD_FAILURE();
  } catch (const CapacityExceeded& e) {
    EXPECT_EQ(e.argument(), "positions");
  }
  EXPECT_EQ(small.length(s), 7);
}

TEST(KvCache, FreedBlocksAndSlotsAreReused) {
  KvCache cache({.kv_heads = 1,
                 .head_dim = 2,
                 .dtype = CacheDType::f16,
                 .max_seqs = 2,
                 .max_seq_len = 32,
                 .block_size = 8,
                 .num_blocks = 4});
  const std::int32_t a = cache.add_sequence();
  std::vector<float> x(20 * 2, 1.f);
  cache.fill(a, Tensor::contiguous(x.data(), DType::f32, {20, 1, 2}),
             Tensor::contiguous(x.data(), DType::f32, {20, 1, 2}));
  EXPECT_EQ(cache.free_blocks(), 1);
  const std::vector<std::int32_t> blocks(cache.block_table(a).begin(), cache.block_table(a).begin() + 3);
  cache.free_sequence(a);
  EXPECT_EQ(cache.free_blocks(), 4);
  EXPECT_FALSE(cache.active(a));
  const std::int32_t b = cache.add_sequence();
  EXPECT_EQ(b, a);
  cache.fill(b, Tensor::contiguous(x.data(), DType::f32, {20, 1, 2}),
             Tensor::contiguous(x.data(), DType::f32, {20, 1, 2}));
  for (int i = 0; i < 3; ++i) EXPECT_EQ(cache.block_table(b)[std::size_t(i)], blocks[std::size_t(i)]);
  cache.add_sequence();
  EXPECT_THROW(cache.add_sequence(), CapacityExceeded);
}

TEST(KvCache, BadArgumentsNameTheArgument) {
  auto expect = [](auto f, const char* argument) {
    try {
      f();
      ADD_FAILURE() << argument;
    } catch (const Error& e) {
      EXPECT_EQ(e.argument(), argument) << e.what();
    }
  };
  expect([] { KvCache({.kv_heads = 0, .head_dim = 4, .max_seq_len = 8}); }, "kv_heads");
  expect([] { KvCache({.kv_heads = 1, .head_dim = 300, .max_seq_len = 8}); }, "head_dim");
  expect([] { KvCache({.kv_heads = 1, .head_dim = 4, .max_seq_len = 8, .block_size = 12}); }, "block_size");
  expect([] { KvCache({.kv_heads = 1, .head_dim = 4, .max_seq_len = 0}); }, "max_seq_len");
  expect([] { parse_cache_dtype("fp8"); }, "kv_dtype");
  KvCache cache({.kv_heads = 2, .head_dim = 4, .dtype = CacheDType::int8, .max_seqs = 2, .max_seq_len = 16});
  const std::int32_t a = cache.add_sequence();
  std::vector<float> x(2 * 4 * 2 * 4);
  const std::int32_t one = 1, zero = 0, twice[2] = {a, a}, zeros[2] = {0, 0};
  expect(
      [&] {
        cache.write({&a, 1}, {&one, 1}, kv(x, 1, 2, 2, 4), kv(x, 1, 2, 2, 4));
      },
      "positions");  // a hole
  expect([&] { cache.write({&a, 1}, {&zero, 1}, kv(x, 1, 2, 1, 8), kv(x, 1, 2, 1, 8)); }, "k");
  expect([&] { cache.write(twice, zeros, kv(x, 2, 2, 2, 4), kv(x, 2, 2, 2, 4)); }, "seqs");
  const std::int32_t inactive = 1;
  expect([&] { cache.write({&inactive, 1}, {&zero, 1}, kv(x, 1, 2, 2, 4), kv(x, 1, 2, 2, 4)); }, "seq");
  expect([&] { cache.free_sequence(1); }, "seq");
  EXPECT_EQ(cache.length(a), 0);
}

}  // namespace
}  // namespace mha
