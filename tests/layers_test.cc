// The attention layers against float64 implementations of the same layers, naive vs optimized,
// GQA, RoPE, wide heads, plan reuse without allocation, determinism and argument errors.
#include "mha/layers.h"

#include "mha/bert.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <new>

#include "check/compare.h"
#include "check/random.h"
#include "mha/errors.h"
#include "mha/reference.h"
#include "mha/runtime.h"

// Counts every operator new in the process, to prove steady-state forward calls allocate nothing.
namespace {
std::atomic<long> g_allocations{0};
}
void* operator new(std::size_t n) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace mha {
namespace {

using check::compare;
using check::normal_vector;

Tensor rows3(std::vector<float>& v, std::int64_t b, std::int64_t n, std::int64_t d) {
  return Tensor::contiguous(v.data(), DType::f32, {b, n, d});
}

// BERT's additive padding mask [batch, 1, 1, seq]: 0 for real tokens, -10000 past each length.
std::vector<float> padding_mask(std::int64_t batch, std::int64_t seq) {
  std::vector<float> m(std::size_t(batch * seq), 0.f);
  for (std::int64_t b = 0; b < batch; ++b)
    for (std::int64_t s = seq - (b * 7) % (seq / 2 + 1); s < seq; ++s) m[std::size_t(b * seq + s)] = -10000.f;
  return m;
}

struct SelfCase {
  std::int64_t batch, n, d_in, d_out;
  bool causal;
};

class SelfAttentionTest : public ::testing::TestWithParam<SelfCase> {};

TEST_P(SelfAttentionTest, BothPathsMatchTheFloat64Layer) {
  const SelfCase c = GetParam();
  SelfAttention layer(SelfAttentionWeights::random(c.d_in, c.d_out, 7), {.causal = c.causal});
  std::vector<float> x = normal_vector(std::size_t(c.batch * c.n * c.d_in), 1);
  std::vector<float> fast(std::size_t(c.batch * c.n * c.d_out)), slow(fast.size());
  layer.forward(rows3(x, c.batch, c.n, c.d_in), rows3(fast, c.batch, c.n, c.d_out));
  layer.forward_naive(rows3(x, c.batch, c.n, c.d_in), rows3(slow, c.batch, c.n, c.d_out));
  const std::vector<double> ref =
      reference::self_attention_f64(layer.weights(), c.causal, x.data(), c.batch, c.n);
  const auto a = compare(std::span<const float>(fast), ref), an = compare(std::span<const float>(slow), ref);
  EXPECT_GE(a.pcc, 0.9999);
  EXPECT_GE(an.pcc, 0.9999);
  EXPECT_LE(a.max_err, 2 * an.max_err + 1e-5 * a.max_ref)
      << "optimized " << a.max_err << " naive " << an.max_err;
  EXPECT_GE(compare(std::span<const float>(fast), std::span<const float>(slow)).pcc, 0.9999);
}

INSTANTIATE_TEST_SUITE_P(Shapes, SelfAttentionTest,
                         ::testing::Values(SelfCase{1, 1, 8, 4, false}, SelfCase{1, 37, 48, 32, false},
                                           SelfCase{2, 65, 40, 24, true}, SelfCase{1, 300, 64, 256, false},
                                           // head dims above the flash kernels' 256: the wide path
                                           SelfCase{1, 150, 96, 300, false}, SelfCase{2, 130, 64, 520, true},
                                           SelfCase{1, 257, 32, 1024, false}));

TEST(SelfAttention, TwoDimensionalInputIsOneBatchEntry) {
  SelfAttention layer(SelfAttentionWeights::random(16, 8, 3));
  std::vector<float> x = normal_vector(20 * 16, 2), y2(20 * 8), y3(20 * 8);
  layer.forward(Tensor::contiguous(x.data(), DType::f32, {20, 16}),
                Tensor::contiguous(y2.data(), DType::f32, {20, 8}));
  layer.forward(rows3(x, 1, 20, 16), rows3(y3, 1, 20, 8));
  EXPECT_EQ(y2, y3);
}

TEST(SelfAttention, Bf16WeightsStayAboveThePccBar) {
  const SelfAttentionWeights w = SelfAttentionWeights::random(256, 128, 11);
  SelfAttention layer(w, {.weight_dtype = DType::bf16});
  EXPECT_NE(layer.weights().w_query, w.w_query);  // rounded
  std::vector<float> x = normal_vector(200 * 256, 4), y(200 * 128);
  layer.forward(rows3(x, 1, 200, 256), rows3(y, 1, 200, 128));
  const auto a =
      compare(std::span<const float>(y), reference::self_attention_f64(w, false, x.data(), 1, 200));
  EXPECT_GE(a.pcc, 0.999);
  EXPECT_LT(a.pcc, 1.0);
}

struct MhaCase {
  const char* name;
  MultiHeadAttentionConfig config;
  std::int64_t batch, seq;
  bool mask;
  std::vector<std::int32_t> positions;
  DType weights = DType::f32;
};

class MultiHeadAttentionTest : public ::testing::TestWithParam<MhaCase> {};

TEST_P(MultiHeadAttentionTest, BothPathsMatchTheFloat64Layer) {
  const MhaCase& c = GetParam();
  const MultiHeadAttentionWeights w = MultiHeadAttentionWeights::random(c.config, 5);
  MultiHeadAttentionConfig config = c.config;
  config.weight_dtype = c.weights;
  MultiHeadAttention layer(config, w);
  const std::int64_t hidden = c.config.hidden;
  std::vector<float> x = normal_vector(std::size_t(c.batch * c.seq * hidden), 9);
  std::vector<float> fast(x.size()), slow(x.size());
  std::vector<float> m = padding_mask(c.batch, c.seq);
  const Tensor mask = Tensor::contiguous(m.data(), DType::f32, {c.batch, 1, 1, c.seq});
  const Tensor* mp = c.mask ? &mask : nullptr;
  layer.forward(rows3(x, c.batch, c.seq, hidden), rows3(fast, c.batch, c.seq, hidden), mp, c.positions);
  layer.forward_naive(rows3(x, c.batch, c.seq, hidden), rows3(slow, c.batch, c.seq, hidden), mp, c.positions);
  // bf16 weights are judged against the float64 layer with the original f32 weights.
  const std::vector<double> ref =
      reference::multi_head_attention_f64(c.config, w, x.data(), c.batch, c.seq, mp, c.positions);
  const auto a = compare(std::span<const float>(fast), ref), an = compare(std::span<const float>(slow), ref);
  const double bar = c.weights == DType::f32 ? 0.9999 : 0.999;
  EXPECT_GE(a.pcc, bar);
  EXPECT_GE(an.pcc, bar);
  if (c.weights == DType::f32) {
    EXPECT_LE(a.max_err, 2 * an.max_err + 1e-5 * a.max_ref)
        << "optimized " << a.max_err << " naive " << an.max_err;
  }
  EXPECT_GE(compare(std::span<const float>(fast), std::span<const float>(slow)).pcc, 0.9999);
}

MultiHeadAttentionConfig bert_mini() { return {.hidden = 64, .heads = 4}; }
MultiHeadAttentionConfig with_rope(MultiHeadAttentionConfig c, RopeStyle style, std::int64_t rotary_dim = 0) {
  c.rope = RopeConfig{.style = style, .theta = 500.0, .rotary_dim = rotary_dim, .max_positions = 256};
  return c;
}

INSTANTIATE_TEST_SUITE_P(
    Configs, MultiHeadAttentionTest,
    ::testing::Values(
        MhaCase{"bert_mask", bert_mini(), 3, 37, true}, MhaCase{"no_mask", bert_mini(), 2, 64, false},
        MhaCase{"no_bias", {.hidden = 48, .heads = 3, .bias = false}, 2, 20, true},
        MhaCase{"gqa", {.hidden = 64, .heads = 8, .kv_heads = 2}, 2, 41, true},
        MhaCase{"mqa_causal", {.hidden = 64, .heads = 8, .kv_heads = 1, .causal = true}, 2, 70, false},
        MhaCase{"head_dim_not_hidden", {.hidden = 40, .heads = 4, .head_dim = 24}, 1, 33, true},
        MhaCase{"wide_heads", {.hidden = 64, .heads = 2, .head_dim = 300}, 2, 45, true},
        MhaCase{"rope_half", with_rope(bert_mini(), RopeStyle::half), 2, 30, false, {0, 17}},
        MhaCase{
            "rope_interleaved_partial",
            with_rope({.hidden = 64, .heads = 4, .kv_heads = 2, .causal = true}, RopeStyle::interleaved, 8),
            3,
            25,
            false,
            {5, 0, 100}},
        MhaCase{"bf16_weights", bert_mini(), 2, 50, true, {}, DType::bf16}),
    [](const auto& info) { return std::string(info.param.name); });

TEST(MultiHeadAttention, SecondCallOfAShapeReusesThePlanAndAllocatesNothing) {
  MultiHeadAttention layer(bert_mini(), MultiHeadAttentionWeights::random(bert_mini(), 1));
  std::vector<float> x = normal_vector(2 * 300 * 64, 3), y(x.size()), y2(x.size());
  std::vector<float> m = padding_mask(2, 300);
  const Tensor mask = Tensor::contiguous(m.data(), DType::f32, {2, 1, 1, 300});
  const Tensor xt = rows3(x, 2, 300, 64), yt = rows3(y, 2, 300, 64), yt2 = rows3(y2, 2, 300, 64);
  layer.forward(xt, yt, &mask);
  EXPECT_EQ(layer.plans_built(), 1u);
  const long before = g_allocations.load();
  layer.forward(xt, yt2, &mask);
  EXPECT_EQ(g_allocations.load() - before, 0);
  EXPECT_EQ(layer.plans_built(), 1u);
  EXPECT_EQ(y, y2);
  std::vector<float> x3 = normal_vector(5 * 64, 4), y3(x3.size());
  layer.forward(rows3(x3, 1, 5, 64), rows3(y3, 1, 5, 64));  // a new shape builds a second plan
  EXPECT_EQ(layer.plans_built(), 2u);
}

TEST(SelfAttention, SecondCallOfAShapeReusesThePlanAndAllocatesNothing) {
  for (std::int64_t d_out : {64, 400}) {
    SelfAttention layer(SelfAttentionWeights::random(32, d_out, 1));
    std::vector<float> x = normal_vector(200 * 32, 3), y(std::size_t(200 * d_out));
    layer.forward(rows3(x, 1, 200, 32), rows3(y, 1, 200, d_out));
    const long before = g_allocations.load();
    layer.forward(rows3(x, 1, 200, 32), rows3(y, 1, 200, d_out));
    EXPECT_EQ(g_allocations.load() - before, 0) << "d_out " << d_out;
    EXPECT_EQ(layer.plans_built(), 1u);
  }
}

TEST(BertEncoder, CallsNoLargerThanAnEarlierOneAllocateNothing) {
  BertConfig c;
  c.vocab_size = 50, c.hidden = 64, c.heads = 4, c.layers = 2, c.intermediate = 128, c.max_positions = 300;
  BertEncoder enc(c, BertWeights::random(c, 1));
  std::vector<std::int32_t> ids(420);
  for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = std::int32_t(i * 7 % 50);
  const std::vector<std::int32_t> cu = {0, 300, 301, 420}, smaller = {0, 100, 250};
  std::vector<float> e(3 * 64), e2(e.size());
  enc.embed(ids, cu, Tensor::contiguous(e.data(), DType::f32, {3, 64}));
  const long before = g_allocations.load();
  enc.embed(ids, cu, Tensor::contiguous(e2.data(), DType::f32, {3, 64}));
  enc.embed(std::span(ids).first(250), smaller, Tensor::contiguous(e2.data(), DType::f32, {2, 64}));
  EXPECT_EQ(g_allocations.load() - before, 0);
}

TEST(Layers, SameBitsForAnyThreadCount) {
  const int saved = num_threads();
  const MultiHeadAttentionConfig c{.hidden = 96, .heads = 6, .kv_heads = 2};
  MultiHeadAttention mha_layer(c, MultiHeadAttentionWeights::random(c, 2));
  SelfAttention wide(SelfAttentionWeights::random(48, 300, 2));
  std::vector<float> x = normal_vector(3 * 290 * 96, 5), xs = normal_vector(300 * 48, 6);
  std::vector<float> m = padding_mask(3, 290);
  const Tensor mask = Tensor::contiguous(m.data(), DType::f32, {3, 1, 1, 290});
  std::vector<float> first, first_wide;
  for (int threads : {1, 2, 3, 8}) {
    set_num_threads(threads);
    std::vector<float> y(x.size()), yw(300 * 300);
    mha_layer.forward(rows3(x, 3, 290, 96), rows3(y, 3, 290, 96), &mask);
    wide.forward(rows3(xs, 1, 300, 48), rows3(yw, 1, 300, 300));
    if (first.empty()) {
      first = y;
      first_wide = yw;
    }
    EXPECT_EQ(y, first) << threads << " threads";
    EXPECT_EQ(yw, first_wide) << threads << " threads";
  }
  set_num_threads(saved);
}

template <class E>
void expect_error(const std::function<void()>& f, const std::string& argument) {
  try {
    f();
    ADD_FAILURE() << "no exception, expected one naming " << argument;
  } catch (const E& e) {
    EXPECT_EQ(e.argument(), argument) << e.what();
  }
}

// Empty batches and sequences are valid input with empty output, whatever strides their views
// carry: NumPy hands out an empty array's strides as zeros, which the contiguity check refused.
TEST(Layers, EmptyBatchesAndSequencesGiveEmptyOutput) {
  MultiHeadAttention layer(bert_mini(), MultiHeadAttentionWeights::random(bert_mini(), 1));
  SelfAttention single(SelfAttentionWeights::random(64, 64, 1));
  float dummy = 0;
  for (const auto& shape : {std::array<std::int64_t, 3>{0, 5, 64}, {2, 0, 64}, {0, 0, 64}}) {
    for (const bool zero_strides : {false, true}) {
      Tensor t = Tensor::contiguous(&dummy, DType::f32, {shape[0], shape[1], shape[2]});
      if (zero_strides) t.strides = {};
      EXPECT_NO_THROW(layer.forward(t, t)) << shape[0] << " " << shape[1] << " zero strides " << zero_strides;
      EXPECT_NO_THROW(layer.forward_naive(t, t)) << shape[0] << " " << shape[1];
      EXPECT_NO_THROW(single.forward(t, t)) << shape[0] << " " << shape[1];
    }
  }
}

TEST(Layers, BadArgumentsAreTypedErrorsAndWriteNothing) {
  MultiHeadAttention layer(bert_mini(), MultiHeadAttentionWeights::random(bert_mini(), 1));
  std::vector<float> x = normal_vector(2 * 10 * 64, 3), y(x.size(), 42.f);
  const Tensor xt = rows3(x, 2, 10, 64), yt = rows3(y, 2, 10, 64);
  expect_error<InvalidArgument>([&] { layer.forward(rows3(x, 2, 20, 32), yt); }, "x");
  expect_error<InvalidArgument>([&] { layer.forward(xt, rows3(y, 1, 20, 64)); }, "out");
  expect_error<InvalidArgument>(
      [&] {
        layer.forward(Tensor::contiguous(x.data(), DType::f32, {20, 64}), yt);
      },
      "x");
  std::vector<std::uint16_t> xh(x.size());
  expect_error<Unsupported>(
      [&] {
        layer.forward(Tensor::contiguous(xh.data(), DType::f16, {2, 10, 64}), yt);
      },
      "x");
  Tensor strided = xt;
  strided.strides = {1280, 128, 1};
  expect_error<InvalidArgument>([&] { layer.forward(strided, yt); }, "x");
  std::vector<float> m(2 * 11);
  const Tensor bad_mask = Tensor::contiguous(m.data(), DType::f32, {2, 1, 1, 11});
  expect_error<InvalidArgument>([&] { layer.forward(xt, yt, &bad_mask); }, "mask");
  expect_error<InvalidArgument>([&] { layer.forward_naive(xt, yt, &bad_mask); }, "mask");
  for (float v : y) ASSERT_EQ(v, 42.f);

  MultiHeadAttention roped(with_rope(bert_mini(), RopeStyle::half),
                           MultiHeadAttentionWeights::random(bert_mini(), 1));
  const std::int32_t one[1] = {0}, far[2] = {0, 250};
  expect_error<InvalidArgument>([&] { roped.forward(xt, yt, nullptr, one); }, "positions");
  expect_error<InvalidArgument>([&] { roped.forward(xt, yt, nullptr, far); }, "positions");
  for (float v : y) ASSERT_EQ(v, 42.f);

  expect_error<InvalidArgument>([] { MultiHeadAttentionConfig{.hidden = 64, .heads = 5}.resolved(); },
                                "head_dim");
  expect_error<InvalidArgument>(
      [] { MultiHeadAttentionConfig{.hidden = 64, .heads = 4, .kv_heads = 3}.resolved(); }, "kv_heads");
  expect_error<InvalidArgument>([] { MultiHeadAttentionConfig{.hidden = 0, .heads = 4}.resolved(); },
                                "hidden");
  MultiHeadAttentionWeights short_w = MultiHeadAttentionWeights::random(bert_mini(), 1);
  short_w.b_out.pop_back();
  expect_error<InvalidArgument>([&] { MultiHeadAttention(bert_mini(), short_w); }, "b_out");
  SelfAttentionWeights sw = SelfAttentionWeights::random(8, 4, 1);
  sw.w_key.resize(3);
  expect_error<InvalidArgument>([&] { SelfAttention{sw}; }, "w_key");
  SelfAttention self(SelfAttentionWeights::random(8, 4, 1));
  std::vector<float> sx(5 * 8), sy(5 * 4);
  expect_error<InvalidArgument>(
      [&] { self.forward(Tensor::contiguous(sx.data(), DType::f32, {40}), rows3(sy, 1, 5, 4)); }, "x");
  expect_error<InvalidArgument>([&] { self.forward(rows3(sx, 1, 5, 8), rows3(sy, 1, 4, 5)); }, "out");
}

}  // namespace
}  // namespace mha
