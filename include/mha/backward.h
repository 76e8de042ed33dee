// Exact attention backward (training): the gradients of out = attention(q, k, v) with respect to
// q, k and v, computed FlashAttention-2 style from the forward's out and log-sum-exp, recomputing
// the probabilities tile by tile; the [Nq, Nk] matrices are never materialized.
#pragma once

#include <cstdint>
#include <span>

#include "mha/attention.h"
#include "mha/tensor.h"

namespace mha {

// q, k, v, options: exactly as given to the forward (mha::attention), dropout included.
// out  [B, Nq, Hq, Dv]  the forward's output (f32 or q's dtype)
// dout [B, Nq, Hq, Dv]  the gradient of the loss with respect to out (f32 or q's dtype)
// lse  f32 [B, Hq, Nq]  the forward's log-sum-exp (varlen: [1, Hq, total_q])
// dq [B, Nq, Hq, D], dk [B, Nk, Hkv, D], dv [B, Nk, Hkv, Dv]: outputs, f32 or q's dtype, any
//   strides; accumulated in f32. With GQA/MQA the gradients of a KV head sum over its query heads.
//   The additive mask is a constant (no gradient). Rows whose keys are all masked get zero dq, and
//   keys no query sees get zero dk and dv.
// Throws InvalidArgument / Unsupported (errors.h) naming the argument; on error nothing is written.
// Bitwise identical results for any thread count, and across runs.
void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& dout, const Tensor& lse, const Tensor& dq, const Tensor& dk,
                        const Tensor& dv, const AttentionOptions& options = {});

// FlashAttention's convention for the backward's floating-point operations: 2.5 × the forward's
// (attention_flops). Validates like attention_flops.
double attention_backward_flops(const Tensor& q, const Tensor& k, const Tensor& v,
                                const AttentionOptions& options = {});

// The dropout keep mask of a call (FlashAttention's return_attn_probs, as a mask): keep[b][h][i][j]
// = 1 when the probability of query i and key j of sequence b, head h survives dropout, else 0, for
// b < batch (varlen: the sequence index), h < heads, i < seqlen_q, j < seqlen_k (local positions
// within the sequence). `keep` is row-major [batch, heads, seqlen_q, seqlen_k]. With dropout_p = 0
// every entry is 1.
//
// The draw: Philox4x32-10 with key (lo32(seed), hi32(seed) + hi32(offset)) at counter
//   (16·(j / 64) + j % 16, i, b·heads + h, lo32(offset)); keep when word (j / 16) % 4 of the
//   result is >= floor(dropout_p · 2^32).
// Throws InvalidArgument for a negative size, dropout_p outside [0, 1), a `keep` of the wrong size.
void dropout_keep_mask(const AttentionOptions& options, std::int64_t batch, std::int64_t heads,
                       std::int64_t seqlen_q, std::int64_t seqlen_k, std::span<std::uint8_t> keep);

}  // namespace mha
