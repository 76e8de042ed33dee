// Flash decode against the forward kernel, the naive f32 path and the float64 oracle, on contiguous and paged caches of
// every dtype; bitwise identities (batch, layout, threads); chunked prefill; the batching engine.
#include "mha/decode.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "api/validate.h"
#include "check/case.h"
#include "check/compare.h"
#include "check/random.h"
#include "kernels/flash_fwd.h"
#include "mha/attention.h"
#include "mha/errors.h"
#include "mha/reference.h"
#include "mha/runtime.h"
#include "runtime/dtype_convert.h"

namespace mha {
namespace {

using check::normal_vector;

// A batch of sequences with their own lengths, K/V written into a cache, q for the new tokens.
struct DecodeSetup {
  KvCacheConfig config;
  std::int64_t hq, nq;
  std::vector<std::int64_t> lengths;
  std::uint64_t seed = 1;
};

struct Built {
  std::unique_ptr<KvCache> cache;
  std::vector<std::int32_t> seqs;
  std::vector<std::vector<float>> k, v;  // per sequence [L, Hkv, D] f32 as written
  std::vector<float> q;                  // [B, nq, hq, D]
};

Built build(const DecodeSetup& s) {
  Built b;
  b.cache = std::make_unique<KvCache>(s.config);
  const std::int64_t hkv = s.config.kv_heads, d = s.config.head_dim;
  for (std::size_t i = 0; i < s.lengths.size(); ++i) {
    const std::int64_t L = s.lengths[i];
    b.k.push_back(normal_vector(std::size_t(L * hkv * d), s.seed * 100 + i));
    b.v.push_back(normal_vector(std::size_t(L * hkv * d), s.seed * 100 + 50 + i));
    b.seqs.push_back(b.cache->add_sequence());
  }
  // Written in an interleaved order, so paged sequences get scattered blocks.
  for (std::size_t i = 0; i < s.lengths.size(); ++i) {
    const std::int64_t L = s.lengths[i], half = L / 2;
    auto part = [&](std::vector<float>& x, std::int64_t t0, std::int64_t t1) {
      return Tensor::contiguous(x.data() + t0 * hkv * d, DType::f32, {1, t1 - t0, hkv, d});
    };
    const std::int32_t zero = 0;
    b.cache->write({&b.seqs[i], 1}, {&zero, 1}, part(b.k[i], 0, half), part(b.v[i], 0, half));
  }
  for (std::size_t i = 0; i < s.lengths.size(); ++i) {
    const std::int64_t L = s.lengths[i], half = L / 2;
    auto part = [&](std::vector<float>& x) {
      return Tensor::contiguous(x.data() + half * hkv * d, DType::f32, {1, L - half, hkv, d});
    };
    const std::int32_t pos = std::int32_t(half);
    b.cache->write({&b.seqs[i], 1}, {&pos, 1}, part(b.k[i]), part(b.v[i]));
  }
  b.q = normal_vector(std::size_t(std::int64_t(s.lengths.size()) * s.nq * s.hq * d), s.seed + 7);
  return b;
}

std::vector<float> run_decode(const DecodeSetup& s, Built& b) {
  const std::int64_t B = std::int64_t(s.lengths.size()), d = s.config.head_dim;
  std::vector<float> out(b.q.size(), 99.f);
  decode_attention(Tensor::bshd(b.q.data(), DType::f32, B, s.nq, s.hq, d), *b.cache, b.seqs, {},
                   Tensor::bshd(out.data(), DType::f32, B, s.nq, s.hq, d));
  return out;
}

// The flash forward kernel, the naive f32 path and the oracle on what the cache holds (read back:
// exact for f32/f16/bf16, the dequantized values for int8), one sequence at a time: Nq queries at
// the end, causal. The forward kernel is called directly: attention() would see a decoding step
// and run these very kernels (forward_as_decode.h).
struct Expected {
  std::vector<float> forward, naive;
  std::vector<float> naive_bf16;  // bf16 and int8 caches: the naive path with q, k, v in bf16
  std::vector<double> oracle;
};

std::vector<std::uint16_t> to_bf16(const float* x, std::size_t n) {
  std::vector<std::uint16_t> y(n);
  for (std::size_t i = 0; i < n; ++i) y[i] = detail::f32_to_bf16(x[i]);
  return y;
}

Expected expected(const DecodeSetup& s, Built& b) {
  Expected e;
  const std::int64_t hkv = s.config.kv_heads, d = s.config.head_dim;
  for (std::size_t i = 0; i < s.lengths.size(); ++i) {
    const std::int64_t L = s.lengths[i];
    std::vector<float> k(std::size_t(L * hkv * d)), v(k.size()), out(std::size_t(s.nq * s.hq * d));
    b.cache->read(b.seqs[i], 0, L, k.data(), v.data());
    const Tensor qt =
        Tensor::bshd(b.q.data() + std::int64_t(i) * s.nq * s.hq * d, DType::f32, 1, s.nq, s.hq, d);
    const Tensor kt = Tensor::bshd(k.data(), DType::f32, 1, L, hkv, d),
                 vt = Tensor::bshd(v.data(), DType::f32, 1, L, hkv, d);
    const Tensor ot = Tensor::bshd(out.data(), DType::f32, 1, s.nq, s.hq, d);
    detail::run_flash_fwd(detail::validate_attention("test", qt, kt, vt, &ot, {.causal = true}, nullptr),
                          detail::flash_fwd_kernel(active_isa()));
    e.forward.insert(e.forward.end(), out.begin(), out.end());
    reference::attention_naive(qt, kt, vt, ot, {.causal = true});
    e.naive.insert(e.naive.end(), out.begin(), out.end());
    if (s.config.dtype == CacheDType::bf16 || s.config.dtype == CacheDType::int8) {
      // A bf16 cache is bf16 attention: the AVX-512 BF16 kernel rounds q (and P) to bf16 as the
      // naive bf16 path does, so that path is the yardstick of the same precision. So is an int8
      // cache there (int8 is exact in bf16; q and P are rounded), on that ISA only.
      auto qb = to_bf16(b.q.data() + std::int64_t(i) * s.nq * s.hq * d, out.size());
      auto kb = to_bf16(k.data(), k.size()), vb = to_bf16(v.data(), v.size());
      reference::attention_naive(Tensor::bshd(qb.data(), DType::bf16, 1, s.nq, s.hq, d),
                                 Tensor::bshd(kb.data(), DType::bf16, 1, L, hkv, d),
                                 Tensor::bshd(vb.data(), DType::bf16, 1, L, hkv, d),
                                 Tensor::bshd(out.data(), DType::f32, 1, s.nq, s.hq, d), {.causal = true});
      e.naive_bf16.insert(e.naive_bf16.end(), out.begin(), out.end());
    }
    const auto r = reference::attention_f64(qt, kt, vt, {.causal = true});
    e.oracle.insert(e.oracle.end(), r.out.begin(), r.out.end());
  }
  return e;
}

void expect_matches(const DecodeSetup& s, const std::vector<float>& got, const Expected& e,
                    const std::string& what, Isa isa) {
  const auto a = check::compare(std::span<const float>(got), e.oracle);
  const auto f = check::compare(std::span<const float>(e.forward), e.oracle);
  const auto n = check::compare(std::span<const float>(e.naive), e.oracle);
  double yardstick = std::max(f.max_err, n.max_err);
  const bool bf16_yardstick =
      s.config.dtype == CacheDType::bf16 || (s.config.dtype == CacheDType::int8 && (isa == Isa::avx512bf16 || isa == Isa::avx2));
  if (bf16_yardstick)
    yardstick = std::max(yardstick, check::compare(std::span<const float>(e.naive_bf16), e.oracle).max_err);
  EXPECT_LE(a.max_err, 2 * yardstick + 1e-6 * a.max_ref)
      << what << ": decode " << a.max_err << ", forward " << f.max_err << ", naive f32 " << n.max_err
      << ", same-precision naive "
      << yardstick;
  EXPECT_GE(a.pcc, 0.99999) << what;
}

struct DecodeCase {
  const char* name;
  std::int64_t hq, hkv, d, nq;
  std::vector<std::int64_t> lengths;
};

class DecodeTest : public ::testing::TestWithParam<DecodeCase> {};

TEST_P(DecodeTest, MatchesTheForwardKernelOnEveryLayoutDtypeAndIsa) {
  const DecodeCase& c = GetParam();
  std::int64_t longest = 0;
  for (std::int64_t L : c.lengths) longest = std::max(longest, L);
  for (CacheDType dt : {CacheDType::f32, CacheDType::f16, CacheDType::bf16, CacheDType::int8}) {
    std::vector<float> contiguous_out;
    for (std::int64_t block : {0, 1, 16, 64}) {
      const DecodeSetup s{{.kv_heads = c.hkv,
                           .head_dim = c.d,
                           .dtype = dt,
                           .max_seqs = std::int64_t(c.lengths.size()),
                           .max_seq_len = longest + 3,
                           .block_size = block},
                          c.hq,
                          c.nq,
                          c.lengths};
      Built b = build(s);
      const Expected e = expected(s, b);
      for (Isa isa : supported_isas()) {
        check::ScopedIsa scoped(isa);
        const std::vector<float> out = run_decode(s, b);
        const std::string what = fmt::format("{} block {} isa {}", to_string(dt), block, to_string(isa));
        expect_matches(s, out, e, what, isa);
        if (isa != active_isa()) continue;
      }
      // Paged equals contiguous, bit for bit (on the default ISA).
      const std::vector<float> out = run_decode(s, b);
      if (block == 0)
        contiguous_out = out;
      else
        EXPECT_EQ(out, contiguous_out) << to_string(dt) << " block " << block;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, DecodeTest,
                         ::testing::Values(DecodeCase{"mha", 4, 4, 64, 1, {1, 300, 37}},
                                           DecodeCase{"gqa4", 8, 2, 128, 1, {600, 5, 256, 257}},
                                           DecodeCase{"mqa32", 32, 1, 64, 1, {513, 2}},
                                           DecodeCase{"speculative", 8, 2, 80, 3, {3, 100, 520}},
                                           DecodeCase{"odd_head_dim", 6, 3, 7, 2, {2, 45}},
                                           DecodeCase{"wide_group_odd_dim", 12, 1, 37, 1, {70, 33}},
                                           DecodeCase{"head_dim_1", 2, 1, 1, 1, {9}},
                                           DecodeCase{"head_dim_256", 4, 1, 256, 1, {290}}),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(Decode, BatchedStepEqualsPerSequenceStepsAndAnyThreadCount) {
  for (CacheDType dt : {CacheDType::bf16, CacheDType::int8}) {
    SCOPED_TRACE(dt == CacheDType::bf16 ? "bf16" : "int8");
    const DecodeSetup s{{.kv_heads = 2,
                         .head_dim = 64,
                         .dtype = dt,
                         .max_seqs = 4,
                         .max_seq_len = 2000,
                         .block_size = 16},
                        8,
                        2,
                        {1500, 3, 700, 256}};
    Built b = build(s);
    const std::vector<float> batched = run_decode(s, b);
    const std::int64_t per = s.nq * s.hq * 64;
    for (std::size_t i = 0; i < s.lengths.size(); ++i) {
      std::vector<float> out(static_cast<std::size_t>(per));
      decode_attention(Tensor::bshd(b.q.data() + std::int64_t(i) * per, DType::f32, 1, s.nq, s.hq, 64),
                       *b.cache, {&b.seqs[i], 1}, {},
                       Tensor::bshd(out.data(), DType::f32, 1, s.nq, s.hq, 64));
      EXPECT_TRUE(std::equal(out.begin(), out.end(), batched.begin() + std::int64_t(i) * per))
          << "sequence " << i;
    }
    const int saved = num_threads();
    for (int threads : {1, 3, 8}) {
      set_num_threads(threads);
      EXPECT_EQ(run_decode(s, b), batched) << threads << " threads";
      // One short sequence: fewer chunks than threads, so its heads are shared out among items.
      std::vector<float> out(static_cast<std::size_t>(per));
      decode_attention(Tensor::bshd(b.q.data() + per, DType::f32, 1, s.nq, s.hq, 64), *b.cache,
                       {&b.seqs[1], 1}, {}, Tensor::bshd(out.data(), DType::f32, 1, s.nq, s.hq, 64));
      EXPECT_TRUE(std::equal(out.begin(), out.end(), batched.begin() + per))
          << threads << " threads, one sequence";
    }
    set_num_threads(saved);
  }
}

// x [B, rows, heads, D] of es-byte elements in PyTorch's layout [B, heads, rows, D].
std::vector<std::uint8_t> to_bhsd(const std::vector<std::uint8_t>& x, std::int64_t B, std::int64_t rows,
                                  std::int64_t heads, std::int64_t D, std::size_t es) {
  std::vector<std::uint8_t> y(x.size());
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t t = 0; t < rows; ++t)
      for (std::int64_t h = 0; h < heads; ++h)
        std::memcpy(&y[std::size_t(((b * heads + h) * rows + t) * D) * es],
                    &x[std::size_t(((b * rows + t) * heads + h) * D) * es], std::size_t(D) * es);
  return y;
}

// n normal values (seeded) stored as dt.
std::vector<std::uint8_t> normal_bytes(DType dt, std::size_t n, std::uint64_t seed) {
  const std::vector<float> f = check::normal_vector(n, seed);
  std::vector<std::uint8_t> raw(n * size_of(dt));
  for (std::size_t i = 0; i < n; ++i) detail::store_f32(raw.data(), dt, std::int64_t(i), f[i]);
  return raw;
}

// attention() with one query per sequence, or a short causal step, on K and V laid out as a cache
// (here a prefix of a longer one) is a decoding step and runs the decode kernels: bit for bit what
// attention_with_kvcache gives on that cache, for any thread count. The accuracy of those calls
// is the sweep's (check::sweep_cases, "decoding steps").
TEST(ForwardAsDecode, EqualsTheKvCacheCallBitForBitAndAnyThreadCount) {
  const std::int64_t B = 3, S = 700, Hq = 8, Hkv = 2, D = 64;
  for (DType dt : {DType::f32, DType::bf16}) {
    for (const auto& [nq, causal] : {std::pair<std::int64_t, bool>{1, false}, {5, true}}) {
      const std::vector<std::int32_t> lens(std::size_t(B), 600);
      const std::size_t es = size_of(dt);
      auto bytes = [&](std::size_t n, std::uint64_t seed) { return normal_bytes(dt, n, seed); };
      auto kc = bytes(std::size_t(B * S * Hkv * D), 1), vc = bytes(kc.size() / es, 2);
      auto q = bytes(std::size_t(B * nq * Hq * D), 3);
      const Tensor qt = Tensor::bshd(q.data(), dt, B, nq, Hq, D);
      std::vector<float> want(std::size_t(B * nq * Hq * D)), got(want.size());
      attention_with_kvcache(qt, Tensor::bshd(kc.data(), dt, B, S, Hkv, D), Tensor::bshd(vc.data(), dt, B, S, Hkv, D),
                             lens, Tensor::bshd(want.data(), DType::f32, B, nq, Hq, D), {.causal = causal});
      Tensor k = Tensor::bshd(kc.data(), dt, B, S, Hkv, D), v = Tensor::bshd(vc.data(), dt, B, S, Hkv, D);
      k.shape[1] = v.shape[1] = lens[0];  // the first 600 rows of each entry: a batch stride of S rows
      const int saved = num_threads();
      for (int threads : {1, 2, 5}) {
        set_num_threads(threads);
        std::fill(got.begin(), got.end(), -1.0f);
        attention(qt, k, v, Tensor::bshd(got.data(), DType::f32, B, nq, Hq, D), {.causal = causal});
        EXPECT_EQ(got, want) << to_string(dt) << " nq " << nq << ", " << threads << " threads";
      }
      set_num_threads(saved);
      // PyTorch's layout: q, K, V and out as [B, H, S, D] (head stride S·D, token stride D).
      auto qh = to_bhsd(q, B, nq, Hq, D, es), kh = to_bhsd(kc, B, S, Hkv, D, es), vh = to_bhsd(vc, B, S, Hkv, D, es);
      Tensor kb = Tensor::bhsd(kh.data(), dt, B, S, Hkv, D), vb = Tensor::bhsd(vh.data(), dt, B, S, Hkv, D);
      kb.shape[1] = vb.shape[1] = lens[0];
      std::vector<float> got_h(got.size(), -1.0f);
      attention(Tensor::bhsd(qh.data(), dt, B, nq, Hq, D), kb, vb, Tensor::bhsd(got_h.data(), DType::f32, B, nq, Hq, D),
                {.causal = causal});
      for (std::int64_t b = 0; b < B; ++b)
        for (std::int64_t i = 0; i < nq; ++i)
          for (std::int64_t h = 0; h < Hq; ++h)
            for (std::int64_t e = 0; e < D; ++e)
              got[std::size_t(((b * nq + i) * Hq + h) * D + e)] = got_h[std::size_t(((b * Hq + h) * nq + i) * D + e)];
      EXPECT_EQ(got, want) << to_string(dt) << " nq " << nq << ", [B, H, S, D]";
      // A padding mask hiding each sequence's first pads[b] keys (left padding, as batched
      // generation pads its prompts, -inf or f32's lowest) is each sequence's own step on the rest.
      const std::int64_t pads[B] = {0, 37, 300};
      std::vector<float> mask(std::size_t(B * lens[0]), 0.0f);
      for (std::int64_t b = 0; b < B; ++b)
        for (std::int64_t j = 0; j < pads[b]; ++j)
          mask[std::size_t(b * lens[0] + j)] = j % 2 ? -std::numeric_limits<float>::infinity()
                                                     : std::numeric_limits<float>::lowest();
      attention(qt, k, v, Tensor::bshd(got.data(), DType::f32, B, nq, Hq, D),
                {.causal = causal, .mask = Tensor::contiguous(mask.data(), DType::f32, {B, 1, 1, lens[0]})});
      for (std::int64_t b = 0; b < B; ++b) {
        const std::size_t row = std::size_t((b * S + pads[b]) * Hkv * D) * es;
        std::vector<float> one(std::size_t(nq * Hq * D));
        attention(Tensor::bshd(q.data() + std::size_t(b * nq * Hq * D) * es, dt, 1, nq, Hq, D),
                  Tensor::bshd(kc.data() + row, dt, 1, lens[0] - pads[b], Hkv, D),
                  Tensor::bshd(vc.data() + row, dt, 1, lens[0] - pads[b], Hkv, D),
                  Tensor::bshd(one.data(), DType::f32, 1, nq, Hq, D), {.causal = causal});
        EXPECT_TRUE(std::equal(one.begin(), one.end(), got.begin() + b * nq * Hq * D))
            << to_string(dt) << " nq " << nq << ", left padding " << pads[b];
      }
      // Packed (varlen) whole caches: [1, B·S] rows, cu_seqlens_k = 0, S, 2S, ...
      const std::vector<std::int32_t> full(static_cast<std::size_t>(B), static_cast<std::int32_t>(S));
      attention_with_kvcache(qt, Tensor::bshd(kc.data(), dt, B, S, Hkv, D), Tensor::bshd(vc.data(), dt, B, S, Hkv, D),
                             full, Tensor::bshd(want.data(), DType::f32, B, nq, Hq, D), {.causal = causal});
      std::vector<std::int32_t> cu_q(std::size_t(B) + 1), cu_k(std::size_t(B) + 1);
      for (std::int64_t b = 0; b <= B; ++b) {
        cu_q[std::size_t(b)] = std::int32_t(b * nq);
        cu_k[std::size_t(b)] = std::int32_t(b * S);
      }
      attention(Tensor::bshd(q.data(), dt, 1, B * nq, Hq, D), Tensor::bshd(kc.data(), dt, 1, B * S, Hkv, D),
                Tensor::bshd(vc.data(), dt, 1, B * S, Hkv, D), Tensor::bshd(got.data(), DType::f32, 1, B * nq, Hq, D),
                {.causal = causal, .cu_seqlens_q = cu_q, .cu_seqlens_k = cu_k});
      EXPECT_EQ(got, want) << to_string(dt) << " nq " << nq << ", packed";
    }
  }
}

// Longer causal steps (speculative drafts) run on the decode kernels where they win
// (forward_as_decode.cc, decode_wins): up to 24 queries on caches of 2048 keys or more while a GQA
// group's rows stay within 64. Bit for bit the cache call's results, so they took its kernels.
TEST(ForwardAsDecode, LongDraftsOnLongCachesAreDecodingSteps) {
  const std::int64_t B = 2, S = 2050, Hq = 4, Hkv = 2, D = 32;
  for (DType dt : {DType::f32, DType::bf16}) {
    const std::size_t es = size_of(dt);
    auto bytes = [&](std::size_t n, std::uint64_t seed) { return normal_bytes(dt, n, seed); };
    auto kc = bytes(std::size_t(B * S * Hkv * D), 4), vc = bytes(kc.size() / es, 5);
    const std::vector<std::int32_t> lens(static_cast<std::size_t>(B), static_cast<std::int32_t>(S));
    for (std::int64_t nq : {9, 16, 24}) {
      auto q = bytes(std::size_t(B * nq * Hq * D), 6 + std::uint64_t(nq));
      const Tensor qt = Tensor::bshd(q.data(), dt, B, nq, Hq, D);
      const Tensor k = Tensor::bshd(kc.data(), dt, B, S, Hkv, D), v = Tensor::bshd(vc.data(), dt, B, S, Hkv, D);
      std::vector<float> want(std::size_t(B * nq * Hq * D)), got(want.size());
      attention_with_kvcache(qt, k, v, lens, Tensor::bshd(want.data(), DType::f32, B, nq, Hq, D), {.causal = true});
      const int saved = num_threads();
      for (int threads : {1, 2, 5}) {
        set_num_threads(threads);
        std::fill(got.begin(), got.end(), -1.0f);
        attention(qt, k, v, Tensor::bshd(got.data(), DType::f32, B, nq, Hq, D), {.causal = true});
        EXPECT_EQ(got, want) << to_string(dt) << " nq " << nq << ", " << threads << " threads";
      }
      set_num_threads(saved);
      // In PyTorch's [B, H, S, D] they are decoding steps too where AVX-512 runs them (the forward
      // keeps them on AVX2: forward_as_decode.cc).
      for (Isa isa : supported_isas()) {
        if (isa < Isa::avx512) continue;
        set_isa(isa);
        std::vector<float> ref(want.size()), got_h(want.size(), -1.0f);
        attention_with_kvcache(qt, k, v, lens, Tensor::bshd(ref.data(), DType::f32, B, nq, Hq, D), {.causal = true});
        auto qh = to_bhsd(q, B, nq, Hq, D, es), kh = to_bhsd(kc, B, S, Hkv, D, es), vh = to_bhsd(vc, B, S, Hkv, D, es);
        attention(Tensor::bhsd(qh.data(), dt, B, nq, Hq, D), Tensor::bhsd(kh.data(), dt, B, S, Hkv, D),
                  Tensor::bhsd(vh.data(), dt, B, S, Hkv, D), Tensor::bhsd(got_h.data(), DType::f32, B, nq, Hq, D),
                  {.causal = true});
        for (std::int64_t b = 0; b < B; ++b)
          for (std::int64_t i = 0; i < nq; ++i)
            for (std::int64_t h = 0; h < Hq; ++h)
              for (std::int64_t e = 0; e < D; ++e)
                got[std::size_t(((b * nq + i) * Hq + h) * D + e)] =
                    got_h[std::size_t(((b * Hq + h) * nq + i) * D + e)];
        EXPECT_EQ(got, ref) << to_string(dt) << " nq " << nq << ", [B, H, S, D], " << to_string(isa);
      }
      set_isa(default_isa());
    }
  }
}

TEST(Decode, ExplicitCacheSeqlensSeeAPrefix) {
  const DecodeSetup s{
      {.kv_heads = 1, .head_dim = 32, .dtype = CacheDType::f32, .max_seqs = 1, .max_seq_len = 100},
      4,
      1,
      {90}};
  Built b = build(s);
  std::vector<float> out(4 * 32), want(4 * 32);
  const std::int32_t len = 40;
  decode_attention(Tensor::bshd(b.q.data(), DType::f32, 1, 1, 4, 32), *b.cache, b.seqs, {&len, 1},
                   Tensor::bshd(out.data(), DType::f32, 1, 1, 4, 32));
  attention(Tensor::bshd(b.q.data(), DType::f32, 1, 1, 4, 32),
            Tensor::bshd(b.k[0].data(), DType::f32, 1, 40, 1, 32),
            Tensor::bshd(b.v[0].data(), DType::f32, 1, 40, 1, 32),
            Tensor::bshd(want.data(), DType::f32, 1, 1, 4, 32));
  const auto a = check::compare(std::span<const float>(out), std::span<const float>(want));
  EXPECT_LT(a.max_err, 1e-5);
}

TEST(Decode, LseAndLowPrecisionOutput) {
  const DecodeSetup s{
      {.kv_heads = 2, .head_dim = 64, .dtype = CacheDType::f16, .max_seqs = 2, .max_seq_len = 400},
      4,
      1,
      {300, 17}};
  Built b = build(s);
  std::vector<std::uint16_t> qb(b.q.size()), ob(b.q.size());
  for (std::size_t i = 0; i < qb.size(); ++i) {
    std::uint32_t u;
    std::memcpy(&u, &b.q[i], 4);
    qb[i] = std::uint16_t(u >> 16);  // bf16 by truncation: the exact value the kernel sees
  }
  std::vector<float> lse(2 * 4), of(b.q.size());
  const Tensor lt = Tensor::contiguous(lse.data(), DType::f32, {2, 4, 1});
  decode_attention(Tensor::bshd(qb.data(), DType::bf16, 2, 1, 4, 64), *b.cache, b.seqs, {},
                   Tensor::bshd(ob.data(), DType::bf16, 2, 1, 4, 64), {}, &lt);
  decode_attention(Tensor::bshd(qb.data(), DType::bf16, 2, 1, 4, 64), *b.cache, b.seqs, {},
                   Tensor::bshd(of.data(), DType::f32, 2, 1, 4, 64));
  for (std::size_t i = 0; i < of.size(); ++i) {
    std::uint32_t u = std::uint32_t(ob[i]) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    EXPECT_NEAR(f, of[i], std::fabs(of[i]) / 128 + 1e-30) << i;
  }
  // f32 out with gaps between elements (merged through a row buffer, not in place): the same bits,
  // and the gaps untouched.
  std::vector<float> wide(2 * of.size(), -7.f);
  Tensor ow = Tensor::bshd(wide.data(), DType::f32, 2, 1, 4, 64);
  ow.strides = {512, 512, 128, 2};
  decode_attention(Tensor::bshd(qb.data(), DType::bf16, 2, 1, 4, 64), *b.cache, b.seqs, {}, ow);
  for (std::size_t i = 0; i < of.size(); ++i) {
    EXPECT_EQ(std::memcmp(&wide[2 * i], &of[i], 4), 0) << i;
    EXPECT_EQ(wide[2 * i + 1], -7.f) << i;
  }
  // lse against the oracle's, on the first sequence (q as the f32 values of its bf16).
  std::vector<float> k(300 * 2 * 64), v(k.size()), qf(4 * 64);
  b.cache->read(b.seqs[0], 0, 300, k.data(), v.data());
  for (std::size_t i = 0; i < qf.size(); ++i) {
    std::uint32_t u = std::uint32_t(qb[i]) << 16;
    std::memcpy(&qf[i], &u, 4);
  }
  const auto r32 = reference::attention_f64(Tensor::bshd(qf.data(), DType::f32, 1, 1, 4, 64),
                                            Tensor::bshd(k.data(), DType::f32, 1, 300, 2, 64),
                                            Tensor::bshd(v.data(), DType::f32, 1, 300, 2, 64));
  for (int h = 0; h < 4; ++h) EXPECT_NEAR(lse[std::size_t(h)], r32.lse[std::size_t(h)], 1e-4) << h;
}

TEST(Decode, Int8CacheErrorStaysWithinItsDocumentedBound) {
  const DecodeSetup s{{.kv_heads = 2,
                       .head_dim = 128,
                       .dtype = CacheDType::int8,
                       .max_seqs = 1,
                       .max_seq_len = 600,
                       .block_size = 32},
                      8,
                      1,
                      {600}};
  Built b = build(s);
  std::vector<float> k(600 * 2 * 128), v(k.size());
  b.cache->read(b.seqs[0], 0, 600, k.data(), v.data());
  for (std::int64_t row = 0; row < 600 * 2; ++row) {
    for (const auto* pair : {&b.k[0], &b.v[0]}) {
      const float* x = pair->data() + row * 128;
      const float* y = (pair == &b.k[0] ? k.data() : v.data()) + row * 128;
      float amax = 0;
      for (int e = 0; e < 128; ++e) amax = std::max(amax, std::fabs(x[e]));
      for (int e = 0; e < 128; ++e)
        ASSERT_LE(std::fabs(x[e] - y[e]), amax / 254 * (1 + 1e-5f)) << row << " " << e;
    }
  }
  // The attention output against the oracle on the original f32 data.
  const std::vector<float> out = run_decode(s, b);
  const auto r = reference::attention_f64(Tensor::bshd(b.q.data(), DType::f32, 1, 1, 8, 128),
                                          Tensor::bshd(b.k[0].data(), DType::f32, 1, 600, 2, 128),
                                          Tensor::bshd(b.v[0].data(), DType::f32, 1, 600, 2, 128));
  const auto a = check::compare(std::span<const float>(out), r.out);
  EXPECT_GE(a.pcc, 0.999);
  EXPECT_LT(a.max_err, 0.02);
}

TEST(Decode, BadArgumentsAreTypedErrorsAndWriteNothing) {
  const DecodeSetup s{
      {.kv_heads = 2, .head_dim = 32, .dtype = CacheDType::bf16, .max_seqs = 3, .max_seq_len = 50},
      4,
      1,
      {10, 20}};
  Built b = build(s);
  std::vector<float> out(2 * 4 * 32, 42.f);
  const Tensor q = Tensor::bshd(b.q.data(), DType::f32, 2, 1, 4, 32),
               o = Tensor::bshd(out.data(), DType::f32, 2, 1, 4, 32);
  auto expect = [&](auto f, const char* argument) {
    try {
      f();
      ADD_FAILURE() << "no error for " << argument;
    } catch (const Error& e) {
      EXPECT_EQ(e.argument(), argument) << e.what();
    }
  };
  std::vector<float> q3(2 * 3 * 32);
  expect([&] { decode_attention(Tensor::bshd(q3.data(), DType::f32, 2, 1, 3, 32), *b.cache, b.seqs, {}, o); },
         "q");
  std::vector<float> qd(2 * 4 * 16);
  expect([&] { decode_attention(Tensor::bshd(qd.data(), DType::f32, 2, 1, 4, 16), *b.cache, b.seqs, {}, o); },
         "q");
  expect([&] { decode_attention(q, *b.cache, {b.seqs.data(), 1}, {}, o); }, "seqs");
  const std::int32_t bad_seqs[2] = {0, 2};
  expect([&] { decode_attention(q, *b.cache, bad_seqs, {}, o); }, "seqs");
  const std::int32_t long_lens[2] = {10, 21}, zero_lens[2] = {0, 5};
  expect([&] { decode_attention(q, *b.cache, b.seqs, long_lens, o); }, "cache_seqlens");
  expect([&] { decode_attention(q, *b.cache, b.seqs, zero_lens, o); }, "cache_seqlens");
  std::vector<std::uint16_t> oh(out.size());
  expect([&] { decode_attention(q, *b.cache, b.seqs, {}, Tensor::bshd(oh.data(), DType::f16, 2, 1, 4, 32)); },
         "out");
  expect([&] { decode_attention(q, *b.cache, b.seqs, {}, q); }, "out");
  for (float x : out) ASSERT_EQ(x, 42.f);
}

TEST(Prefill, ChunksMatchOneForwardPassOverThePrompt) {
  for (std::int64_t block : {0, 16}) {
    for (CacheDType dt : {CacheDType::f32, CacheDType::int8}) {
      const std::int64_t n = 150, hkv = 2, hq = 4, d = 32;
      KvCache cache({.kv_heads = hkv,
                     .head_dim = d,
                     .dtype = dt,
                     .max_seqs = 1,
                     .max_seq_len = 200,
                     .block_size = block});
      const std::int32_t seq = cache.add_sequence();
      std::vector<float> q = normal_vector(n * hq * d, 1), k = normal_vector(n * hkv * d, 2),
                         v = normal_vector(n * hkv * d, 3);
      std::vector<float> chunked(q.size()), whole(q.size());
      for (std::int64_t t0 = 0; t0 < n; t0 += 64) {
        const std::int64_t t1 = std::min(n, t0 + 64);
        const std::int32_t pos = std::int32_t(t0);
        cache.write({&seq, 1}, {&pos, 1},
                    Tensor::contiguous(k.data() + t0 * hkv * d, DType::f32, {1, t1 - t0, hkv, d}),
                    Tensor::contiguous(v.data() + t0 * hkv * d, DType::f32, {1, t1 - t0, hkv, d}));
        prefill_attention(Tensor::contiguous(q.data() + t0 * hq * d, DType::f32, {t1 - t0, hq, d}), cache,
                          seq,
                          Tensor::contiguous(chunked.data() + t0 * hq * d, DType::f32, {t1 - t0, hq, d}));
      }
      std::vector<float> kr(k.size()), vr(v.size());
      cache.read(seq, 0, n, kr.data(), vr.data());
      attention(Tensor::bshd(q.data(), DType::f32, 1, n, hq, d),
                Tensor::bshd(kr.data(), DType::f32, 1, n, hkv, d),
                Tensor::bshd(vr.data(), DType::f32, 1, n, hkv, d),
                Tensor::bshd(whole.data(), DType::f32, 1, n, hq, d), {.causal = true});
      const auto a = check::compare(std::span<const float>(chunked), std::span<const float>(whole));
      EXPECT_LT(a.max_err, 1e-5) << "block " << block << " " << to_string(dt);
    }
  }
}

TEST(Engine, StepsEqualDecodeAndFreedBlocksAreReused) {
  const std::int64_t hkv = 2, hq = 8, d = 32;
  DecodeEngine engine({.kv_heads = hkv,
                       .head_dim = d,
                       .dtype = CacheDType::bf16,
                       .max_seqs = 3,
                       .max_seq_len = 256,
                       .block_size = 16,
                       .num_blocks = 20},
                      hq);
  auto admit = [&](std::int64_t n, std::uint64_t seed) {
    std::vector<float> q = normal_vector(n * hq * d, seed), k = normal_vector(n * hkv * d, seed + 1),
                       v = normal_vector(n * hkv * d, seed + 2), out(q.size());
    return engine.admit(Tensor::contiguous(q.data(), DType::f32, {n, hq, d}),
                        Tensor::contiguous(k.data(), DType::f32, {n, hkv, d}),
                        Tensor::contiguous(v.data(), DType::f32, {n, hkv, d}),
                        Tensor::contiguous(out.data(), DType::f32, {n, hq, d}), 32);
  };
  const std::int32_t a = admit(100, 1), b = admit(33, 2);
  EXPECT_EQ(engine.cache().free_blocks(), 20 - 7 - 3);
  for (int step = 0; step < 5; ++step) {
    const std::int64_t A = std::int64_t(engine.active().size());
    std::vector<float> q = normal_vector(A * hq * d, 10 + step), k = normal_vector(A * hkv * d, 20 + step),
                       v = normal_vector(A * hkv * d, 30 + step), out(q.size()), want(q.size());
    engine.step(
        Tensor::bshd(q.data(), DType::f32, A, 1, hq, d), Tensor::bshd(k.data(), DType::f32, A, 1, hkv, d),
        Tensor::bshd(v.data(), DType::f32, A, 1, hkv, d), Tensor::bshd(out.data(), DType::f32, A, 1, hq, d));
    decode_attention(Tensor::bshd(q.data(), DType::f32, A, 1, hq, d), engine.cache(), engine.active(), {},
                     Tensor::bshd(want.data(), DType::f32, A, 1, hq, d));
    EXPECT_EQ(out, want) << "step " << step;
  }
  EXPECT_EQ(engine.cache().length(a), 105);
  const std::vector<std::int32_t> a_blocks(engine.cache().block_table(a).begin(),
                                           engine.cache().block_table(a).begin() + 7);
  engine.retire(a);
  EXPECT_EQ(engine.active().size(), 1u);
  EXPECT_EQ(engine.active()[0], b);
  const std::int32_t c = admit(40, 3);  // takes a's freed blocks, first block first
  EXPECT_EQ(c, a);                      // and its slot
  EXPECT_EQ(engine.cache().block_table(c)[0], a_blocks[0]);
  EXPECT_EQ(engine.cache().block_table(c)[2], a_blocks[2]);
  // A prompt larger than the free pool is refused and changes nothing.
  const std::int64_t free_before = engine.cache().free_blocks();
  EXPECT_THROW(admit(250, 4), CapacityExceeded);
  EXPECT_EQ(engine.cache().free_blocks(), free_before);
  EXPECT_EQ(engine.active().size(), 2u);
}

}  // namespace
}  // namespace mha

namespace mha {
namespace {

// attention_with_kvcache on caller-owned caches: the new tokens land in the caches, a decode step
// gives the same bits on a paged and a contiguous cache, a non-causal chunk the same bits as the
// forward kernel over the entry's cached rows, and bad lengths leave the caches untouched.
TEST(KvCacheCall, AppendsDecodesAndMatchesTheKernelsItRuns) {
  const std::int64_t B = 2, S = 48, H = 4, Hkv = 2, D = 32, bs = 16;
  std::vector<float> kc = check::normal_vector(std::size_t(B * S * Hkv * D), 1), vc = check::normal_vector(kc.size(), 2);
  std::vector<float> q = check::normal_vector(std::size_t(B * 3 * H * D), 3);
  std::vector<float> kn = check::normal_vector(std::size_t(B * Hkv * D), 4), vn = check::normal_vector(kn.size(), 5);
  const std::vector<std::int32_t> lens = {20, 33};
  // The paged copy: entry b's block j is block table[b][j] of a pool, here in reverse order.
  const std::vector<std::int32_t> table = {5, 4, 3, 2, 1, 0};
  std::vector<float> kp(kc.size()), vp(vc.size());
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t j = 0; j < S / bs; ++j) {
      const std::size_t n = std::size_t(bs * Hkv * D), src = std::size_t((b * S + j * bs) * Hkv * D),
                        dst = std::size_t(table[std::size_t(b * 3 + j)]) * n;
      std::copy_n(kc.begin() + std::ptrdiff_t(src), n, kp.begin() + std::ptrdiff_t(dst));
      std::copy_n(vc.begin() + std::ptrdiff_t(src), n, vp.begin() + std::ptrdiff_t(dst));
    }
  const Tensor knew = Tensor::bshd(kn.data(), DType::f32, B, 1, Hkv, D), vnew = Tensor::bshd(vn.data(), DType::f32, B, 1, Hkv, D);
  std::vector<float> out_c(std::size_t(B * H * D)), out_p(out_c.size());
  KvCacheCallOptions o{.causal = true, .k_new = &knew, .v_new = &vnew};
  const Tensor q1 = Tensor::bshd(q.data(), DType::f32, B, 1, H, D);
  attention_with_kvcache(q1, Tensor::bshd(kc.data(), DType::f32, B, S, Hkv, D),
                         Tensor::bshd(vc.data(), DType::f32, B, S, Hkv, D), lens,
                         Tensor::bshd(out_c.data(), DType::f32, B, 1, H, D), o);
  o.block_table = table;
  attention_with_kvcache(q1, Tensor::bshd(kp.data(), DType::f32, 6, bs, Hkv, D),
                         Tensor::bshd(vp.data(), DType::f32, 6, bs, Hkv, D), lens,
                         Tensor::bshd(out_p.data(), DType::f32, B, 1, H, D), o);
  EXPECT_EQ(out_c, out_p);
  for (std::int64_t b = 0; b < B; ++b)  // the new row of entry b, in both caches
    for (std::int64_t e = 0; e < Hkv * D; ++e) {
      const std::int64_t r = lens[std::size_t(b)];
      ASSERT_EQ(kc[std::size_t((b * S + r) * Hkv * D + e)], kn[std::size_t(b * Hkv * D + e)]);
      ASSERT_EQ(kp[std::size_t((table[std::size_t(b * 3 + r / bs)] * bs + r % bs) * Hkv * D + e)],
                kn[std::size_t(b * Hkv * D + e)]);
    }
  // A non-causal chunk of 3 queries without new tokens: the forward kernel over rows [0, L_b).
  std::vector<float> out3(std::size_t(B * 3 * H * D)), want(std::size_t(3 * H * D));
  attention_with_kvcache(Tensor::bshd(q.data(), DType::f32, B, 3, H, D), Tensor::bshd(kc.data(), DType::f32, B, S, Hkv, D),
                         Tensor::bshd(vc.data(), DType::f32, B, S, Hkv, D), lens,
                         Tensor::bshd(out3.data(), DType::f32, B, 3, H, D));
  for (std::int64_t b = 0; b < B; ++b) {
    const std::int64_t L = lens[std::size_t(b)];
    attention(Tensor::bshd(q.data() + b * 3 * H * D, DType::f32, 1, 3, H, D),
              Tensor::bshd(kc.data() + b * S * Hkv * D, DType::f32, 1, L, Hkv, D),
              Tensor::bshd(vc.data() + b * S * Hkv * D, DType::f32, 1, L, Hkv, D),
              Tensor::bshd(want.data(), DType::f32, 1, 3, H, D));
    EXPECT_TRUE(std::equal(want.begin(), want.end(), out3.begin() + b * 3 * H * D)) << "entry " << b;
  }
  // No room for the new token: an error naming cache_seqlens, and the caches are as they were.
  const std::vector<float> kc_before = kc;
  o.block_table = {};
  try {
    attention_with_kvcache(q1, Tensor::bshd(kc.data(), DType::f32, B, S, Hkv, D),
                           Tensor::bshd(vc.data(), DType::f32, B, S, Hkv, D), std::vector<std::int32_t>{1, 48},
                           Tensor::bshd(out_c.data(), DType::f32, B, 1, H, D), o);
    ADD_FAILURE() << "no error";
  } catch (const InvalidArgument& e) {
    EXPECT_EQ(e.argument(), "cache_seqlens");
  }
  EXPECT_EQ(kc, kc_before);
}

// Paged entries may share blocks they only read (a common prefix); a new token written to a row that
// another position reads (another entry's, or the same entry's through a block named twice) is an
// error naming block_table, and nothing is written. Before the check it was a silent wrong answer.
TEST(KvCacheCall, NewTokensGoToRowsNoOtherPositionReads) {
  const std::int64_t B = 2, bs = 4, blocks = 6, H = 2, Hkv = 1, D = 8;
  std::vector<float> kp = check::normal_vector(std::size_t(blocks * bs * Hkv * D), 1),
                     vp = check::normal_vector(kp.size(), 2);
  const std::vector<float> q = check::normal_vector(std::size_t(B * H * D), 3);
  const std::vector<float> kn = check::normal_vector(std::size_t(B * Hkv * D), 4),
                           vn = check::normal_vector(kn.size(), 5);
  const Tensor knew = Tensor::bshd(const_cast<float*>(kn.data()), DType::f32, B, 1, Hkv, D),
               vnew = Tensor::bshd(const_cast<float*>(vn.data()), DType::f32, B, 1, Hkv, D);
  std::vector<float> out(std::size_t(B * H * D), 7.f);
  const auto call = [&](std::vector<std::int32_t> table, std::vector<std::int32_t> lens) {
    KvCacheCallOptions o{.causal = true, .k_new = &knew, .v_new = &vnew, .block_table = table};
    attention_with_kvcache(Tensor::bshd(const_cast<float*>(q.data()), DType::f32, B, 1, H, D),
                           Tensor::bshd(kp.data(), DType::f32, blocks, bs, Hkv, D),
                           Tensor::bshd(vp.data(), DType::f32, blocks, bs, Hkv, D), lens,
                           Tensor::bshd(out.data(), DType::f32, B, 1, H, D), o);
  };
  const std::vector<float> kp_before = kp, vp_before = vp;
  const auto refused = [&](std::vector<std::int32_t> table, std::vector<std::int32_t> lens,
                           const char* what) {
    try {
      call(table, lens);
      ADD_FAILURE() << what << ": no error";
    } catch (const InvalidArgument& e) {
      EXPECT_EQ(e.argument(), "block_table") << what;
    }
    EXPECT_EQ(kp, kp_before) << what;
    EXPECT_EQ(vp, vp_before) << what;
    for (float x : out) EXPECT_EQ(x, 7.f) << what;
  };
  // Entry 1 reads row 1 of block 1 as its token 5, where entry 0 writes its token 5.
  refused({0, 1, 0, 1}, {5, 6}, "a block both entries write");
  // Entry 0's table names block 1 twice: its token 5 would overwrite its token 1.
  refused({1, 1, 2, 3}, {5, 2}, "a block named twice");
  // A shared prefix block that nobody writes: accepted, and each new token lands in its own block.
  EXPECT_NO_THROW(call({0, 1, 0, 2}, {5, 6}));
  for (std::int64_t e = 0; e < Hkv * D; ++e) {
    EXPECT_EQ(kp[std::size_t((1 * bs + 1) * Hkv * D + e)], kn[std::size_t(e)]);
    EXPECT_EQ(kp[std::size_t((2 * bs + 2) * Hkv * D + e)], kn[std::size_t(Hkv * D + e)]);
  }
}

}  // namespace
}  // namespace mha
