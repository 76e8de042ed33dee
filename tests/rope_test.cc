// RoPE against the direct formula, both conventions, offsets per sequence, partial rotary,
// dtypes, the relative-position property, and every bad input.
#include "mha/rope.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "check/random.h"
#include "mha/errors.h"
#include "mha/runtime.h"
#include "runtime/dtype_convert.h"

namespace mha {
namespace {

// The rotation of element d of a row at position p, straight from the definition, in double.
double direct(const std::vector<float>& row, std::int64_t d, std::int64_t p, std::int64_t rd, double theta,
              RopeStyle style) {
  if (d >= rd) return row[std::size_t(d)];
  const std::int64_t half = rd / 2;
  std::int64_t i, a, b;
  if (style == RopeStyle::interleaved) {
    i = d / 2;
    a = 2 * i;
    b = 2 * i + 1;
  } else {
    i = d % half;
    a = i;
    b = i + half;
  }
  const double angle = double(p) * std::pow(theta, -2.0 * double(i) / double(rd));
  const double xa = row[std::size_t(a)], xb = row[std::size_t(b)];
  return d == a ? xa * std::cos(angle) - xb * std::sin(angle) : xa * std::sin(angle) + xb * std::cos(angle);
}

TEST(Rope, MatchesTheDirectFormula) {
  const std::int64_t B = 3, S = 7, H = 2, D = 40;
  const std::int32_t offsets[] = {0, 13, 500};
  for (RopeStyle style : {RopeStyle::interleaved, RopeStyle::half}) {
    for (std::int64_t rd : {40, 24}) {  // full and partial rotary
      for (bool bhsd : {false, true}) {
        const RopeTable table(rd, 1024, 10000.0);
        const auto x0 = check::normal_vector(std::size_t(B * S * H * D), 1);
        auto x = x0;
        const Tensor t = bhsd ? Tensor::bhsd(x.data(), DType::f32, B, S, H, D)
                              : Tensor::bshd(x.data(), DType::f32, B, S, H, D);
        table.apply(t, style, offsets);
        for (std::int64_t b = 0; b < B; ++b)
          for (std::int64_t s = 0; s < S; ++s)
            for (std::int64_t h = 0; h < H; ++h) {
              std::vector<float> row(static_cast<std::size_t>(D));
              for (std::int64_t d = 0; d < D; ++d)
                row[std::size_t(d)] =
                    x0[std::size_t(b * t.strides[0] + s * t.strides[1] + h * t.strides[2] + d)];
              for (std::int64_t d = 0; d < D; ++d) {
                const double want = direct(row, d, offsets[b] + s, rd, 10000.0, style);
                ASSERT_NEAR(x[std::size_t(b * t.strides[0] + s * t.strides[1] + h * t.strides[2] + d)], want,
                            2e-6 * (1 + std::fabs(want)))
                    << "style " << int(style) << " rd " << rd << " b " << b << " s " << s << " d " << d;
              }
            }
      }
    }
  }
}

TEST(Rope, WhichElementsPairUp) {
  // x = e0 at position 1, one frequency pair per half (theta^0 = 1 rad for pair 0).
  const RopeTable table(4, 4, 10000.0);
  std::vector<float> a = {1, 0, 0, 0}, b = {1, 0, 0, 0};
  const std::int32_t one[] = {1};
  table.apply(Tensor::bshd(a.data(), DType::f32, 1, 1, 1, 4), RopeStyle::interleaved, one);
  table.apply(Tensor::bshd(b.data(), DType::f32, 1, 1, 1, 4), RopeStyle::half, one);
  EXPECT_NEAR(a[0], std::cos(1.0), 1e-7);
  EXPECT_NEAR(a[1], std::sin(1.0), 1e-7);  // GPT-J: x0 pairs with x1
  EXPECT_EQ(a[2], 0.0f);
  EXPECT_NEAR(b[0], std::cos(1.0), 1e-7);
  EXPECT_EQ(b[1], 0.0f);
  EXPECT_NEAR(b[2], std::sin(1.0), 1e-7);  // NeoX: x0 pairs with x2
}

TEST(Rope, PositionZeroIsTheIdentity) {
  const RopeTable table(64, 8);
  const auto x0 = check::normal_vector(2 * 3 * 64, 2);
  auto x = x0;
  table.apply(Tensor::bshd(x.data(), DType::f32, 2, 1, 3, 64), RopeStyle::half);
  EXPECT_EQ(x, x0);
}

TEST(Rope, DotProductsDependOnlyOnTheDistance) {
  // The point of RoPE: <rope(q, m), rope(k, n)> is a function of m - n.
  const std::int64_t D = 128;
  const RopeTable table(D, 4096, 500000.0);
  const auto q0 = check::normal_vector(D, 3), k0 = check::normal_vector(D, 4);
  auto dot_at = [&](std::int32_t m, std::int32_t n, RopeStyle style) {
    auto q = q0, k = k0;
    const std::int32_t om[] = {m}, on[] = {n};
    table.apply(Tensor::bshd(q.data(), DType::f32, 1, 1, 1, D), style, om);
    table.apply(Tensor::bshd(k.data(), DType::f32, 1, 1, 1, D), style, on);
    double s = 0;
    for (std::int64_t d = 0; d < D; ++d) s += double(q[std::size_t(d)]) * k[std::size_t(d)];
    return s;
  };
  for (RopeStyle style : {RopeStyle::interleaved, RopeStyle::half}) {
    EXPECT_NEAR(dot_at(5, 3, style), dot_at(1000, 998, style), 2e-3);
    EXPECT_NEAR(dot_at(7, 7, style), dot_at(3000, 3000, style), 2e-3);
    EXPECT_GT(std::fabs(dot_at(5, 3, style) - dot_at(5, 40, style)), 1e-3);  // and does depend on it
  }
}

TEST(Rope, SixteenBitInputsRoundTheF32Result) {
  const std::int64_t S = 9, D = 32;
  const std::int32_t offsets[] = {100};
  const RopeTable table(D, 256);
  for (DType dt : {DType::f16, DType::bf16}) {
    const auto x0 = check::normal_vector(std::size_t(S * D), 5);
    std::vector<std::uint16_t> x(x0.size());
    std::vector<float> ref(x0.size());
    for (std::size_t i = 0; i < x0.size(); ++i) {
      detail::store_f32(x.data(), dt, std::int64_t(i), x0[i]);
      ref[i] = detail::load_f32(x.data(), dt, std::int64_t(i));
    }
    table.apply(Tensor::bshd(x.data(), dt, 1, S, 1, D), RopeStyle::interleaved, offsets);
    table.apply(Tensor::bshd(ref.data(), DType::f32, 1, S, 1, D), RopeStyle::interleaved, offsets);
    const double eps = dt == DType::f16 ? 0x1.0p-11 : 0x1.0p-8;  // half an ulp, relative
    for (std::size_t i = 0; i < x.size(); ++i)
      ASSERT_NEAR(detail::load_f32(x.data(), dt, std::int64_t(i)), ref[i], eps * std::fabs(ref[i]) + 1e-30)
          << i;
  }
}

TEST(Rope, SameBitsForAnyThreadCount) {
  const RopeTable table(64, 2048);
  const std::int32_t offsets[] = {3, 900};
  const auto x0 = check::normal_vector(2 * 300 * 4 * 64, 6);
  const int saved = num_threads();
  std::vector<std::vector<float>> outs;
  for (int threads : {1, 2, 5}) {
    set_num_threads(threads);
    auto x = x0;
    table.apply(Tensor::bshd(x.data(), DType::f32, 2, 300, 4, 64), RopeStyle::half, offsets);
    outs.push_back(std::move(x));
  }
  set_num_threads(saved);
  EXPECT_EQ(outs[0], outs[1]);
  EXPECT_EQ(outs[0], outs[2]);
}

template <class F>
void expect_invalid(F&& f, const std::string& argument, const std::string& fragment) {
  try {
    f();
    ADD_FAILURE() << "no exception; expected one about " << argument;
  } catch (const InvalidArgument& e) {
    EXPECT_EQ(e.argument(), argument) << e.what();
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

TEST(Rope, BadTablesAndInputs) {
  expect_invalid([] { RopeTable(7, 10); }, "rotary_dim",
                 "rotary_dim = 7, expected an even number from 2 to 256");
  expect_invalid([] { RopeTable(0, 10); }, "rotary_dim", "rotary_dim = 0");
  expect_invalid([] { RopeTable(258, 10); }, "rotary_dim", "258");
  expect_invalid([] { RopeTable(64, 0); }, "max_positions", "max_positions = 0");
  expect_invalid([] { RopeTable(64, 10, -1.0); }, "theta", "theta = -1");
  expect_invalid([] { RopeTable(64, 10, NAN); }, "theta", "finite");

  const RopeTable table(32, 64);
  const auto x0 = check::normal_vector(2 * 10 * 2 * 32, 7);
  auto x = x0;
  const Tensor t = Tensor::bshd(x.data(), DType::f32, 2, 10, 2, 32);
  const std::int32_t too_far[] = {0, 60}, negative[] = {-1, 0}, one[] = {0};
  expect_invalid([&] { table.apply(t, RopeStyle::half, too_far); }, "offsets",
                 "positions 60..69 of batch entry 1, expected within [0, 64)");
  expect_invalid([&] { table.apply(t, RopeStyle::half, negative); }, "offsets", "positions -1..8");
  expect_invalid([&] { table.apply(t, RopeStyle::half, one); }, "offsets", "1 offsets for batch 2");
  EXPECT_EQ(x, x0) << "x changed on error";
  expect_invalid([&] { table.apply(Tensor::bshd(x.data(), DType::f32, 2, 10, 4, 16), RopeStyle::half); }, "x",
                 "head dim) = 16, expected >= rotary_dim = 32");
  expect_invalid(
      [&] {
        table.apply(Tensor::contiguous(x.data(), DType::f32, {20, 2, 32}), RopeStyle::half);
      },
      "x", "rank 3, expected rank 4");
  Tensor overlapping = t;
  overlapping.strides[2] = 0;
  expect_invalid([&] { table.apply(overlapping, RopeStyle::half); }, "x", "overlapping elements");
  Tensor null = t;
  null.data = nullptr;
  expect_invalid([&] { table.apply(null, RopeStyle::half); }, "x", "null");
  EXPECT_EQ(x, x0);
}

}  // namespace
}  // namespace mha
