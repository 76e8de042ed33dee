// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11), the
// counter-based generator FlashAttention and PyTorch draw dropout from, and the map from an
// attention element to its counter (mha/backward.h states it for users).
//
// The counter of key j puts 16 consecutive keys in 16 consecutive counters, and the 4 words of a
// counter in 4 groups of 16 keys: one batch of 16 counters covers 64 aligned keys of a row, and the
// loop over those 16 counters is plain lane-wise integer math that the compiler vectorizes for
// each kernel's ISA. Everything has internal linkage (see attention_params.h), so the baseline and
// the AVX translation units each keep their own copy.
#pragma once

#include <cstdint>

#include "kernels/attention_params.h"

namespace mha::detail {
namespace {

constexpr std::int64_t kDropoutGroup = 64;  // keys per batch of 16 counters

inline void philox_round(std::uint32_t& c0, std::uint32_t& c1, std::uint32_t& c2, std::uint32_t& c3,
                         std::uint32_t k0, std::uint32_t k1) {
  const std::uint64_t p0 = std::uint64_t(0xD2511F53u) * c0;
  const std::uint64_t p1 = std::uint64_t(0xCD9E8D57u) * c2;
  const std::uint32_t n0 = std::uint32_t(p1 >> 32) ^ c1 ^ k0;
  const std::uint32_t n2 = std::uint32_t(p0 >> 32) ^ c3 ^ k1;
  c1 = std::uint32_t(p1);
  c3 = std::uint32_t(p0);
  c0 = n0;
  c2 = n2;
}

// Philox4x32-10 of counter ctr under key key, in place.
inline void philox4x32_10(std::uint32_t ctr[4], const std::uint32_t key[2]) {
  std::uint32_t k0 = key[0], k1 = key[1];
  for (int r = 0; r < 10; ++r) {
    philox_round(ctr[0], ctr[1], ctr[2], ctr[3], k0, k1);
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
}

// The generator's fixed inputs for one call.
struct DropoutKey {
  std::uint32_t k0, k1, c3;
  std::uint32_t threshold;  // drop when the word is below it
};

inline DropoutKey dropout_key(std::uint64_t seed, std::uint64_t offset, float p) {
  return {std::uint32_t(seed), std::uint32_t(seed >> 32) + std::uint32_t(offset >> 32), std::uint32_t(offset),
          std::uint32_t(double(p) * 4294967296.0)};
}

// Random words of keys [64·group, 64·group + 64) of query i in row stream bh = b·heads + h:
// words[j - 64·group]. The loop over the 16 counters vectorizes.
inline void dropout_words(const DropoutKey& key, std::uint32_t i, std::uint32_t bh, std::uint32_t group,
                          std::uint32_t* __restrict words) {
  std::uint32_t c0[16], c1[16], c2[16], c3[16];
  for (int l = 0; l < 16; ++l) {
    c0[l] = 16u * group + std::uint32_t(l);
    c1[l] = i;
    c2[l] = bh;
    c3[l] = key.c3;
  }
  std::uint32_t k0 = key.k0, k1 = key.k1;
  for (int r = 0; r < 10; ++r) {
    for (int l = 0; l < 16; ++l) philox_round(c0[l], c1[l], c2[l], c3[l], k0, k1);
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  for (int l = 0; l < 16; ++l) {
    words[l] = c0[l];
    words[16 + l] = c1[l];
    words[32 + l] = c2[l];
    words[48 + l] = c3[l];
  }
}

// Whether key j of query i in row stream bh survives: one counter, for the references.
inline bool dropout_keep(const DropoutKey& key, std::uint32_t i, std::uint32_t bh, std::int64_t j) {
  std::uint32_t ctr[4] = {std::uint32_t(16 * (j / kDropoutGroup) + j % 16), i, bh, key.c3};
  const std::uint32_t k[2] = {key.k0, key.k1};
  philox4x32_10(ctr, k);
  return ctr[(j / 16) % 4] >= key.threshold;
}

// Multipliers of keys [j0, j0 + n) of query i: 0 (dropped) or `keep_scale`; n <= 64 and the keys
// may straddle one 64-key boundary.
inline void dropout_row(const DropoutKey& key, std::uint32_t i, std::uint32_t bh, std::int64_t j0,
                        std::int64_t n, float keep_scale, float* __restrict mult) {
  std::uint32_t words[2 * kDropoutGroup];
  const std::int64_t g0 = j0 / kDropoutGroup, g1 = (j0 + n - 1) / kDropoutGroup;
  for (std::int64_t g = g0; g <= g1; ++g)
    dropout_words(key, i, bh, std::uint32_t(g), words + (g - g0) * kDropoutGroup);
  const std::uint32_t* w = words + (j0 - g0 * kDropoutGroup);
  for (std::int64_t j = 0; j < n; ++j) mult[j] = w[j] >= key.threshold ? keep_scale : 0.0f;
}

}  // namespace
}  // namespace mha::detail
