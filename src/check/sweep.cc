// The case lists: a fixed sweep for the test suite and a seeded random one for `mha check`.
#include <algorithm>

#include "check/case.h"
#include "check/random.h"

namespace mha::check {

std::vector<Case> sweep_cases() {
  std::vector<Case> cases;
  auto add = [&](Case c) {
    c.seed = 1000 + cases.size();
    cases.push_back(std::move(c));
  };

  // Every head dim of the issue, non-causal with Nq != Nk and causal square.
  for (std::int64_t d : {1, 3, 8, 40, 64, 80, 96, 128, 160, 256}) {
    add({.b = 1, .nq = 37, .nk = 53, .hq = 2, .hkv = 1, .d = d});
    add({.b = 2, .nq = 70, .nk = 70, .hq = 2, .hkv = 2, .d = d, .causal = true});
  }
  // Lengths around the 64-row / 64-key tiles, Nq = 1, Nk = 1.
  const std::pair<std::int64_t, std::int64_t> lengths[] = {{1, 1},   {1, 200}, {200, 1},   {63, 65},
                                                           {64, 64}, {65, 63}, {129, 127}, {3, 130}};
  for (auto [nq, nk] : lengths) add({.nq = nq, .nk = nk, .hq = 3, .hkv = 3, .d = 64});
  for (auto [nq, nk] : lengths) add({.nq = nq, .nk = nk, .hq = 2, .hkv = 1, .d = 40, .causal = true});
  // Causal with Nq > Nk: the first Nq - Nk rows see no key at all (zeros, lse = -inf).
  add({.nq = 130, .nk = 50, .hq = 2, .hkv = 2, .d = 32, .causal = true});
  // GQA and MQA.
  add({.b = 2, .nq = 45, .nk = 77, .hq = 8, .hkv = 2, .d = 64});
  add({.nq = 66, .nk = 66, .hq = 6, .hkv = 1, .d = 96, .causal = true});
  // Masks, alone and with causal / GQA.
  add({.b = 2, .nq = 33, .nk = 90, .hq = 4, .hkv = 2, .d = 64, .mask = MaskKind::bias});
  add({.b = 3, .nq = 70, .nk = 70, .hq = 2, .hkv = 1, .d = 64, .mask = MaskKind::padding});
  add({.b = 4, .nq = 1, .nk = 100, .hq = 4, .hkv = 4, .d = 32, .mask = MaskKind::padding});
  add({.b = 2, .nq = 65, .nk = 65, .hq = 4, .hkv = 2, .d = 80, .causal = true, .mask = MaskKind::head_bias});
  // Sliding windows (left, right), with and without causal.
  add({.nq = 150,
       .nk = 150,
       .hq = 2,
       .hkv = 1,
       .d = 64,
       .causal = true,
       .window_left = 16,
       .window_right = 0});
  add({.nq = 100, .nk = 140, .hq = 2, .hkv = 2, .d = 64, .window_left = 8, .window_right = 8});
  add({.nq = 90, .nk = 90, .hq = 1, .hkv = 1, .d = 16, .window_left = 0, .window_right = 0});
  add({.nq = 80, .nk = 200, .hq = 2, .hkv = 1, .d = 64, .window_left = -1, .window_right = 5});
  add({.nq = 120,
       .nk = 70,
       .hq = 2,
       .hkv = 1,
       .d = 48,
       .window_left = 40,
       .window_right = -1,
       .mask = MaskKind::bias});
  // Variable-length batches, with empty sequences, causal and a padding mask.
  add({.hq = 4, .hkv = 2, .d = 64, .seqlens_q = {5, 70, 0, 1, 33}, .seqlens_k = {9, 70, 4, 130, 0}});
  add({.hq = 2,
       .hkv = 1,
       .d = 64,
       .causal = true,
       .seqlens_q = {65, 1, 17, 100},
       .seqlens_k = {65, 80, 40, 100}});
  add({.hq = 2,
       .hkv = 2,
       .d = 32,
       .mask = MaskKind::padding,
       .seqlens_q = {20, 7, 64},
       .seqlens_k = {30, 7, 90}});
  add({.hq = 3,
       .hkv = 1,
       .d = 40,
       .window_left = 10,
       .window_right = 3,
       .seqlens_q = {50, 90},
       .seqlens_k = {70, 90}});
  // PyTorch's layout, output in the input dtype, value head dim != key head dim.
  add({.b = 2, .nq = 57, .nk = 81, .hq = 4, .hkv = 2, .d = 64, .causal = true, .bhsd = true});
  add({.b = 2, .nq = 70, .nk = 45, .hq = 2, .hkv = 1, .d = 64, .out_f32 = false});
  add({.nq = 40, .nk = 70, .hq = 2, .hkv = 1, .d = 64, .dv = 32});
  add({.nq = 40, .nk = 70, .hq = 2, .hkv = 2, .d = 24, .dv = 128, .out_f32 = false, .causal = true});
  // Large logits (about ±1e4) must not overflow; scale 0 gives a uniform average.
  add({.nq = 70, .nk = 130, .hq = 2, .hkv = 1, .d = 64, .scale = 1000.0f});
  add({.nq = 64, .nk = 64, .hq = 1, .hkv = 1, .d = 64, .causal = true, .scale = -1000.0f});
  add({.nq = 30, .nk = 50, .hq = 1, .hkv = 1, .d = 8, .scale = 0.0f});

  // Decoding steps through attention(): one query, or a causal step of up to 8 (24 on BSHD caches
  // of 2048 keys), on K and V laid out as a cache run on the flash-decode kernels
  // (decode/forward_as_decode.h): GQA, MQA, caches past one 256-key chunk (merged partials),
  // Nq = Nk, head dims 1 and 256, large logits.
  add({.b = 3, .nq = 1, .nk = 300, .hq = 8, .hkv = 2, .d = 128});
  add({.b = 2, .nq = 1, .nk = 513, .hq = 4, .hkv = 1, .d = 80, .causal = true});
  add({.b = 2, .nq = 5, .nk = 260, .hq = 6, .hkv = 3, .d = 64, .causal = true});
  add({.nq = 8, .nk = 8, .hq = 2, .hkv = 2, .d = 1, .causal = true});
  add({.b = 2, .nq = 1, .nk = 70, .hq = 4, .hkv = 2, .d = 256, .out_f32 = false});
  add({.nq = 2, .nk = 100, .hq = 2, .hkv = 1, .d = 64, .causal = true, .scale = 1000.0f});
  add({.hq = 4, .hkv = 2, .d = 64, .seqlens_q = {1, 1, 1, 1}, .seqlens_k = {300, 5, 1, 64}});
  add({.hq = 6, .hkv = 2, .d = 40, .causal = true, .seqlens_q = {3, 3}, .seqlens_k = {3, 290}});
  add({.b = 2, .nq = 20, .nk = 4111, .hq = 6, .hkv = 3, .d = 24, .causal = true});  // a draft on a long cache
  add({.b = 1, .nq = 24, .nk = 2049, .hq = 4, .hkv = 2, .d = 64, .causal = true});  // at the length bound
  // The same in PyTorch's layout ([B, H, S, D]: heads S·D apart, batched and packed).
  add({.b = 2, .nq = 1, .nk = 300, .hq = 8, .hkv = 2, .d = 128, .bhsd = true});
  add({.b = 3, .nq = 4, .nk = 37, .hq = 4, .hkv = 1, .d = 24, .causal = true, .bhsd = true});
  add({.hq = 4, .hkv = 2, .d = 32, .bhsd = true, .seqlens_q = {1, 1, 1}, .seqlens_k = {3, 270, 40}});
  // Under a padding mask (each sequence's keys a prefix): the steps of batched generation.
  add({.b = 4, .nq = 1, .nk = 300, .hq = 8, .hkv = 2, .d = 64, .mask = MaskKind::padding});
  add({.b = 3, .nq = 1, .nk = 70, .hq = 4, .hkv = 4, .d = 40, .mask = MaskKind::padding, .bhsd = true});

  // Every case in every dtype.
  std::vector<Case> all;
  for (DType dt : {DType::f32, DType::f16, DType::bf16}) {
    for (Case c : cases) {
      c.dtype = dt;
      all.push_back(std::move(c));
    }
  }
  return all;
}

std::vector<Case> random_cases(int count, std::uint64_t seed) {
  Random rng(seed);
  std::vector<Case> cases;
  const std::int64_t dims[] = {1, 3, 8, 16, 32, 40, 64, 80, 96, 128, 160, 256};
  const DType dtypes[] = {DType::f32, DType::f16, DType::bf16};
  for (int n = 0; n < count; ++n) {
    Case c;
    c.seed = rng.next();
    c.dtype = dtypes[rng.range(0, 2)];
    c.out_f32 = rng.range(0, 1) == 0;
    c.d = dims[rng.range(0, std::size(dims) - 1)];
    c.dv = rng.range(0, 5) == 0 ? dims[rng.range(0, std::size(dims) - 1)] : 0;
    c.hkv = rng.range(1, 3);
    c.hq = c.hkv * std::int64_t(std::array{1, 1, 2, 4}[std::size_t(rng.range(0, 3))]);
    const std::int64_t max_len = c.d >= 128 ? 160 : 260;
    if (rng.range(0, 4) == 0) {
      const std::int64_t seqs = rng.range(1, 4);
      for (std::int64_t s = 0; s < seqs; ++s) {
        c.seqlens_q.push_back(std::int32_t(rng.range(0, max_len / 2)));
        c.seqlens_k.push_back(std::int32_t(rng.range(0, max_len / 2)));
      }
      c.seqlens_q[0] = std::max<std::int32_t>(c.seqlens_q[0], 1);
    } else {
      c.b = rng.range(1, 3);
      c.nq = rng.range(0, 3) == 0 ? 1 : rng.range(1, max_len);
      c.nk = rng.range(1, max_len);
    }
    c.causal = rng.range(0, 2) == 0;
    if (rng.range(0, 3) == 0) {
      c.window_left = rng.range(-1, 40);
      c.window_right = c.causal ? 0 : rng.range(-1, 40);
    }
    c.mask = MaskKind(rng.range(0, 3));
    c.bhsd = rng.range(0, 3) == 0;
    cases.push_back(std::move(c));
  }
  return cases;
}

}  // namespace mha::check
