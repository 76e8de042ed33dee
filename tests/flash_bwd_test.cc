// The backward and dropout: the float64 oracle against finite differences, mha's gradients against
// the oracle with FlashAttention's bar over a sweep (every ISA), determinism across thread counts,
// the dropout generator and mask, and the errors of bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <vector>

#include "check/backward_case.h"
#include "check/case.h"
#include "check/random.h"
#include "kernels/philox.h"
#include "mha/backward.h"
#include "mha/errors.h"
#include "mha/reference.h"
#include "mha/runtime.h"

namespace mha {
namespace {

using check::Case;
using check::MaskKind;

TEST(Philox, MatchesRandom123KnownAnswers) {
  // Random123's kat_vectors for philox4x32_10.
  struct Kat {
    std::uint32_t ctr[4], key[2], out[4];
  };
  const Kat kats[] = {
      {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
      {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
       {0xffffffff, 0xffffffff},
       {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
      {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
       {0xa4093822, 0x299f31d0},
       {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
  };
  for (const Kat& k : kats) {
    std::uint32_t c[4] = {k.ctr[0], k.ctr[1], k.ctr[2], k.ctr[3]};
    detail::philox4x32_10(c, k.key);
    for (int i = 0; i < 4; ++i) EXPECT_EQ(c[i], k.out[i]) << std::hex << k.ctr[0] << " word " << i;
  }
}

TEST(Dropout, KeptFractionIsOneMinusP) {
  AttentionOptions o;
  o.dropout_p = 0.17f;
  o.dropout_seed = 12345;
  const std::int64_t B = 2, H = 4, Nq = 300, Nk = 500;  // 1.2e6 elements
  std::vector<std::uint8_t> keep(std::size_t(B * H * Nq * Nk));
  dropout_keep_mask(o, B, H, Nq, Nk, keep);
  double kept = 0;
  for (auto x : keep) kept += x;
  EXPECT_NEAR(kept / double(keep.size()), 0.83, 0.01);
  // A different seed or offset draws a different mask; p = 0 keeps everything.
  std::vector<std::uint8_t> other(keep.size());
  o.dropout_offset = 1;
  dropout_keep_mask(o, B, H, Nq, Nk, other);
  EXPECT_NE(keep, other);
  o.dropout_p = 0;
  dropout_keep_mask(o, B, H, Nq, Nk, other);
  for (auto x : other) ASSERT_EQ(x, 1);
}

TEST(Dropout, MaskArgumentsAreChecked) {
  AttentionOptions o;
  o.dropout_p = 0.5f;
  std::vector<std::uint8_t> keep(10);
  EXPECT_THROW(dropout_keep_mask(o, 1, 1, 2, 4, keep), InvalidArgument);  // 8 != 10
  EXPECT_THROW(dropout_keep_mask(o, -1, 1, 2, 5, keep), InvalidArgument);
  o.dropout_p = 1.0f;
  EXPECT_THROW(dropout_keep_mask(o, 1, 1, 2, 5, keep), InvalidArgument);
}

// Values that are multiples of 2^-8 in [-2, 2], so x ± 2^-6 is exact in f32.
std::vector<float> grid_values(std::size_t n, std::uint64_t seed) {
  check::Random rng(seed);
  std::vector<float> v(n);
  for (auto& x : v) x = float(std::round(std::clamp(rng.normal(), -2.0, 2.0) * 256.0) / 256.0);
  return v;
}

// The oracle's gradient is the derivative of sum(dout ∘ attention_f64): checked against central
// differences on tiny shapes, with a mask, causal alignment, GQA and dropout.
TEST(ReferenceBackward, MatchesFiniteDifferences) {
  struct Shape {
    std::int64_t nq, nk, hq, hkv, d, dv;
    bool causal, bias;
    float dropout;
  };
  const Shape shapes[] = {{3, 5, 2, 1, 4, 3, false, true, 0.0f},
                          {4, 3, 2, 2, 3, 2, true, false, 0.3f},
                          {5, 7, 3, 1, 2, 5, false, false, 0.5f}};
  for (const Shape& s : shapes) {
    auto q = grid_values(std::size_t(s.nq * s.hq * s.d), 1), k = grid_values(std::size_t(s.nk * s.hkv * s.d), 2),
         v = grid_values(std::size_t(s.nk * s.hkv * s.dv), 3), dout = grid_values(std::size_t(s.nq * s.hq * s.dv), 4),
         bias = grid_values(std::size_t(s.hq * s.nq * s.nk), 5);
    AttentionOptions o;
    o.causal = s.causal;
    o.dropout_p = s.dropout;
    o.dropout_seed = 99;
    if (s.bias) o.mask = Tensor::contiguous(bias.data(), DType::f32, {1, s.hq, s.nq, s.nk});
    const auto tq = Tensor::bshd(q.data(), DType::f32, 1, s.nq, s.hq, s.d);
    const auto tk = Tensor::bshd(k.data(), DType::f32, 1, s.nk, s.hkv, s.d);
    const auto tv = Tensor::bshd(v.data(), DType::f32, 1, s.nk, s.hkv, s.dv);
    const auto tg = Tensor::bshd(dout.data(), DType::f32, 1, s.nq, s.hq, s.dv);
    const reference::Gradients g = reference::attention_backward_f64(tq, tk, tv, tg, o);
    const auto loss = [&] {
      const reference::Result r = reference::attention_f64(tq, tk, tv, o);
      double l = 0;
      for (std::size_t i = 0; i < r.out.size(); ++i) l += r.out[i] * double(dout[i]);
      return l;
    };
    const float h = 0x1.0p-6f;
    std::vector<float>* inputs[] = {&q, &k, &v};
    const std::vector<double>* grads[] = {&g.dq, &g.dk, &g.dv};
    double max_grad = 0;
    for (int t = 0; t < 3; ++t) {
      std::vector<float>& x = *inputs[t];
      ASSERT_EQ(x.size(), grads[t]->size());
      for (std::size_t i = 0; i < x.size(); ++i) {
        const float x0 = x[i];
        x[i] = x0 + h;
        const double up = loss();
        x[i] = x0 - h;
        const double down = loss();
        x[i] = x0;
        const double fd = (up - down) / (2.0 * double(h));
        max_grad = std::max(max_grad, std::fabs((*grads[t])[i]));
        EXPECT_NEAR((*grads[t])[i], fd, 2e-3 * (1 + std::fabs(fd))) << "input " << t << " element " << i;
      }
    }
    EXPECT_GT(max_grad, 0.05);  // the check is not vacuous
  }
}

class BackwardSweep : public ::testing::TestWithParam<Case> {};

std::string case_name(const ::testing::TestParamInfo<Case>& info) { return std::to_string(info.index); }

std::vector<Case> backward_cases() {
  std::vector<Case> cases = {
      {.b = 1, .nq = 64, .nk = 64, .hq = 1, .hkv = 1, .d = 64},
      {.b = 2, .nq = 17, .nk = 33, .hq = 4, .hkv = 2, .d = 40, .dv = 24},
      {.b = 1, .nq = 130, .nk = 129, .hq = 2, .hkv = 2, .d = 128, .causal = true},
      {.b = 1, .nq = 100, .nk = 30, .hq = 2, .hkv = 1, .d = 16, .causal = true},   // Nq > Nk: empty rows
      {.b = 1, .nq = 30, .nk = 150, .hq = 3, .hkv = 1, .d = 8, .causal = true},    // Nq < Nk
      {.b = 2, .nq = 65, .nk = 70, .hq = 2, .hkv = 1, .d = 32, .mask = MaskKind::padding},
      {.b = 1, .nq = 40, .nk = 90, .hq = 2, .hkv = 2, .d = 24, .mask = MaskKind::bias, .bhsd = true},
      {.b = 1, .nq = 70, .nk = 200, .hq = 2, .hkv = 1, .d = 20, .window_left = 30, .window_right = 5},
      // D = 1 in f32 is the bar's edge: the naive path's max error is a single rounding there, and P
      // rebuilt from the f32 lse carries 2^-24·|lse| in every entry of a row; over 120 seeds 1-2 %
      // of the gradients landed above 3× (up to 4.9×), none at D >= 2.
      {.b = 1, .nq = 80, .nk = 150, .hq = 1, .hkv = 1, .d = 1, .dv = 3, .mask = MaskKind::head_bias},
      {.b = 1, .nq = 20, .nk = 70, .hq = 2, .hkv = 1, .d = 256, .dv = 200},
      // A group of 16 query heads on one KV head: dK and dV each sum 16 · 480 rows. Run as one f32
      // chain across the group's heads and query blocks, dv had 3.6-4.0× the naive error here (whose
      // products sum per head, then over heads); each block's product now starts a fresh sum.
      {.b = 1, .nq = 480, .nk = 480, .hq = 16, .hkv = 1, .d = 4},
      // Rows that see one key (P = 1: the naive dS is exactly 0): with delta from the forward's O
      // and P from its lse, dq and dk had errors where the naive path has none (dropout rounds
      // O = v / (1 - p) apart from dP). Then short rows inside one key block, with a window, a bias
      // and empty rows, whose softmax the backward now rebuilds too.
      {.b = 3, .nq = 13, .nk = 1, .hq = 4, .hkv = 1, .d = 128, .mask = MaskKind::bias, .dropout_p = 0.17f},
      {.b = 2, .nq = 89, .nk = 11, .hq = 1, .hkv = 1, .d = 80, .causal = true, .window_left = 23,
       .mask = MaskKind::bias},
      {.b = 1, .nq = 80, .nk = 96, .hq = 4, .hkv = 2, .d = 64, .causal = true, .dropout_p = 0.17f},
      {.b = 2, .nq = 33, .nk = 65, .hq = 2, .hkv = 2, .d = 48, .mask = MaskKind::bias, .dropout_p = 0.5f},
      {.b = 1, .hq = 4, .hkv = 1, .d = 32, .seqlens_q = {5, 0, 70, 33}, .seqlens_k = {9, 12, 66, 0}},
      {.b = 1, .hq = 2, .hkv = 2, .d = 64, .causal = true, .seqlens_q = {40, 65}, .seqlens_k = {64, 65},
       .dropout_p = 0.25f},
  };
  std::vector<Case> all;
  for (const Case& c : cases)
    for (DType dt : {DType::f32, DType::f16, DType::bf16})
      for (bool out_f32 : {true, false}) {
        if (dt == DType::f32 && !out_f32) continue;
        Case x = c;
        x.dtype = dt;
        x.out_f32 = out_f32;
        x.seed = all.size() + 1;
        all.push_back(x);
      }
  return all;
}

TEST_P(BackwardSweep, GradientsMeetTheBarOnEveryIsa) {
  const Case& c = GetParam();
  const check::CaseData data(c);
  const check::BackwardBaseline base = check::compute_backward_baseline(c, data);
  for (Isa isa : supported_isas()) {
    const check::GradAccuracy a =
        check::measure_backward(base, check::run_backward(c, data, base, isa), c.out_f32 ? DType::f32 : c.dtype);
    const char* names[] = {"dq", "dk", "dv"};
    for (int i = 0; i < 3; ++i)
      EXPECT_LE(a.max_err[i], 3 * a.naive_err[i] + a.floor[i])
          << to_string(isa) << " " << names[i] << " " << c.shape_string() << " " << c.options_string()
          << " naive " << a.naive_err[i];
    EXPECT_TRUE(a.finite) << to_string(isa);
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, BackwardSweep, ::testing::ValuesIn(backward_cases()), case_name);

// Gradients (and the dropout forward) are bitwise the same for any thread count; with one KV head
// the driver splits the keys into several dq chunks, so their fixed-order sum is exercised.
TEST(Backward, BitwiseEqualAcrossThreadCounts) {
  const Case c{.b = 1, .nq = 300, .nk = 520, .hq = 2, .hkv = 1, .d = 64, .causal = true, .dropout_p = 0.1f};
  const check::CaseData data(c);
  const check::BackwardBaseline base = check::compute_backward_baseline(c, data);
  const int before = num_threads();
  std::vector<check::GradRun> runs;
  for (int t : {1, 2, 3}) {
    set_num_threads(t);
    runs.push_back(check::run_backward(c, data, base, active_isa()));
  }
  set_num_threads(before);
  for (std::size_t r = 1; r < runs.size(); ++r)
    for (std::size_t i = 0; i < 3; ++i) {
      ASSERT_EQ(runs[r].grads[i].size(), runs[0].grads[i].size());
      EXPECT_EQ(0, std::memcmp(runs[r].grads[i].data(), runs[0].grads[i].data(),
                               runs[0].grads[i].size() * sizeof(double)))
          << "threads run " << r << " grad " << i;
    }
}

// The dropout mask belongs to (sequence, head, row, key): the same outputs in BSHD and BHSD, and
// for a sequence packed in a varlen batch or alone in a padded one.
TEST(Dropout, SameMaskForEveryLayoutAndPacking) {
  const std::int64_t H = 2, D = 16;
  const std::int32_t lens[] = {37, 70};
  const std::int32_t cu[] = {0, 37, 107};
  const std::int64_t total = 107;
  auto q = check::normal_vector(std::size_t(total * H * D), 1), k = check::normal_vector(std::size_t(total * H * D), 2),
       v = check::normal_vector(std::size_t(total * H * D), 3);
  AttentionOptions o;
  o.dropout_p = 0.4f;
  o.dropout_seed = 7;
  o.dropout_offset = 3;
  std::vector<float> packed(std::size_t(total * H * D));
  AttentionOptions ov = o;
  ov.cu_seqlens_q = cu;
  ov.cu_seqlens_k = cu;
  attention(Tensor::bshd(q.data(), DType::f32, 1, total, H, D), Tensor::bshd(k.data(), DType::f32, 1, total, H, D),
            Tensor::bshd(v.data(), DType::f32, 1, total, H, D), Tensor::bshd(packed.data(), DType::f32, 1, total, H, D),
            ov);
  // Sequence 1 alone as batch entry 1 of a padded batch [2, 70]: sequence index 1 as in the packing.
  const std::int64_t L = lens[1];
  std::vector<float> pq(std::size_t(2 * L * H * D), 0.0f), pk = pq, pv = pq, pout = pq;
  std::memcpy(pq.data() + L * H * D, q.data() + 37 * H * D, std::size_t(L * H * D) * sizeof(float));
  std::memcpy(pk.data() + L * H * D, k.data() + 37 * H * D, std::size_t(L * H * D) * sizeof(float));
  std::memcpy(pv.data() + L * H * D, v.data() + 37 * H * D, std::size_t(L * H * D) * sizeof(float));
  attention(Tensor::bshd(pq.data(), DType::f32, 2, L, H, D), Tensor::bshd(pk.data(), DType::f32, 2, L, H, D),
            Tensor::bshd(pv.data(), DType::f32, 2, L, H, D), Tensor::bshd(pout.data(), DType::f32, 2, L, H, D), o);
  for (std::int64_t i = 0; i < L * H * D; ++i) ASSERT_EQ(pout[std::size_t(L * H * D + i)], packed[std::size_t(37 * H * D + i)]) << i;
  // BHSD copy of the padded batch: the same values.
  std::vector<float> tq(pq.size()), tk(pq.size()), tv(pq.size()), tout(pq.size());
  for (std::int64_t b = 0; b < 2; ++b)
    for (std::int64_t s = 0; s < L; ++s)
      for (std::int64_t h = 0; h < H; ++h)
        for (std::int64_t d = 0; d < D; ++d) {
          const std::size_t from = std::size_t(((b * L + s) * H + h) * D + d), to = std::size_t(((b * H + h) * L + s) * D + d);
          tq[to] = pq[from];
          tk[to] = pk[from];
          tv[to] = pv[from];
        }
  attention(Tensor::bhsd(tq.data(), DType::f32, 2, L, H, D), Tensor::bhsd(tk.data(), DType::f32, 2, L, H, D),
            Tensor::bhsd(tv.data(), DType::f32, 2, L, H, D), Tensor::bhsd(tout.data(), DType::f32, 2, L, H, D), o);
  for (std::int64_t b = 0; b < 2; ++b)
    for (std::int64_t s = 0; s < L; ++s)
      for (std::int64_t h = 0; h < H; ++h)
        for (std::int64_t d = 0; d < D; ++d)
          ASSERT_EQ(tout[std::size_t(((b * H + h) * L + s) * D + d)], pout[std::size_t(((b * L + s) * H + h) * D + d)]);
  // And dropout changed the output (it is not silently off).
  std::vector<float> plain(pout.size());
  o.dropout_p = 0;
  attention(Tensor::bshd(pq.data(), DType::f32, 2, L, H, D), Tensor::bshd(pk.data(), DType::f32, 2, L, H, D),
            Tensor::bshd(pv.data(), DType::f32, 2, L, H, D), Tensor::bshd(plain.data(), DType::f32, 2, L, H, D), o);
  EXPECT_NE(plain, pout);
}

// The dropout forward meets the forward's bar against the oracle run with the same mask.
TEST(Dropout, ForwardMeetsTheBar) {
  for (Isa isa : supported_isas())
    for (DType dt : {DType::f32, DType::bf16}) {
      const Case c{.b = 2, .nq = 77, .nk = 130, .hq = 4, .hkv = 2, .d = 64, .dtype = dt, .causal = true,
                   .dropout_p = 0.3f};
      const check::CaseData data(c);
      const check::Baseline base = check::compute_baseline(c, data);
      const check::Accuracy a = check::evaluate(c, data, base, isa);
      EXPECT_TRUE(check::meets_bar(a)) << to_string(isa) << " " << to_string(dt) << " err " << a.max_err
                                       << " naive " << a.naive_max_err;
    }
}

// Rows with every key masked get zero dq; keys no query sees get zero dk, dv; nothing is NaN.
TEST(Backward, MaskedRowsAndUnseenKeysGetZeroGradients) {
  const std::int64_t Nq = 100, Nk = 30, D = 16;  // causal, Nq > Nk: rows < 70 see nothing
  auto q = check::normal_vector(Nq * D, 1), k = check::normal_vector(Nk * D, 2), v = check::normal_vector(Nk * D, 3),
       g = check::normal_vector(Nq * D, 4);
  std::vector<float> out(Nq * D), lse(Nq), dq(Nq * D, 7.0f), dk(Nk * D, 7.0f), dv(Nk * D, 7.0f);
  AttentionOptions o;
  o.causal = true;
  const auto tq = Tensor::bshd(q.data(), DType::f32, 1, Nq, 1, D), tk = Tensor::bshd(k.data(), DType::f32, 1, Nk, 1, D),
             tv = Tensor::bshd(v.data(), DType::f32, 1, Nk, 1, D), to = Tensor::bshd(out.data(), DType::f32, 1, Nq, 1, D),
             tg = Tensor::bshd(g.data(), DType::f32, 1, Nq, 1, D);
  const auto tl = Tensor::contiguous(lse.data(), DType::f32, {1, 1, Nq});
  attention(tq, tk, tv, to, o, &tl);
  attention_backward(tq, tk, tv, to, tg, tl, Tensor::bshd(dq.data(), DType::f32, 1, Nq, 1, D),
                     Tensor::bshd(dk.data(), DType::f32, 1, Nk, 1, D), Tensor::bshd(dv.data(), DType::f32, 1, Nk, 1, D), o);
  for (std::int64_t i = 0; i < Nq * D; ++i) {
    ASSERT_TRUE(std::isfinite(dq[i]));
    if (i < (Nq - Nk) * D) {
      ASSERT_EQ(dq[i], 0.0f) << i;
    }
  }
  for (std::int64_t i = 0; i < Nk * D; ++i) ASSERT_TRUE(std::isfinite(dk[i]) && std::isfinite(dv[i]));
  // Padding: keys >= 10 masked for every query: their dk and dv are exactly zero.
  std::vector<float> mask(Nk, 0.0f);
  for (std::int64_t j = 10; j < Nk; ++j) mask[j] = -std::numeric_limits<float>::infinity();
  AttentionOptions om;
  om.mask = Tensor::contiguous(mask.data(), DType::f32, {1, 1, 1, Nk});
  const auto tq2 = Tensor::bshd(q.data(), DType::f32, 1, Nk, 1, D), to2 = Tensor::bshd(out.data(), DType::f32, 1, Nk, 1, D),
             tg2 = Tensor::bshd(g.data(), DType::f32, 1, Nk, 1, D);
  const auto tl2 = Tensor::contiguous(lse.data(), DType::f32, {1, 1, Nk});
  attention(tq2, tk, tv, to2, om, &tl2);
  attention_backward(tq2, tk, tv, to2, tg2, tl2, Tensor::bshd(dq.data(), DType::f32, 1, Nk, 1, D),
                     Tensor::bshd(dk.data(), DType::f32, 1, Nk, 1, D), Tensor::bshd(dv.data(), DType::f32, 1, Nk, 1, D), om);
  for (std::int64_t i = 10 * D; i < Nk * D; ++i) {
    ASSERT_EQ(dk[i], 0.0f) << i;
    ASSERT_EQ(dv[i], 0.0f) << i;
  }
}

constexpr std::int64_t N = 8, H = 2, D = 4;

// Each class of bad input throws a typed error naming the argument, and writes nothing.
TEST(Backward, BadInputIsRejectedAndNothingIsWritten) {
  std::vector<float> q(N * H * D, 1.0f), k = q, v = q, out = q, g = q, lse(H * N, 0.0f);
  std::vector<float> dq(N * H * D, 7.0f), dk = dq, dv = dq;
  std::vector<std::uint16_t> half(N * H * D);
  const auto T = [&](std::vector<float>& x, std::int64_t n = N, std::int64_t d = D) {
    return Tensor::bshd(x.data(), DType::f32, 1, n, H, d);
  };
  const Tensor tl = Tensor::contiguous(lse.data(), DType::f32, {1, H, N});
  struct Bad {
    const char* argument;
    std::function<void()> call;
  };
  AttentionOptions drop1;
  drop1.dropout_p = 1.0f;
  AttentionOptions dropnan;
  dropnan.dropout_p = std::numeric_limits<float>::quiet_NaN();
  const Tensor short_lse = Tensor::contiguous(lse.data(), DType::f32, {1, H, N - 1});
  const Tensor f16_dq = Tensor::bshd(half.data(), DType::f16, 1, N, H, D);
  const Tensor overlapping_dk = Tensor::bshd(q.data(), DType::f32, 1, N, H, D);
  const Tensor dv_on_dq = Tensor::bshd(dq.data(), DType::f32, 1, N, H, D);
  const Bad cases[] = {
      {"dout", [&] { attention_backward(T(q), T(k), T(v), T(out), T(g, N - 1), tl, T(dq), T(dk), T(dv)); }},
      {"dq", [&] { attention_backward(T(q), T(k), T(v), T(out), T(g), tl, T(dq, N, D - 1), T(dk), T(dv)); }},
      {"dq", [&] { attention_backward(T(q), T(k), T(v), T(out), T(g), tl, f16_dq, T(dk), T(dv)); }},
      {"dk", [&] { attention_backward(T(q), T(k), T(v), T(out), T(g), tl, T(dq), overlapping_dk, T(dv)); }},
      {"dv", [&] { attention_backward(T(q), T(k), T(v), T(out), T(g), tl, T(dq), T(dk), dv_on_dq); }},
      {"lse", [&] { attention_backward(T(q), T(k), T(v), T(out), T(g), short_lse, T(dq), T(dk), T(dv)); }},
      {"dropout_p", [&] { attention_backward(T(q), T(k), T(v), T(out), T(g), tl, T(dq), T(dk), T(dv), drop1); }},
      {"dropout_p", [&] { attention_backward(T(q), T(k), T(v), T(out), T(g), tl, T(dq), T(dk), T(dv), dropnan); }},
      {"dropout_p", [&] { attention(T(q), T(k), T(v), T(dq), drop1); }},
  };
  for (const Bad& b : cases) {
    try {
      b.call();
      ADD_FAILURE() << "no error for " << b.argument;
    } catch (const Error& e) {
      EXPECT_EQ(e.argument(), b.argument) << e.what();
    }
    for (std::size_t i = 0; i < dq.size(); ++i) {
      ASSERT_EQ(dq[i], 7.0f) << b.argument;
      ASSERT_EQ(dk[i], 7.0f) << b.argument;
      ASSERT_EQ(dv[i], 7.0f) << b.argument;
    }
  }
}

}  // namespace
}  // namespace mha
