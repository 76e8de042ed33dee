// NaN and inf (README, "NaN and inf"), the same on every ISA, in the naive path and in the float64
// oracle: a visible score that is not finite before the mask (NaN or inf in q or k, or a q·k
// beyond f32) or NaN / +inf after it makes the row NaN with lse NaN; -inf in the mask masks; a row
// with no visible key is zeros with lse -inf; and V near f32's limit gives its finite answer.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <optional>
#include <vector>

#include "check/case.h"
#include "check/random.h"
#include "mha/attention.h"
#include "mha/decode.h"
#include "mha/reference.h"
#include "mha/runtime.h"

namespace mha {
namespace {

using check::normal_vector;
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

class NonFinite : public ::testing::TestWithParam<Isa> {
 protected:
  void SetUp() override { scoped_.emplace(GetParam()); }
  std::optional<check::ScopedIsa> scoped_;
};

std::string isa_name(const ::testing::TestParamInfo<Isa>& info) { return std::string(to_string(info.param)); }
INSTANTIATE_TEST_SUITE_P(Isas, NonFinite, ::testing::ValuesIn(supported_isas()), isa_name);

// One head, Nq = Nk = 70 (a full and a partial 64-key tile), D = 8; causal optional.
struct Inputs {
  static constexpr std::int64_t N = 70, D = 8;
  std::vector<float> q = normal_vector(N * D, 1), k = normal_vector(N * D, 2), v = normal_vector(N * D, 3);
  std::vector<float> mask = std::vector<float>(N * N, 0.f);
  bool use_mask = false, causal = false;

  AttentionOptions options() const {
    AttentionOptions o;
    o.causal = causal;
    if (use_mask) o.mask = Tensor::contiguous(const_cast<float*>(mask.data()), DType::f32, {N, N});
    return o;
  }
  Tensor t(const std::vector<float>& x) const {
    return Tensor::bshd(const_cast<float*>(x.data()), DType::f32, 1, N, 1, D);
  }
};

// Runs the flash kernel, the naive path and the oracle; per row, NaN in all three or none, and
// finite rows within a loose bound of the oracle (the accuracy bar itself is the sweep's job).
void expect_rule(const Inputs& in, const std::vector<bool>& nan_rows) {
  const std::int64_t N = Inputs::N, D = Inputs::D;
  std::vector<float> out(N * D), naive(N * D), lse(N), naive_lse(N);
  const Tensor tl = Tensor::contiguous(lse.data(), DType::f32, {1, 1, N});
  const Tensor tnl = Tensor::contiguous(naive_lse.data(), DType::f32, {1, 1, N});
  attention(in.t(in.q), in.t(in.k), in.t(in.v), in.t(out), in.options(), &tl);
  reference::attention_naive(in.t(in.q), in.t(in.k), in.t(in.v), in.t(naive), in.options(), &tnl);
  const reference::Result ref = reference::attention_f64(in.t(in.q), in.t(in.k), in.t(in.v), in.options());
  for (std::int64_t i = 0; i < N; ++i) {
    const bool want_nan = nan_rows[std::size_t(i)];
    EXPECT_EQ(std::isnan(ref.lse[std::size_t(i)]), want_nan) << "oracle row " << i;
    EXPECT_EQ(std::isnan(lse[std::size_t(i)]), want_nan) << "flash lse row " << i;
    EXPECT_EQ(std::isnan(naive_lse[std::size_t(i)]), want_nan) << "naive lse row " << i;
    for (std::int64_t d = 0; d < D; ++d) {
      const std::size_t e = std::size_t(i * D + d);
      ASSERT_EQ(std::isnan(out[e]), want_nan) << "flash row " << i << " = " << out[e];
      ASSERT_EQ(std::isnan(naive[e]), want_nan) << "naive row " << i;
      ASSERT_EQ(std::isnan(ref.out[e]), want_nan) << "oracle row " << i;
      if (!want_nan) {
        ASSERT_NEAR(out[e], ref.out[e], 1e-4 * (1 + std::fabs(ref.out[e]))) << "row " << i;
      }
    }
  }
}

std::vector<bool> rows(std::initializer_list<std::int64_t> nan) {
  std::vector<bool> r(Inputs::N, false);
  for (std::int64_t i : nan) r[std::size_t(i)] = true;
  return r;
}

std::vector<bool> rows_from(std::int64_t first) {  // causal: rows first.. see key `first`
  std::vector<bool> r(Inputs::N, false);
  for (std::int64_t i = first; i < Inputs::N; ++i) r[std::size_t(i)] = true;
  return r;
}

TEST_P(NonFinite, NaNOrInfInQPoisonsItsRow) {
  for (float bad : {kNaN, kInf, -kInf}) {
    Inputs in;
    in.q[5 * Inputs::D + 3] = bad;
    in.q[66 * Inputs::D + 0] = bad;  // in the partial tile's rows
    expect_rule(in, rows({5, 66}));
  }
}

TEST_P(NonFinite, NaNOrInfInAVisibleKeyPoisonsEveryRowThatSeesIt) {
  for (float bad : {kNaN, kInf, -kInf}) {
    Inputs in;
    in.k[40 * Inputs::D + 2] = bad;
    expect_rule(in, std::vector<bool>(Inputs::N, true));  // every row sees key 40
    in.causal = true;
    expect_rule(in, rows_from(40));  // causal: only rows 40.. see it
  }
}

TEST_P(NonFinite, TheMaskMasksWithMinusInfAndPoisonsWithNaNOrPlusInf) {
  Inputs in;
  in.use_mask = true;
  in.mask[3 * Inputs::N + 10] = -kInf;  // masks one key of row 3
  for (std::int64_t j = 0; j < Inputs::N; ++j)
    in.mask[std::size_t(7 * Inputs::N + j)] = -kInf;  // row 7: none
  in.mask[20 * Inputs::N + 65] = kNaN;
  in.mask[21 * Inputs::N + 2] = kInf;
  expect_rule(in, rows({20, 21}));
  // Row 7 saw no key: zeros and lse -inf, as before.
  std::vector<float> out(Inputs::N * Inputs::D), lse(Inputs::N);
  const Tensor tl = Tensor::contiguous(lse.data(), DType::f32, {1, 1, Inputs::N});
  attention(in.t(in.q), in.t(in.k), in.t(in.v), in.t(out), in.options(), &tl);
  EXPECT_EQ(lse[7], -kInf);
  for (std::int64_t d = 0; d < Inputs::D; ++d) EXPECT_EQ(out[std::size_t(7 * Inputs::D + d)], 0.f);
}

TEST_P(NonFinite, ScoresBeyondF32AreNaNOnEveryIsa) {
  Inputs in;
  for (std::int64_t d = 0; d < Inputs::D; ++d) {
    in.q[9 * Inputs::D + d] = 1e20f;  // q·k of row 9 is about 1e40: past f32
    in.k[30 * Inputs::D + d] = 1e20f;
  }
  expect_rule(in, rows({9}));
}

TEST_P(NonFinite, ValuesNearTheF32LimitGiveTheirFiniteAnswer) {
  Inputs in;
  for (float& x : in.q) x = 0;  // uniform attention: out = mean of v
  for (std::int64_t j = 0; j < Inputs::N; ++j)
    for (std::int64_t d = 0; d < Inputs::D; ++d)
      in.v[std::size_t(j * Inputs::D + d)] = d == 0 ? 3e38f : -3e38f;
  expect_rule(in, rows({}));
  std::vector<float> out(Inputs::N * Inputs::D);
  attention(in.t(in.q), in.t(in.k), in.t(in.v), in.t(out));
  EXPECT_NEAR(out[0], 3e38f, 3e38f * 1e-5f);
  EXPECT_NEAR(out[1], -3e38f, 3e38f * 1e-5f);
}

// Decode follows the same rule: a NaN in a cached key poisons every query that sees it, and
// values near f32's limit stay finite across chunks (300 tokens: two 256-token chunks).
TEST_P(NonFinite, DecodeFollowsTheSameRule) {
  const std::int64_t L = 300, Hkv = 2, Hq = 4, D = 8;
  KvCache cache({.kv_heads = Hkv, .head_dim = D, .dtype = CacheDType::f32, .max_seqs = 1, .max_seq_len = L});
  const std::int32_t s = cache.add_sequence();
  std::vector<float> k = normal_vector(L * Hkv * D, 4), v(L * Hkv * D, 3e38f);
  k[(280 * Hkv + 1) * D + 5] = kNaN;  // token 280, kv head 1: query heads 2 and 3
  cache.fill(s, Tensor::contiguous(k.data(), DType::f32, {L, Hkv, D}),
             Tensor::contiguous(v.data(), DType::f32, {L, Hkv, D}));
  std::vector<float> q(Hq * D, 0.f), out(Hq * D), lse(Hq);
  const Tensor tl = Tensor::contiguous(lse.data(), DType::f32, {1, Hq, 1});
  decode_attention(Tensor::bshd(q.data(), DType::f32, 1, 1, Hq, D), cache, {&s, 1}, {},
                   Tensor::bshd(out.data(), DType::f32, 1, 1, Hq, D), {}, &tl);
  for (std::int64_t h = 0; h < Hq; ++h) {
    const bool nan = h >= 2;
    EXPECT_EQ(std::isnan(lse[std::size_t(h)]), nan) << "head " << h;
    for (std::int64_t d = 0; d < D; ++d) {
      const float o = out[std::size_t(h * D + d)];
      if (nan)
        EXPECT_TRUE(std::isnan(o)) << "head " << h;
      else
        EXPECT_NEAR(o, 3e38f, 3e38f * 1e-5f) << "head " << h;
    }
  }
}

}  // namespace
}  // namespace mha
