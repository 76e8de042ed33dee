// BertEncoder against the BERT written from its definition in double (and in float as the naive
// yardstick); its row-wise steps (GELU, LayerNorm) against double; packing, thread-count
// determinism, checkpoint round trips and argument errors.
#include "mha/bert.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "check/compare.h"
#include "check/random.h"
#include "linalg/elementwise.h"
#include "mha/errors.h"
#include "mha/reference.h"
#include "mha/runtime.h"
#include "test_files.h"

namespace mha {
namespace {

BertConfig small_config(std::int64_t hidden = 48, std::int64_t heads = 4, std::int64_t layers = 2) {
  BertConfig c;
  c.vocab_size = 97;
  c.hidden = hidden;
  c.heads = heads;
  c.layers = layers;
  c.intermediate = 2 * hidden + 8;
  c.max_positions = 80;
  return c;
}

// A packed batch with the given lengths and ids drawn from the vocabulary.
struct Batch {
  std::vector<std::int32_t> ids, cu{0}, types;
  Batch(const BertConfig& c, std::initializer_list<std::int32_t> lengths, std::uint64_t seed) {
    check::Random rng(seed);
    for (std::int32_t len : lengths) {
      for (std::int32_t t = 0; t < len; ++t) {
        ids.push_back(std::int32_t(rng.range(0, c.vocab_size - 1)));
        types.push_back(std::int32_t(rng.range(0, c.type_vocab_size - 1)));
      }
      cu.push_back(cu.back() + len);
    }
  }
  std::int64_t batch() const { return std::int64_t(cu.size()) - 1; }
  std::int64_t tokens() const { return std::int64_t(ids.size()); }
};

std::vector<float> embed(BertEncoder& enc, const Batch& b, bool types = false) {
  std::vector<float> out(std::size_t(b.batch() * enc.config().hidden));
  enc.embed(b.ids, b.cu, Tensor::contiguous(out.data(), DType::f32, {b.batch(), enc.config().hidden}),
            types ? std::span<const std::int32_t>(b.types) : std::span<const std::int32_t>{});
  return out;
}

TEST(Gelu, WithinAFewUlpOfTheExactErfGeluEverywhereOnEveryIsa) {
  std::vector<float> x;
  for (int i = -240000; i <= 240000; ++i) x.push_back(float(i) * 5e-5f);  // [-12, 12]
  for (float s : {1e-30f, 1e-10f, 1e-3f, 15.9f, 16.1f, 30.f, 100.f, 1e6f}) x.insert(x.end(), {s, -s});
  const Isa saved = active_isa();
  for (Isa isa : supported_isas()) {
    set_isa(isa);
    std::vector<float> y = x;
    detail::gelu_erf(y.data(), std::int64_t(y.size()) - 3);  // a length that leaves a vector tail
    detail::gelu_erf(y.data() + y.size() - 3, 3);
    for (std::size_t i = 0; i < x.size(); ++i) {
      const double v = x[i], ref = 0.5 * v * std::erfc(-v / std::sqrt(2.0));
      // The approximation (1.2e-7 relative), its polynomial's float evaluation (terms up to 1.5
      // summed into an exponent near −1: ~2.5e-7) and the result's rounding, plus the rounding of
      // z = |x|/√2 and of z² inside exp(−z²), which grows as x² where the result is exponentially
      // small (2e-32 at x = −12); a denormal floor. (The naive 0.5·x·(1 + erff(x/√2)) loses 2e-5
      // near x = −3.)
      const double bar = (5e-7 + 1.5e-7 * v * v) * std::abs(ref) + 1e-37;
      ASSERT_LE(std::abs(y[i] - ref), bar) << to_string(isa) << ": x = " << x[i] << " got " << y[i] << " want " << ref;
    }
    std::vector<float> special = {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                                  0.f, -0.f, -200.f, -std::numeric_limits<float>::infinity()};
    detail::gelu_erf(special.data(), std::int64_t(special.size()));
    EXPECT_TRUE(std::isnan(special[0])) << to_string(isa);
    EXPECT_EQ(special[1], std::numeric_limits<float>::infinity()) << to_string(isa);
    for (std::size_t i = 2; i < special.size(); ++i) EXPECT_EQ(special[i], 0.f) << to_string(isa) << " " << i;
  }
  set_isa(saved);
}

TEST(LayerNorm, MatchesDoubleAndLeavesThePaddingColumnsAlone) {
  const std::int64_t rows = 130, n = 37, ld = 40;
  std::vector<float> x = check::normal_vector(std::size_t(rows * ld), 1), g = check::normal_vector(n, 2),
                     b = check::normal_vector(n, 3);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = 3.f + 5.f * x[i];  // an offset mean and a wide spread
  const std::vector<float> in = x;
  detail::layer_norm_rows(x.data(), rows, n, ld, g.data(), b.data(), 1e-5);
  for (std::int64_t i = 0; i < rows; ++i) {
    double mean = 0, var = 0;
    for (std::int64_t j = 0; j < n; ++j) mean += in[std::size_t(i * ld + j)];
    mean /= double(n);
    for (std::int64_t j = 0; j < n; ++j) var += std::pow(in[std::size_t(i * ld + j)] - mean, 2);
    const double rstd = 1 / std::sqrt(var / double(n) + 1e-5);
    for (std::int64_t j = 0; j < n; ++j) {
      const double ref = (in[std::size_t(i * ld + j)] - mean) * rstd * g[std::size_t(j)] + b[std::size_t(j)];
      ASSERT_NEAR(x[std::size_t(i * ld + j)], ref, 1e-6 * (1 + std::abs(ref)));
    }
    for (std::int64_t j = n; j < ld; ++j) ASSERT_EQ(x[std::size_t(i * ld + j)], in[std::size_t(i * ld + j)]);
  }
}

struct EncoderCase {
  std::int64_t hidden, heads, layers;
};

class BertEncoderTest : public ::testing::TestWithParam<EncoderCase> {};

// FlashAttention's bar: error vs the double oracle at most twice the naive float path's, plus a floor.
void expect_within_bar(std::span<const float> got, std::span<const float> naive, std::span<const double> oracle,
                       const char* what) {
  const check::Agreement mine = check::compare(got, oracle), base = check::compare(naive, oracle);
  EXPECT_LE(mine.max_err, 2 * base.max_err + 1e-7 * mine.max_ref)
      << what << ": mha " << mine.max_err << ", naive float " << base.max_err;
}

TEST_P(BertEncoderTest, HiddenStatesAndEmbeddingsMatchTheFloat64Encoder) {
  const EncoderCase p = GetParam();
  const BertConfig c = small_config(p.hidden, p.heads, p.layers);
  BertEncoder enc(c, BertWeights::random(c, 7));
  const Batch b(c, {1, 7, 64, 0, 33, 80, 2}, 11);
  for (bool types : {false, true}) {
    const std::span<const std::int32_t> tt = types ? std::span<const std::int32_t>(b.types) : std::span<const std::int32_t>{};
    std::vector<float> hidden(std::size_t(b.tokens() * c.hidden));
    enc.forward(b.ids, b.cu, Tensor::contiguous(hidden.data(), DType::f32, {b.tokens(), c.hidden}), tt);
    expect_within_bar(hidden, reference::bert_naive(c, enc.weights(), b.ids, b.cu, false, tt),
                      reference::bert_f64(c, enc.weights(), b.ids, b.cu, false, tt), "hidden");
    const std::vector<float> e = embed(enc, b, types);
    expect_within_bar(e, reference::bert_naive(c, enc.weights(), b.ids, b.cu, true, tt),
                      reference::bert_f64(c, enc.weights(), b.ids, b.cu, true, tt), "embeddings");
    // The empty sequence (index 3) embeds as zeros, as sentence-transformers' clamped mean does.
    for (std::int64_t j = 0; j < c.hidden; ++j) EXPECT_EQ(e[std::size_t(3 * c.hidden + j)], 0.f);
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, BertEncoderTest,
                         ::testing::Values(EncoderCase{48, 4, 2}, EncoderCase{40, 5, 3}, EncoderCase{64, 1, 1},
                                           EncoderCase{96, 12, 2}));

TEST(BertEncoder, ASentenceEmbedsTheSameAloneAndInsideABatch) {
  const BertConfig c = small_config();
  BertEncoder enc(c, BertWeights::random(c, 3));
  const Batch all(c, {5, 40, 12}, 5);
  const std::vector<float> batched = embed(enc, all);
  for (std::int64_t s = 0; s < all.batch(); ++s) {
    Batch one(c, {}, 0);
    one.ids.assign(all.ids.begin() + all.cu[std::size_t(s)], all.ids.begin() + all.cu[std::size_t(s) + 1]);
    one.cu = {0, std::int32_t(one.ids.size())};
    const std::vector<float> alone = embed(enc, one);
    for (std::int64_t j = 0; j < c.hidden; ++j)
      EXPECT_NEAR(alone[std::size_t(j)], batched[std::size_t(s * c.hidden + j)], 1e-6) << s << ", " << j;
  }
}

TEST(BertEncoder, SameBitsForAnyThreadCount) {
  const int saved = num_threads();
  const BertConfig c = small_config(96, 6, 2);
  BertEncoder enc(c, BertWeights::random(c, 9));
  const Batch b(c, {70, 3, 80, 80, 80, 17}, 13);
  set_num_threads(1);
  const std::vector<float> first = embed(enc, b);
  for (int threads : {2, 3, 8}) {
    set_num_threads(threads);
    EXPECT_EQ(embed(enc, b), first) << threads << " threads";
  }
  set_num_threads(saved);
}

TEST(BertEncoder, LoadsWhatWasSavedWithAndWithoutTheBertPrefix) {
  const BertConfig c = small_config(40, 5, 2);
  BertEncoder enc(c, BertWeights::random(c, 21));
  const Batch b(c, {9, 30}, 4);
  const std::vector<float> want = embed(enc, b);
  testing::TempDir dir;
  testing::write_bytes(dir.file("config.json"),
                       R"({"architectures": ["BertModel"], "hidden_act": "gelu", "vocab_size": 97,
                           "hidden_size": 40, "num_hidden_layers": 2, "num_attention_heads": 5,
                           "intermediate_size": 88, "max_position_embeddings": 80, "type_vocab_size": 2,
                           "layer_norm_eps": 1e-12, "position_embedding_type": "absolute"})");
  std::vector<SafeTensorEntry> entries = enc.weights().entries(c);
  save_safetensors(dir.file("model.safetensors"), entries);
  BertEncoder loaded = BertEncoder::load(dir.file(""));
  EXPECT_EQ(loaded.config().intermediate, 88);
  EXPECT_EQ(embed(loaded, b), want);
  for (SafeTensorEntry& e : entries) e.name = "bert." + e.name;  // BertForMaskedLM and friends
  save_safetensors(dir.file("model.safetensors"), entries);
  BertEncoder prefixed = BertEncoder::load(dir.file(""));
  EXPECT_EQ(embed(prefixed, b), want);
}

TEST(BertConfig, MalformedOrUnsupportedConfigsAreTypedErrors) {
  const std::string base = R"("vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
                              "num_attention_heads": 2, "intermediate_size": 16)";
  EXPECT_EQ(BertConfig::parse_json("{" + base + "}", "c").hidden, 8);
  EXPECT_THROW(BertConfig::parse_json("{" + base, "c"), IoError);
  EXPECT_THROW(BertConfig::parse_json("[1]", "c"), IoError);
  EXPECT_THROW(BertConfig::parse_json(R"({"vocab_size": 10})", "c"), IoError);
  EXPECT_THROW(BertConfig::parse_json(R"({"vocab_size": 10, "hidden_size": "big", "num_hidden_layers": 1,
                                          "num_attention_heads": 2, "intermediate_size": 16})",
                                       "c"),
               IoError);
  EXPECT_THROW(BertConfig::parse_json(R"({"hidden_act": "gelu_new", )" + base + "}", "c"), Unsupported);
  EXPECT_THROW(BertConfig::parse_json(R"({"position_embedding_type": "relative_key", )" + base + "}", "c"),
               Unsupported);
  try {
    BertConfig::parse_json(R"({"vocab_size": 10, "hidden_size": 9, "num_hidden_layers": 1,
                              "num_attention_heads": 2, "intermediate_size": 16})",
                           "c");
    FAIL() << "heads must divide hidden";
  } catch (const InvalidArgument& e) {
    EXPECT_EQ(e.argument(), "heads");
  }
  EXPECT_THROW(BertEncoder::load("/nonexistent/model"), IoError);
}

TEST(BertEncoder, BadArgumentsAreTypedErrorsAndWriteNothing) {
  const BertConfig c = small_config();
  BertEncoder enc(c, BertWeights::random(c, 1));
  const Batch good(c, {4, 6}, 2);
  auto expect = [&](const char* argument, std::vector<std::int32_t> ids, std::vector<std::int32_t> cu,
                    std::int64_t rows, std::vector<std::int32_t> types = {}) {
    std::vector<float> out(std::size_t(std::max<std::int64_t>(rows, 1) * c.hidden), 42.f);
    try {
      enc.embed(ids, cu, Tensor::contiguous(out.data(), DType::f32, {rows, c.hidden}), types);
      ADD_FAILURE() << "no error for " << argument;
    } catch (const InvalidArgument& e) {
      EXPECT_EQ(e.argument(), argument) << e.what();
    }
    for (float v : out) ASSERT_EQ(v, 42.f) << argument;
  };
  std::vector<std::int32_t> ids = good.ids;
  ids[3] = std::int32_t(c.vocab_size);
  expect("ids", ids, good.cu, 2);
  ids[3] = -1;
  expect("ids", ids, good.cu, 2);
  expect("cu_seqlens", good.ids, {0, 4}, 1);              // does not end at the last id
  expect("cu_seqlens", good.ids, {1, 4, 10}, 2);          // does not start at 0
  expect("cu_seqlens", good.ids, {0, 6, 4, 10}, 3);       // decreasing
  expect("cu_seqlens", good.ids, {10}, 0);                // no sequence
  expect("cu_seqlens", std::vector<std::int32_t>(81, 1), {0, 81}, 1);  // past max_positions
  expect("token_types", good.ids, good.cu, 2, {0, 1});
  expect("token_types", good.ids, good.cu, 2, std::vector<std::int32_t>(10, 2));
  expect("out", good.ids, good.cu, 3);
  std::vector<float> hidden(10 * 48, 42.f);
  EXPECT_THROW(enc.forward(good.ids, good.cu, Tensor::contiguous(hidden.data(), DType::f32, {10, 47})),
               InvalidArgument);
  BertWeights w = BertWeights::random(c, 1);
  w.layers[1].w_in.pop_back();
  EXPECT_THROW(BertEncoder(c, std::move(w)), InvalidArgument);
}

}  // namespace
}  // namespace mha
