// Attention layers built on the flash kernels: the textbook single-head SelfAttention and the
// BERT-style MultiHeadAttention, each with a naive path (plain loops, the steps of the tutorials)
// and an optimized path (weights fused once, one BLAS projection, heads as strided views, flash core).
//
// Weights follow PyTorch's nn.Linear: a projection from d_in to d_out is W [d_out, d_in] and y = x·Wᵀ + b,
// so checkpoints load without transposes. Weights may be held in f32, f16 or bf16 (rounded once when
// the layer is built); the projections run in f32 through OpenBLAS, whose Debian build has no bf16 GEMM.
//
// Plans: the first forward of a given input shape builds a plan (activation buffers, the work grid);
// later calls of that shape reuse it and allocate nothing. forward may be called from several
// threads on one object: calls take the layer's lock (they share the plan's buffers, and the
// kernels already share one thread pool), so they run one after the other.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "mha/rope.h"
#include "mha/safetensors.h"
#include "mha/tensor.h"

namespace mha {

// ---- SelfAttention --------------------------------------------------------------------------

// softmax(Q·Kᵀ/√d_out)·V with Q = x·W_qᵀ, K = x·W_kᵀ, V = x·W_vᵀ; no bias.
struct SelfAttentionWeights {
  std::int64_t d_in = 0, d_out = 0;
  std::vector<float> w_query, w_key, w_value;  // [d_out, d_in] each

  // nn.Linear's default init: uniform in ±1/√d_in, reproducible from `seed`.
  static SelfAttentionWeights random(std::int64_t d_in, std::int64_t d_out, std::uint64_t seed);
  // Tensors `{prefix}W_query.weight`, `W_key.weight`, `W_value.weight` of shape [d_out, d_in], F32/F16/BF16.
  static SelfAttentionWeights load(const SafeTensors& file, std::int64_t d_in, std::int64_t d_out,
                                   const std::string& prefix = "");
  // The same names, for save_safetensors (views into this object).
  std::vector<SafeTensorEntry> entries(const std::string& prefix = "") const;
};

struct SelfAttentionOptions {
  DType weight_dtype = DType::f32;  // weights are rounded to this dtype once
  bool causal = false;
};

class SelfAttention {
 public:
  explicit SelfAttention(SelfAttentionWeights weights, SelfAttentionOptions options = {});
  ~SelfAttention();
  SelfAttention(SelfAttention&&) noexcept;
  SelfAttention& operator=(SelfAttention&&) noexcept;

  std::int64_t d_in() const { return w_.d_in; }
  std::int64_t d_out() const { return w_.d_out; }
  // The weights as the layer uses them (after rounding to weight_dtype).
  const SelfAttentionWeights& weights() const { return w_; }

  // x [n, d_in] or [batch, n, d_in], out [n, d_out] or [batch, n, d_out]: f32, contiguous. Throws
  // InvalidArgument naming x or out (nothing written) when they do not fit.
  void forward(const Tensor& x, const Tensor& out);
  // Three separate projections, the full [n, n] score matrix, softmax, matmul: plain loops.
  void forward_naive(const Tensor& x, const Tensor& out) const;

  std::size_t plans_built() const;

 private:
  struct Plan;
  SelfAttentionWeights w_;
  SelfAttentionOptions options_;
  std::vector<float> w_qkv_;  // [3·d_out, d_in]: the three projections fused into one operand
  std::map<std::pair<std::int64_t, std::int64_t>, std::unique_ptr<Plan>> plans_;
  std::unique_ptr<std::mutex> plan_mutex_ = std::make_unique<std::mutex>();  // held by forward
};

// ---- MultiHeadAttention ---------------------------------------------------------------------

struct RopeConfig {
  RopeStyle style = RopeStyle::half;
  double theta = 10000.0;
  std::int64_t rotary_dim = 0;  // 0: the whole head dim
  std::int64_t max_positions = 4096;
};

struct MultiHeadAttentionConfig {
  std::int64_t hidden = 0;
  std::int64_t heads = 0;
  std::int64_t kv_heads = 0;  // 0: = heads; fewer for GQA/MQA (must divide heads)
  std::int64_t head_dim = 0;  // 0: hidden / heads
  bool bias = true;
  bool causal = false;
  DType weight_dtype = DType::f32;
  std::optional<RopeConfig> rope;  // rotary embedding of q and k after the projection

  // The same config with the defaults filled in; InvalidArgument naming the field when inconsistent.
  MultiHeadAttentionConfig resolved() const;
};

// Shapes with Hq = heads, Hkv = kv_heads, Dh = head_dim: w_query [Hq·Dh, hidden], w_key and w_value
// [Hkv·Dh, hidden], w_out [hidden, Hq·Dh]; biases [rows of their weight] (empty when bias is off).
struct MultiHeadAttentionWeights {
  std::vector<float> w_query, b_query, w_key, b_key, w_value, b_value, w_out, b_out;

  static MultiHeadAttentionWeights random(const MultiHeadAttentionConfig& config, std::uint64_t seed);
  // Hugging Face BERT names under `prefix` (e.g. "bert.encoder.layer.0."):
  // attention.self.{query,key,value}.{weight,bias}, attention.output.dense.{weight,bias}.
  static MultiHeadAttentionWeights load(const SafeTensors& file, const MultiHeadAttentionConfig& config,
                                        const std::string& prefix = "");
  std::vector<SafeTensorEntry> entries(const MultiHeadAttentionConfig& config,
                                       const std::string& prefix = "") const;
};

class MultiHeadAttention {
 public:
  MultiHeadAttention(const MultiHeadAttentionConfig& config, MultiHeadAttentionWeights weights);
  ~MultiHeadAttention();
  MultiHeadAttention(MultiHeadAttention&&) noexcept;
  MultiHeadAttention& operator=(MultiHeadAttention&&) noexcept;

  const MultiHeadAttentionConfig& config() const { return config_; }
  const MultiHeadAttentionWeights& weights() const { return w_; }

  // x, out: [batch, seq, hidden] f32 contiguous. mask: additive, broadcastable to [batch, heads, seq, seq]
  // (BERT's [batch, 1, 1, seq] padding mask; f32/f16/bf16, -inf allowed). positions: RoPE offset of
  // each batch entry (empty: 0); ignored without rope. Throws InvalidArgument naming the argument.
  void forward(const Tensor& x, const Tensor& out, const Tensor* mask = nullptr,
               std::span<const std::int32_t> positions = {});
  // The tutorial's six plain ops: three projections, split heads (copies), scaled + masked softmax
  // over the full score matrix, P·V, concatenation (copy) and the output projection.
  void forward_naive(const Tensor& x, const Tensor& out, const Tensor* mask = nullptr,
                     std::span<const std::int32_t> positions = {}) const;

  std::size_t plans_built() const;

 private:
  struct Plan;
  MultiHeadAttentionConfig config_;
  MultiHeadAttentionWeights w_;
  std::vector<float> w_qkv_, b_qkv_;  // [(Hq + 2·Hkv)·Dh, hidden] and its bias: one fused projection
  std::optional<RopeTable> rope_;
  std::map<std::pair<std::int64_t, std::int64_t>, std::unique_ptr<Plan>> plans_;
  std::unique_ptr<std::mutex> plan_mutex_ = std::make_unique<std::mutex>();  // held by forward
};

}  // namespace mha
