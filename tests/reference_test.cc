// The oracle and the naive path on cases whose answer is known in closed form.
#include "mha/reference.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

namespace mha {
namespace {

TEST(Reference, SingleKeyReturnsItsValue) {
  std::vector<float> q = {0.3f, -1.0f}, k = {2.0f, 0.5f}, v = {1.5f, -2.5f, 4.0f};
  const auto r = reference::attention_f64(Tensor::bshd(q.data(), DType::f32, 1, 1, 1, 2),
                                          Tensor::bshd(k.data(), DType::f32, 1, 1, 1, 2),
                                          Tensor::bshd(v.data(), DType::f32, 1, 1, 1, 3));
  ASSERT_EQ(r.out.size(), 3u);
  EXPECT_DOUBLE_EQ(r.out[0], 1.5);
  EXPECT_DOUBLE_EQ(r.out[1], -2.5);
  EXPECT_DOUBLE_EQ(r.out[2], 4.0);
  // lse = the only score, (0.3·2 - 1·0.5)·scale, with the f32 inputs and the f32 scale read exactly.
  EXPECT_NEAR(r.lse[0], (double(0.3f) * 2 - 0.5) * double(float(1 / std::sqrt(2.0))), 1e-15);
}

TEST(Reference, TwoKeysByHand) {
  // q·k = [1, 0], scale 1: weights e/(e+1), 1/(e+1).
  std::vector<float> q = {1.0f}, k = {1.0f, 0.0f}, v = {10.0f, 20.0f};
  AttentionOptions opt;
  opt.scale = 1.0f;
  const auto r = reference::attention_f64(Tensor::bshd(q.data(), DType::f32, 1, 1, 1, 1),
                                          Tensor::bshd(k.data(), DType::f32, 1, 2, 1, 1),
                                          Tensor::bshd(v.data(), DType::f32, 1, 2, 1, 1), opt);
  const double e = std::exp(1.0);
  EXPECT_NEAR(r.out[0], (10 * e + 20) / (e + 1), 1e-12);
  EXPECT_NEAR(r.lse[0], std::log(e + 1), 1e-15);
  // A mask of -1 on the first key cancels its advantage: plain average.
  std::vector<float> mask = {-1.0f, 0.0f};
  opt.mask = Tensor::contiguous(mask.data(), DType::f32, {2});
  const auto m = reference::attention_f64(Tensor::bshd(q.data(), DType::f32, 1, 1, 1, 1),
                                          Tensor::bshd(k.data(), DType::f32, 1, 2, 1, 1),
                                          Tensor::bshd(v.data(), DType::f32, 1, 2, 1, 1), opt);
  EXPECT_NEAR(m.out[0], 15.0, 1e-12);
}

TEST(Reference, GqaHeadMapping) {
  // Hq = 4, Hkv = 2: heads 0,1 read kv head 0 and heads 2,3 read kv head 1. With one key, the
  // output of a head is its kv head's value.
  std::vector<float> q(4, 1.0f), k(2, 1.0f), v = {5.0f, 9.0f};
  const auto r = reference::attention_f64(Tensor::bshd(q.data(), DType::f32, 1, 1, 4, 1),
                                          Tensor::bshd(k.data(), DType::f32, 1, 1, 2, 1),
                                          Tensor::bshd(v.data(), DType::f32, 1, 1, 2, 1));
  EXPECT_EQ(r.out, (std::vector<double>{5, 5, 9, 9}));
}

TEST(Reference, NaiveAgreesWithOracleInF32) {
  const std::int64_t N = 50, D = 16;
  std::vector<float> q(N * D), k(N * D), v(N * D), out(N * D);
  for (std::int64_t i = 0; i < N * D; ++i) {
    q[i] = std::sin(0.1f * i);
    k[i] = std::cos(0.37f * i);
    v[i] = std::sin(0.11f * i + 1);
  }
  AttentionOptions opt;
  opt.causal = true;
  const auto tq = Tensor::bshd(q.data(), DType::f32, 1, N, 1, D),
             tk = Tensor::bshd(k.data(), DType::f32, 1, N, 1, D),
             tv = Tensor::bshd(v.data(), DType::f32, 1, N, 1, D);
  const auto r = reference::attention_f64(tq, tk, tv, opt);
  reference::attention_naive(tq, tk, tv, Tensor::bshd(out.data(), DType::f32, 1, N, 1, D), opt);
  for (std::int64_t i = 0; i < N * D; ++i) EXPECT_NEAR(out[i], r.out[i], 2e-6);
  EXPECT_EQ(out[0 * D + 3], v[3]);  // row 0 sees only key 0
}

}  // namespace
}  // namespace mha
