// The oracle and the naive path, always built and callable, for tests, `mha check` and benchmarks.
#pragma once

#include <cstdint>
#include <vector>

#include "mha/attention.h"
#include "mha/bert.h"
#include "mha/layers.h"

namespace mha::reference {

struct Result {
  std::vector<double> out;  // [B, Nq, Hq, Dv] row-major (varlen: [1, total_q, Hq, Dv])
  std::vector<double> lse;  // [B, Hq, Nq] row-major; -inf for fully masked rows
};

// Float64 oracle: the inputs are read exactly in their dtype; everything after is double.
// Same arguments and validation as mha::attention.
Result attention_f64(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& options = {});

// The textbook path in working precision, one step at a time, materializing the [Nq, Nk] scores:
// S = q·kᵀ, S *= scale, S += mask, causal/window masking, P = softmax(S), out = P·v. Products
// accumulate in f32; for f16/bf16 inputs S and P are stored in that dtype between steps, as a
// framework running in that precision would. Its error against the oracle is the yardstick of
// the accuracy bar. Same arguments, validation and outputs as mha::attention.
void attention_naive(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                     const AttentionOptions& options = {}, const Tensor* lse = nullptr);

// Gradients of attention, row-major in the shapes of q, k and v.
struct Gradients {
  std::vector<double> dq, dk, dv;
};

// Float64 oracle of the backward: the analytic gradient of sum(dout ∘ attention(q, k, v)) over the
// materialized score and probability matrices, dropout mask included (mha::dropout_keep_mask).
// dout [B, Nq, Hq, Dv] (f32 or q's dtype). Validates like mha::attention.
Gradients attention_backward_f64(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dout,
                                 const AttentionOptions& options = {});

// The textbook backward in working precision (autograd of attention_naive): S, P, dP and dS
// materialized, stored in q's dtype between steps for f16/bf16, products accumulated in f32; the
// yardstick of the gradients' accuracy bar. dq/dk/dv as in mha::attention_backward.
void attention_backward_naive(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dout,
                              const Tensor& dq, const Tensor& dk, const Tensor& dv,
                              const AttentionOptions& options = {});

// Float64 references of the layers: x and the weights are read as their f32 values, every step
// after (projections, RoPE, softmax, products) is double. x [batch, n, d_in] row-major; returns
// [batch, n, d_out] (SelfAttention) or [batch, seq, hidden] (MultiHeadAttention).
std::vector<double> self_attention_f64(const SelfAttentionWeights& w, bool causal, const float* x,
                                       std::int64_t batch, std::int64_t n);
std::vector<double> multi_head_attention_f64(const MultiHeadAttentionConfig& config,
                                             const MultiHeadAttentionWeights& w, const float* x,
                                             std::int64_t batch, std::int64_t seq,
                                             const Tensor* mask = nullptr,
                                             std::span<const std::int32_t> positions = {});

// The BERT encoder from its definition, each sequence on its own with plain loops: every step in
// double (bert_f64, the oracle) or in float (bert_naive, the same-precision yardstick). Inputs as
// BertEncoder's; returns [ids, hidden] hidden states, or [batch, hidden] embeddings when pooled.
std::vector<double> bert_f64(const BertConfig& config, const BertWeights& weights, std::span<const std::int32_t> ids,
                             std::span<const std::int32_t> cu_seqlens, bool pooled,
                             std::span<const std::int32_t> token_types = {});
std::vector<float> bert_naive(const BertConfig& config, const BertWeights& weights, std::span<const std::int32_t> ids,
                              std::span<const std::int32_t> cu_seqlens, bool pooled,
                              std::span<const std::int32_t> token_types = {});

}  // namespace mha::reference
