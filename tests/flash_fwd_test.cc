// Semantics of the flash forward beyond the sweep: empty rows, skipped tiles, large logits,
// determinism across thread counts, layouts, and the FLOP count.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "check/case.h"
#include "check/random.h"
#include "mha/attention.h"
#include "mha/reference.h"
#include "mha/runtime.h"
#include "runtime/dtype_convert.h"

namespace mha {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

class EveryIsa : public ::testing::TestWithParam<Isa> {
 protected:
  void SetUp() override { scoped_.emplace(GetParam()); }
  std::optional<check::ScopedIsa> scoped_;
};

std::string isa_name(const ::testing::TestParamInfo<Isa>& info) { return std::string(to_string(info.param)); }

INSTANTIATE_TEST_SUITE_P(Isas, EveryIsa, ::testing::ValuesIn(supported_isas()), isa_name);

TEST_P(EveryIsa, FullyMaskedRowsGiveZerosAndMinusInfLse) {
  const std::int64_t B = 2, N = 70, H = 2, D = 32;
  auto q = check::normal_vector(B * N * H * D, 1), k = check::normal_vector(B * N * H * D, 2),
       v = check::normal_vector(B * N * H * D, 3);
  // Batch 0: every key masked. Batch 1: keys >= 10 masked.
  std::vector<float> mask(B * N, 0.0f);
  for (std::int64_t j = 0; j < N; ++j) mask[j] = -kInf;
  for (std::int64_t j = 10; j < N; ++j) mask[N + j] = -kInf;
  std::vector<float> out(B * N * H * D, 7.0f), lse(B * H * N, 7.0f);
  AttentionOptions opt;
  opt.mask = Tensor::contiguous(mask.data(), DType::f32, {B, 1, 1, N});
  const Tensor tlse = Tensor::contiguous(lse.data(), DType::f32, {B, H, N});
  attention(Tensor::bshd(q.data(), DType::f32, B, N, H, D), Tensor::bshd(k.data(), DType::f32, B, N, H, D),
            Tensor::bshd(v.data(), DType::f32, B, N, H, D), Tensor::bshd(out.data(), DType::f32, B, N, H, D),
            opt, &tlse);
  for (std::int64_t i = 0; i < N * H * D; ++i) ASSERT_EQ(out[i], 0.0f) << i;
  for (std::int64_t i = 0; i < H * N; ++i) ASSERT_EQ(lse[i], -kInf) << i;
  for (std::int64_t i = N * H * D; i < B * N * H * D; ++i) ASSERT_TRUE(std::isfinite(out[i]));
  for (std::int64_t i = H * N; i < B * H * N; ++i) ASSERT_TRUE(std::isfinite(lse[i]));
}

TEST_P(EveryIsa, CausalWithMoreQueriesThanKeysZeroesTheTopRows) {
  // Bottom-right alignment: query i sees keys j <= i + Nk - Nq, so rows i < Nq - Nk see nothing.
  const std::int64_t Nq = 100, Nk = 30, D = 16;
  auto q = check::normal_vector(Nq * D, 4), k = check::normal_vector(Nk * D, 5),
       v = check::normal_vector(Nk * D, 6);
  std::vector<float> out(Nq * D, 7.0f), lse(Nq);
  AttentionOptions opt;
  opt.causal = true;
  const Tensor tlse = Tensor::contiguous(lse.data(), DType::f32, {1, 1, Nq});
  attention(Tensor::bshd(q.data(), DType::f32, 1, Nq, 1, D), Tensor::bshd(k.data(), DType::f32, 1, Nk, 1, D),
            Tensor::bshd(v.data(), DType::f32, 1, Nk, 1, D),
            Tensor::bshd(out.data(), DType::f32, 1, Nq, 1, D), opt, &tlse);
  for (std::int64_t i = 0; i < Nq; ++i) {
    if (i < Nq - Nk) {
      EXPECT_EQ(lse[i], -kInf) << i;
      for (std::int64_t d = 0; d < D; ++d) EXPECT_EQ(out[i * D + d], 0.0f);
    } else {
      EXPECT_TRUE(std::isfinite(lse[i])) << i;
    }
  }
  // The first visible row (i = Nq - Nk) sees only key 0: its output is v[0] exactly.
  for (std::int64_t d = 0; d < D; ++d) EXPECT_FLOAT_EQ(out[(Nq - Nk) * D + d], v[d]);
}

TEST_P(EveryIsa, KeysOutsideEveryWindowAreNeverRead) {
  // Only keys in [Nk - Nq - left, Nk) are visible to any query; the rest hold NaN. A kernel that
  // computed (then masked) those tiles would leak NaN through 0·NaN in P·V.
  const std::int64_t Nq = 64, Nk = 1000, D = 32, left = 10;
  auto q = check::normal_vector(Nq * D, 7), k = check::normal_vector(Nk * D, 8),
       v = check::normal_vector(Nk * D, 9);
  const std::int64_t first_visible = Nk - Nq - left;
  for (std::int64_t j = 0; j < first_visible * D; ++j) k[j] = v[j] = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> out(Nq * D);
  AttentionOptions opt;
  opt.causal = true;
  opt.window_left = left;
  attention(Tensor::bshd(q.data(), DType::f32, 1, Nq, 1, D), Tensor::bshd(k.data(), DType::f32, 1, Nk, 1, D),
            Tensor::bshd(v.data(), DType::f32, 1, Nk, 1, D),
            Tensor::bshd(out.data(), DType::f32, 1, Nq, 1, D), opt);
  for (float x : out) ASSERT_TRUE(std::isfinite(x));
}

// `x` stored as dtype dt.
std::vector<std::uint8_t> stored_as(const std::vector<float>& x, DType dt) {
  std::vector<std::uint8_t> out(x.size() * detail::elem_size(dt));
  for (std::size_t i = 0; i < x.size(); ++i) detail::store_f32(out.data(), dt, std::int64_t(i), x[i]);
  return out;
}

TEST_P(EveryIsa, ValuesPastAWindowEdgeInsideATileAreNeverRead) {
  // Right window 3, no causal: the first 64 rows see keys [0, 67), an odd end inside the second
  // tile, while key 67 (NaN in V) is visible to every later row. 8 query heads per KV head, so V
  // is packed once per call (bf16 pairs or f32 panels): key 67 must not reach rows 0..63 (0·NaN),
  // neither through the pair (66, 67) nor through a panel row.
  const std::int64_t N = 128, H = 8, D = 32;
  const auto q32 = check::normal_vector(N * H * D, 10), k32 = check::normal_vector(N * D, 11);
  auto v32 = check::normal_vector(N * D, 12);
  for (std::int64_t d = 0; d < D; ++d) v32[67 * D + d] = std::numeric_limits<float>::quiet_NaN();
  for (DType dt : {DType::f32, DType::f16, DType::bf16}) {
    auto q = stored_as(q32, dt), k = stored_as(k32, dt), v = stored_as(v32, dt);
    std::vector<float> out(N * H * D);
    AttentionOptions opt;
    opt.window_right = 3;
    attention(Tensor::bshd(q.data(), dt, 1, N, H, D), Tensor::bshd(k.data(), dt, 1, N, 1, D),
              Tensor::bshd(v.data(), dt, 1, N, 1, D), Tensor::bshd(out.data(), DType::f32, 1, N, H, D), opt);
    for (std::int64_t i = 0; i < N * H * D; ++i) {
      const std::int64_t row = i / (H * D);
      ASSERT_EQ(std::isnan(out[i]), row >= 64) << to_string(dt) << " row " << row;
    }
  }
}

TEST_P(EveryIsa, LargeLogitsDoNotOverflow) {
  for (DType dt : {DType::f32, DType::f16, DType::bf16}) {
    check::Case c{.nq = 100, .nk = 300, .hq = 2, .hkv = 1, .d = 64, .dtype = dt, .causal = true};
    c.scale = 1250.0f;  // |logits| around 1e4
    const check::CaseData data(c);
    const check::Baseline base = check::compute_baseline(c, data);
    const check::Accuracy a = check::evaluate(c, data, base, GetParam());
    EXPECT_TRUE(a.finite);
    EXPECT_TRUE(a.pass) << to_string(dt) << " err " << a.max_err << " naive " << a.naive_max_err;
  }
}

TEST_P(EveryIsa, KeysAndValuesPackedOncePerCallKeepEveryTileEdge) {
  // K and V are packed once per call when 8 or more items read a KV head (here 8 or 16 query heads
  // share one or two): bf16 V pairs for the vdpbf16ps kernel, f32 K rows and V column panels for
  // the others. Odd
  // sequence starts in the packed batch, window edges that start tiles on odd keys or end them
  // short of the sequence, a sequence's odd last key, head dims that leave a narrower last panel
  // (72, 40, 200: rows padded to a vector), an odd head dim (bf16 key rows padded to pairs) and
  // V in bhsd layout must all read the right values.
  const std::vector<std::int32_t> lq = {67, 130, 5, 1}, lk = {71, 133, 9, 64};
  for (DType dt : {DType::f32, DType::f16, DType::bf16})
    for (const check::Case& c : {
             check::Case{.hq = 8, .hkv = 1, .d = 64, .dtype = dt, .seqlens_q = lq, .seqlens_k = lk},
             check::Case{.hq = 8, .hkv = 1, .d = 72, .dtype = dt, .causal = true, .seqlens_q = lq, .seqlens_k = lk},
             check::Case{.hq = 8,
                         .hkv = 1,
                         .d = 48,
                         .dtype = dt,
                         .window_left = 13,
                         .window_right = 3,
                         .seqlens_q = lq,
                         .seqlens_k = lk},
             check::Case{.nq = 77, .nk = 199, .hq = 16, .hkv = 2, .d = 40, .dtype = dt, .window_left = 70,
                         .window_right = 0},
             check::Case{.b = 2, .nq = 129, .nk = 129, .hq = 8, .hkv = 2, .d = 128, .dtype = dt,
                         .mask = check::MaskKind::padding},
             check::Case{.b = 2, .nq = 100, .nk = 150, .hq = 8, .hkv = 1, .d = 96, .dv = 200, .dtype = dt,
                         .bhsd = true},
             check::Case{.nq = 130, .nk = 140, .hq = 8, .hkv = 1, .d = 37, .dtype = dt, .causal = true},
         }) {
      const check::CaseData data(c);
      const check::Baseline base = check::compute_baseline(c, data);
      const check::Accuracy a = check::evaluate(c, data, base, GetParam());
      EXPECT_TRUE(a.pass) << c.shape_string() << " " << c.options_string() << " err " << a.max_err << " naive "
                          << a.naive_max_err;
    }
}

TEST_P(EveryIsa, SameBitsForAnyThreadCount) {
  const int saved = num_threads();
  for (const check::Case& c : {
           check::Case{.b = 2, .nq = 300, .nk = 260, .hq = 4, .hkv = 2, .d = 64, .causal = true},
           check::Case{.nq = 200,
           .nk = 200,
           .hq = 3,
           .hkv = 1,
           .d = 80,
           .dtype = DType::bf16,
           .mask = check::MaskKind::bias},
           check::Case{.hq = 2,
           .hkv = 1,
           .d = 40,
           .window_left = 20,
           .window_right = 5,
           .seqlens_q = {130, 1, 70},
           .seqlens_k = {130, 200, 10}},
       }) {
    const check::CaseData data(c);
    std::vector<std::vector<std::uint8_t>> outs;
    std::vector<std::vector<float>> lses;
    for (int threads : {1, 2, 3, 8}) {
      set_num_threads(threads);
      std::vector<std::uint8_t> storage;
      std::vector<float> lse_storage;
      const Tensor out = data.make_out(storage, c);
      const Tensor lse = data.make_lse(lse_storage);
      attention(data.tq, data.tk, data.tv, out, data.options, &lse);
      outs.push_back(std::move(storage));
      lses.push_back(std::move(lse_storage));
    }
    for (std::size_t i = 1; i < outs.size(); ++i) {
      EXPECT_EQ(0, std::memcmp(outs[0].data(), outs[i].data(), outs[0].size())) << c.shape_string();
      EXPECT_EQ(0, std::memcmp(lses[0].data(), lses[i].data(), lses[0].size() * sizeof(float)));
    }
  }
  set_num_threads(saved);
}

TEST_P(EveryIsa, BshdAndBhsdViewsGiveTheSameBits) {
  const std::int64_t B = 2, N = 90, H = 3, D = 48;
  auto q = check::normal_vector(B * N * H * D, 10), k = check::normal_vector(B * N * H * D, 11),
       v = check::normal_vector(B * N * H * D, 12);
  // The same logical tensors stored BHSD.
  auto to_bhsd = [&](const std::vector<float>& x) {
    std::vector<float> y(x.size());
    for (std::int64_t b = 0; b < B; ++b)
      for (std::int64_t s = 0; s < N; ++s)
        for (std::int64_t h = 0; h < H; ++h)
          for (std::int64_t d = 0; d < D; ++d)
            y[((b * H + h) * N + s) * D + d] = x[((b * N + s) * H + h) * D + d];
    return y;
  };
  auto qh = to_bhsd(q), kh = to_bhsd(k), vh = to_bhsd(v);
  std::vector<float> out1(q.size()), out2(q.size());
  AttentionOptions opt;
  opt.causal = true;
  attention(Tensor::bshd(q.data(), DType::f32, B, N, H, D), Tensor::bshd(k.data(), DType::f32, B, N, H, D),
            Tensor::bshd(v.data(), DType::f32, B, N, H, D), Tensor::bshd(out1.data(), DType::f32, B, N, H, D),
            opt);
  attention(Tensor::bhsd(qh.data(), DType::f32, B, N, H, D), Tensor::bhsd(kh.data(), DType::f32, B, N, H, D),
            Tensor::bhsd(vh.data(), DType::f32, B, N, H, D),
            Tensor::bhsd(out2.data(), DType::f32, B, N, H, D), opt);
  EXPECT_EQ(to_bhsd(out1), out2);
}

TEST(FlashFlops, CountsOnlyVisiblePairs) {
  std::vector<float> buf(1);
  const std::int64_t N = 1000, H = 2, D = 64;
  const Tensor q{buf.data(), DType::f32, 4, {1, N, H, D}, {0, 0, 0, 0}};
  AttentionOptions opt;
  EXPECT_DOUBLE_EQ(attention_flops(q, q, q, opt), 4.0 * H * N * N * D);
  opt.causal = true;
  EXPECT_DOUBLE_EQ(attention_flops(q, q, q, opt), 4.0 * H * D * (N * (N + 1) / 2));
  opt.window_left = 0;  // each query sees only its own key
  EXPECT_DOUBLE_EQ(attention_flops(q, q, q, opt), 4.0 * H * D * N);
}

}  // namespace
}  // namespace mha
