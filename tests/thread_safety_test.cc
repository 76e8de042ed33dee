// Concurrency (issue 12): one layer object called from several threads at once, and the pool
// resized while calls run. Before the fix, a shared MultiHeadAttention returned wrong results for
// most calls (the threads shared its plan's buffers) and set_num_threads during a call hung.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

#include "check/random.h"
#include "mha/attention.h"
#include "mha/decode.h"
#include "mha/kv_cache.h"
#include "mha/layers.h"
#include "mha/runtime.h"

namespace mha {
namespace {

using check::normal_vector;

TEST(ThreadSafety, OneMultiHeadAttentionSharedByThreadsGivesEachCallersResult) {
  const MultiHeadAttentionConfig c{.hidden = 64, .heads = 4};
  MultiHeadAttention layer(c, MultiHeadAttentionWeights::random(c, 1));
  constexpr int kThreads = 4, kCalls = 20;
  const std::int64_t B = 2, S = 48, H = 64;
  std::vector<std::vector<float>> x(kThreads), want(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    x[std::size_t(t)] = normal_vector(std::size_t(B * S * H), std::uint64_t(10 + t));
    want[std::size_t(t)].resize(x[std::size_t(t)].size());
    layer.forward(Tensor::contiguous(x[std::size_t(t)].data(), DType::f32, {B, S, H}),
                  Tensor::contiguous(want[std::size_t(t)].data(), DType::f32, {B, S, H}));
  }
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::vector<float> y(x[std::size_t(t)].size());
      for (int i = 0; i < kCalls; ++i) {
        layer.forward(Tensor::contiguous(x[std::size_t(t)].data(), DType::f32, {B, S, H}),
                      Tensor::contiguous(y.data(), DType::f32, {B, S, H}));
        if (y != want[std::size_t(t)]) ++wrong;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(wrong.load(), 0) << "of " << kThreads * kCalls << " calls";
  EXPECT_EQ(layer.plans_built(), 1u);
}

// kv_cache.h: a cache may be read by several threads at once. Each thread decodes its own queries
// over one shared paged cache and gets the bits of a call made alone.
TEST(ThreadSafety, DecodeStepsReadingOneCacheFromSeveralThreads) {
  const std::int64_t Hq = 8, Hkv = 2, D = 32, L = 300;
  KvCache cache({.kv_heads = Hkv,
                 .head_dim = D,
                 .dtype = CacheDType::bf16,
                 .max_seqs = 2,
                 .max_seq_len = 512,
                 .block_size = 16});
  std::vector<std::int32_t> seqs;
  for (int s = 0; s < 2; ++s) {
    seqs.push_back(cache.add_sequence());
    const std::vector<float> k = normal_vector(std::size_t(L * Hkv * D), 20 + s),
                             v = normal_vector(k.size(), 30 + s);
    cache.fill(seqs.back(), Tensor::contiguous(const_cast<float*>(k.data()), DType::f32, {L, Hkv, D}),
               Tensor::contiguous(const_cast<float*>(v.data()), DType::f32, {L, Hkv, D}));
  }
  constexpr int kThreads = 4, kCalls = 10;
  std::vector<std::vector<float>> q(kThreads), want(kThreads);
  const auto step = [&](int t, std::vector<float>& out) {
    decode_attention(Tensor::contiguous(q[std::size_t(t)].data(), DType::f32, {2, 1, Hq, D}), cache, seqs, {},
                     Tensor::contiguous(out.data(), DType::f32, {2, 1, Hq, D}));
  };
  for (int t = 0; t < kThreads; ++t) {
    q[std::size_t(t)] = normal_vector(std::size_t(2 * Hq * D), std::uint64_t(40 + t));
    want[std::size_t(t)].resize(q[std::size_t(t)].size());
    step(t, want[std::size_t(t)]);
  }
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      std::vector<float> out(want[std::size_t(t)].size());
      for (int i = 0; i < kCalls; ++i) {
        step(t, out);
        if (out != want[std::size_t(t)]) ++wrong;
      }
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(wrong.load(), 0) << "of " << kThreads * kCalls << " calls";
}

TEST(ThreadSafety, SetNumThreadsWhileCallsRunNeitherHangsNorChangesResults) {
  const std::int64_t B = 1, N = 300, H = 4, D = 32;
  const std::vector<float> q = normal_vector(B * N * H * D, 1), k = normal_vector(B * N * H * D, 2),
                           v = normal_vector(B * N * H * D, 3);
  auto run = [&](std::vector<float>& out) {
    attention(Tensor::bshd(const_cast<float*>(q.data()), DType::f32, B, N, H, D),
              Tensor::bshd(const_cast<float*>(k.data()), DType::f32, B, N, H, D),
              Tensor::bshd(const_cast<float*>(v.data()), DType::f32, B, N, H, D),
              Tensor::bshd(out.data(), DType::f32, B, N, H, D));
  };
  std::vector<float> want(q.size());
  run(want);
  const int before = num_threads();
  std::atomic<bool> stop{false};
  std::atomic<int> wrong{0}, calls{0};
  std::vector<std::thread> callers;
  for (int t = 0; t < 2; ++t) {
    callers.emplace_back([&] {
      std::vector<float> out(q.size());
      while (!stop) {
        run(out);
        ++calls;
        if (out != want) ++wrong;
      }
    });
  }
  for (int i = 0; i < 60; ++i) set_num_threads(1 + i % 3);
  while (calls < 20) std::this_thread::yield();
  stop = true;
  for (auto& th : callers) th.join();
  set_num_threads(before);
  EXPECT_EQ(wrong.load(), 0) << "of " << calls.load() << " calls";
}

}  // namespace
}  // namespace mha
