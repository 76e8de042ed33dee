// Every class of bad input: the right exception type, the argument named, the value and the
// expectation in the message, and the output untouched.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <vector>

#include "mha/attention.h"
#include "mha/errors.h"
#include "mha/reference.h"

namespace mha {
namespace {

constexpr std::int64_t B = 2, Nq = 5, Nk = 7, Hq = 4, Hkv = 2, D = 8;

struct Call {
  std::vector<float> qb = std::vector<float>(B * Nq * Hq * D, 0.5f);
  std::vector<float> kb = std::vector<float>(B * Nk * Hkv * D, 0.5f);
  std::vector<float> vb = std::vector<float>(B * Nk * Hkv * D, 0.5f);
  std::vector<float> ob = std::vector<float>(B * Nq * Hq * D, 42.0f);
  std::vector<float> lb = std::vector<float>(B * Hq * Nq, 42.0f);
  std::vector<float> mb = std::vector<float>(B * Hq * Nq * Nk, 0.0f);
  Tensor q = Tensor::bshd(qb.data(), DType::f32, B, Nq, Hq, D);
  Tensor k = Tensor::bshd(kb.data(), DType::f32, B, Nk, Hkv, D);
  Tensor v = Tensor::bshd(vb.data(), DType::f32, B, Nk, Hkv, D);
  Tensor out = Tensor::bshd(ob.data(), DType::f32, B, Nq, Hq, D);
  Tensor lse = Tensor::contiguous(lb.data(), DType::f32, {B, Hq, Nq});
  AttentionOptions opt;
  bool with_lse = true;

  void run() const { attention(q, k, v, out, opt, with_lse ? &lse : nullptr); }
  bool untouched() const {
    for (float x : ob)
      if (x != 42.0f) return false;
    for (float x : lb)
      if (x != 42.0f) return false;
    return true;
  }
};

// Runs the mutated call; expects E naming `argument` with every fragment in its message.
template <class E>
void expect_error(const std::function<void(Call&)>& mutate, const std::string& argument,
                  std::vector<std::string> fragments) {
  Call c;
  mutate(c);
  try {
    c.run();
    ADD_FAILURE() << "no exception; expected one about " << argument;
  } catch (const E& e) {
    EXPECT_EQ(e.argument(), argument) << e.what();
    for (const auto& f : fragments)
      EXPECT_NE(std::string(e.what()).find(f), std::string::npos) << e.what() << " lacks '" << f << "'";
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
  }
  EXPECT_TRUE(c.untouched()) << "output written on error (" << argument << ")";
  // The naive path validates the same way.
  Call n;
  mutate(n);
  EXPECT_THROW(reference::attention_naive(n.q, n.k, n.v, n.out, n.opt, n.with_lse ? &n.lse : nullptr), Error);
  EXPECT_TRUE(n.untouched());
}

TEST(Validate, TheBaseCallIsValid) {
  Call c;
  EXPECT_NO_THROW(c.run());
  EXPECT_FALSE(c.untouched());
}

TEST(Validate, RankMismatch) {
  expect_error<InvalidArgument>([](Call& c) { c.q.rank = 3; }, "q", {"rank 3", "expected rank 4"});
  expect_error<InvalidArgument>(
      [](Call& c) { c.lse = Tensor::contiguous(c.lb.data(), DType::f32, {B * Hq * Nq}); }, "lse",
      {"rank 1", "expected rank 3"});
}

TEST(Validate, ShapeMismatch) {
  expect_error<InvalidArgument>([](Call& c) { c.k.shape[0] = 1; }, "k",
                                {"batch", "= 1", "expected q.shape[0] = 2"});
  expect_error<InvalidArgument>([](Call& c) { c.v.shape[1] = 6; }, "v",
                                {"seqlen_k", "= 6", "expected k.shape[1] = 7"});
  expect_error<InvalidArgument>([](Call& c) { c.v.shape[2] = 1; }, "v",
                                {"kv heads", "expected k.shape[2] = 2"});
  expect_error<InvalidArgument>(
      [](Call& c) {
        c.k.shape[3] = 4;
        c.v.shape[3] = 4;
      },
      "k", {"head dim", "= 4", "expected q.shape[3] = 8"});
  expect_error<InvalidArgument>([](Call& c) { c.out.shape[1] = 4; }, "out",
                                {"out.shape", "expected [2, 5, 4, 8]"});
  expect_error<InvalidArgument>([](Call& c) { c.lse.shape[2] = 4; }, "lse", {"expected [2, 4, 5]"});
}

TEST(Validate, HeadsNotAMultiple) {
  expect_error<InvalidArgument>(
      [](Call& c) {
        c.k.shape[2] = 3;
        c.v.shape[2] = 3;
      },
      "k", {"(kv heads) = 3", "(heads) = 4", "multiple"});
  expect_error<InvalidArgument>(
      [](Call& c) {
        c.k.shape[2] = 0;
        c.v.shape[2] = 0;
      },
      "k", {"expected >= 1"});
}

TEST(Validate, HeadDimOutOfRange) {
  expect_error<InvalidArgument>([](Call& c) { c.q.shape[3] = c.k.shape[3] = 0; }, "q",
                                {"head dim) = 0", "expected 1 to 256"});
  expect_error<Unsupported>([](Call& c) { c.q.shape[3] = c.k.shape[3] = 300; }, "q",
                            {"head dim) = 300", "expected 1 to 256"});
  expect_error<Unsupported>([](Call& c) { c.v.shape[3] = 257; }, "v", {"= 257", "expected 1 to 256"});
}

TEST(Validate, ValueHeadDimMustMatchOut) {
  // Dv != D is supported; the output must then have Dv.
  expect_error<InvalidArgument>([](Call& c) { c.v.shape[3] = 4; }, "out", {"expected [2, 5, 4, 4]"});
}

TEST(Validate, UnsupportedDtype) {
  expect_error<Unsupported>([](Call& c) { c.q.dtype = DType(9); }, "q",
                            {"dtype", "expected f32, f16 or bf16"});
  expect_error<InvalidArgument>([](Call& c) { c.k.dtype = DType::f16; }, "k",
                                {"k.dtype = f16", "q.dtype = f32"});
  expect_error<Unsupported>([](Call& c) { c.out.dtype = DType::bf16; }, "out",
                            {"out.dtype = bf16", "expected f32 or q's f32"});
  expect_error<Unsupported>([](Call& c) { c.lse.dtype = DType::f16; }, "lse",
                            {"lse.dtype = f16", "expected f32"});
}

TEST(Validate, MaskNotBroadcastable) {
  expect_error<InvalidArgument>(
      [](Call& c) {
        c.opt.mask = Tensor::contiguous(c.mb.data(), DType::f32, {B, Hq, Nq, Nk - 1});
      },
      "mask", {"does not broadcast to [2, 4, 5, 7]", "seqlen_k", "expected 1 or 7"});
  expect_error<InvalidArgument>(
      [](Call& c) {
        c.opt.mask = Tensor::contiguous(c.mb.data(), DType::f32, {3, 1, 1, Nk});
      },
      "mask", {"batch", "expected 1 or 2"});
  expect_error<InvalidArgument>(
      [](Call& c) {
        c.opt.mask = Tensor::contiguous(c.mb.data(), DType::f32, {2, Nq, Nk});
      },
      "mask", {"heads", "expected 1 or 4"});
  // Broadcastable forms are accepted: [Nk], [Nq, Nk], [B, 1, 1, Nk], [1, Hq, Nq, Nk].
  for (auto shape : {std::initializer_list<std::int64_t>{Nk}, {Nq, Nk}, {B, 1, 1, Nk}, {1, Hq, Nq, Nk}}) {
    Call c;
    c.opt.mask = Tensor::contiguous(c.mb.data(), DType::f32, shape);
    EXPECT_NO_THROW(c.run());
  }
}

TEST(Validate, NullDataWithElements) {
  expect_error<InvalidArgument>([](Call& c) { c.v.data = nullptr; }, "v", {"v.data is null", "224 elements"});
  expect_error<InvalidArgument>([](Call& c) { c.out.data = nullptr; }, "out", {"null"});
  // Null is fine for an empty tensor: zero queries means nothing to do.
  Call c;
  c.q.shape[1] = c.out.shape[1] = c.lse.shape[2] = 0;
  c.q.data = c.out.data = c.lse.data = nullptr;
  EXPECT_NO_THROW(c.run());
}

TEST(Validate, OutputAliasingAnInput) {
  expect_error<InvalidArgument>([](Call& c) { c.out.data = c.qb.data(); }, "out", {"overlaps q"});
  expect_error<InvalidArgument>([](Call& c) { c.out.data = c.vb.data() + 1; }, "out", {"overlaps v"});
  expect_error<InvalidArgument>([](Call& c) { c.lse.data = c.ob.data(); }, "lse", {"overlaps out"});
  expect_error<InvalidArgument>(
      [](Call& c) {
        c.opt.mask = Tensor::contiguous(c.ob.data(), DType::f32, {Nq, Nk});
      },
      "out", {"overlaps mask"});
  expect_error<InvalidArgument>([](Call& c) { c.out.strides[1] = 0; }, "out", {"overlapping elements"});
}

TEST(Validate, NegativeOrOverflowingSizesAndStrides) {
  expect_error<InvalidArgument>([](Call& c) { c.q.shape[1] = -5; }, "q", {"q.shape[1] = -5 is negative"});
  expect_error<InvalidArgument>([](Call& c) { c.k.strides[1] = -16; }, "k",
                                {"k.strides[1] = -16 is negative"});
  expect_error<InvalidArgument>([](Call& c) { c.k.strides[0] = std::int64_t(1) << 62; }, "k", {"overflows"});
  expect_error<InvalidArgument>([](Call& c) { c.v.shape[1] = c.k.shape[1] = std::int64_t(1) << 61; }, "k",
                                {"overflows"});
}

TEST(Validate, CuSeqlens) {
  static const std::int32_t good_q[] = {0, 3, 10}, good_k[] = {0, 5, 14};
  auto varlen = [](Call& c) {
    c.q = Tensor::bshd(c.qb.data(), DType::f32, 1, 10, Hq, D);
    c.k = Tensor::bshd(c.kb.data(), DType::f32, 1, 14, Hkv, D);
    c.v = Tensor::bshd(c.vb.data(), DType::f32, 1, 14, Hkv, D);
    c.out = Tensor::bshd(c.ob.data(), DType::f32, 1, 10, Hq, D);
    c.lse = Tensor::contiguous(c.lb.data(), DType::f32, {1, Hq, 10});
    c.opt.cu_seqlens_q = good_q;
    c.opt.cu_seqlens_k = good_k;
  };
  {
    Call c;
    varlen(c);
    EXPECT_NO_THROW(c.run());
  }
  static const std::int32_t not_monotone[] = {0, 6, 3, 10}, bad_total[] = {0, 3, 9}, bad_start[] = {1, 3, 10};
  static const std::int32_t short_k[] = {0, 14};
  expect_error<InvalidArgument>(
      [&](Call& c) {
        varlen(c);
        c.opt.cu_seqlens_q = not_monotone;
      },
      "cu_seqlens_k", {"3 entries, expected 4"});
  expect_error<InvalidArgument>(
      [&](Call& c) {
        varlen(c);
        c.opt.cu_seqlens_q = not_monotone;
        c.opt.cu_seqlens_k = std::span<const std::int32_t>(not_monotone);
      },
      "cu_seqlens_q", {"cu_seqlens_q[2] = 3 < cu_seqlens_q[1] = 6", "non-decreasing"});
  expect_error<InvalidArgument>(
      [&](Call& c) {
        varlen(c);
        c.opt.cu_seqlens_q = bad_total;
      },
      "cu_seqlens_q", {"= 9", "packed total 10"});
  expect_error<InvalidArgument>(
      [&](Call& c) {
        varlen(c);
        c.opt.cu_seqlens_q = bad_start;
      },
      "cu_seqlens_q", {"cu_seqlens_q[0] = 1", "expected 0"});
  expect_error<InvalidArgument>(
      [&](Call& c) {
        varlen(c);
        c.opt.cu_seqlens_k = short_k;
      },
      "cu_seqlens_k", {"2 entries", "expected 3"});
  expect_error<InvalidArgument>(
      [&](Call& c) {
        varlen(c);
        c.opt.cu_seqlens_k = {};
      },
      "cu_seqlens_k", {"both or neither"});
  expect_error<InvalidArgument>(
      [&](Call& c) {
        c.opt.cu_seqlens_q = good_q;
        c.opt.cu_seqlens_k = good_k;
      },
      "q", {"q.shape[0] = 2", "expected 1"});
}

TEST(Validate, WindowOutOfRange) {
  expect_error<InvalidArgument>([](Call& c) { c.opt.window_left = -2; }, "window_left",
                                {"window_left = -2", "expected -1"});
  expect_error<InvalidArgument>([](Call& c) { c.opt.window_right = -7; }, "window_right",
                                {"window_right = -7"});
  expect_error<InvalidArgument>(
      [](Call& c) {
        c.opt.causal = true;
        c.opt.window_right = 3;
      },
      "window_right", {"causal", "expected -1 or 0"});
}

TEST(Validate, NonFiniteScale) {
  expect_error<InvalidArgument>([](Call& c) { c.opt.scale = std::numeric_limits<float>::quiet_NaN(); },
                                "scale", {"expected a finite number"});
  expect_error<InvalidArgument>([](Call& c) { c.opt.scale = std::numeric_limits<float>::infinity(); },
                                "scale", {"finite"});
}

TEST(Validate, ReferenceValidatesToo) {
  Call c;
  c.k.shape[2] = 3;
  EXPECT_THROW(reference::attention_f64(c.q, c.k, c.v, c.opt), InvalidArgument);
  EXPECT_THROW(attention_flops(c.q, c.k, c.v, c.opt), InvalidArgument);
}

}  // namespace
}  // namespace mha
