// Exact multi-head attention, forward: out = softmax(scale * q·kᵀ + mask) · v, computed by a tiled
// flash kernel with an online softmax; the [Nq, Nk] score matrix is never materialized.
#pragma once

#include <cstdint>
#include <optional>
#include <span>

#include "mha/tensor.h"

namespace mha {

struct AttentionOptions {
  // Softmax scale; default 1/sqrt(head_dim).
  std::optional<float> scale;
  // Causal mask aligned bottom-right (FlashAttention >= 2.1): query i sees keys j <= i + Nk - Nq.
  bool causal = false;
  // Sliding window as FlashAttention's window_size: query i sees keys j with
  // i + Nk - Nq - window_left <= j <= i + Nk - Nq + window_right; -1 means unbounded on that side.
  std::int64_t window_left = -1;
  std::int64_t window_right = -1;
  // Additive mask / bias of logical shape [B|1, Hq|1, Nq|1, Nk|1], dtype f32, f16 or bf16, any
  // strides; -inf entries mask keys out. Added after scaling.
  std::optional<Tensor> mask;
  // Variable-length packed batch (flash_attn_varlen_func): when set, q is [1, total_q, Hq, D], k and v
  // are [1, total_k, Hkv, D], and sequence b owns rows cu_seqlens_q[b] .. cu_seqlens_q[b+1]-1.
  // Causal alignment, windows and mask coordinates are per sequence; a mask is then
  // [B|1, Hq|1, max_seqlen_q|1, max_seqlen_k|1].
  std::span<const std::int32_t> cu_seqlens_q;
  std::span<const std::int32_t> cu_seqlens_k;
  // Dropout on the attention probabilities (training): each probability is kept with chance
  // 1 - dropout_p and then scaled by 1 / (1 - dropout_p), or zeroed. dropout_p in [0, 1). The keep
  // decision of element (sequence b, head h, query i, key j) is drawn from Philox4x32-10 keyed by
  // dropout_seed at a counter built from (b, h, i, j) and dropout_offset (see dropout_keep_mask), so
  // the backward regenerates the same mask, and it does not depend on tiling, thread count, ISA,
  // layout or batch packing. lse stays the log-sum-exp of the undropped probabilities.
  float dropout_p = 0.0f;
  std::uint64_t dropout_seed = 0;
  std::uint64_t dropout_offset = 0;
};

// q   [B, Nq, Hq, D]   f32 | f16 | bf16
// k   [B, Nk, Hkv, D]  same dtype as q; Hq a multiple of Hkv (GQA/MQA): head h reads h / (Hq/Hkv)
// v   [B, Nk, Hkv, Dv] same dtype as q; 1 <= D, Dv <= 256
// out [B, Nq, Hq, Dv]  f32 or q's dtype; must not overlap any input
// lse (optional) f32 [B, Hq, Nq] (varlen: [1, Hq, total_q]): natural-log sum-exp of each row's
//     scaled, masked scores; -inf for a row whose keys are all masked (its output row is zeros).
// Throws InvalidArgument / Unsupported (see errors.h); on error nothing is written.
// Bitwise identical results for any thread count.
void attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
               const AttentionOptions& options = {}, const Tensor* lse = nullptr);

// Floating-point operations of the call: 2·(D + Dv) per visible (query, key) pair, i.e.
// 4·B·Hq·Nq·Nk·D for full attention, about half that when causal. Validates like attention().
double attention_flops(const Tensor& q, const Tensor& k, const Tensor& v,
                       const AttentionOptions& options = {});

constexpr std::int64_t kMaxHeadDim = 256;

}  // namespace mha
