// A BERT encoder (the architecture of all-MiniLM-L6-v2 and other sentence encoders) built from
// mha's layers: embeddings + LayerNorm, N × [self-attention, residual + LayerNorm, FFN with the
// exact-erf GELU, residual + LayerNorm], then masked mean pooling and L2 normalization as
// sentence-transformers does.
//
// Batches are packed by real length: sequence b owns token rows cu_seqlens[b] .. cu_seqlens[b+1]-1
// of one [total, hidden] activation, and attention runs varlen over those rows. No token is padding,
// so a batch of mixed lengths costs what its real tokens cost.
//
// Every product runs on mha's pool over a fixed grid, so the output is bitwise the same for any
// thread count. Activation buffers grow to the largest batch seen and are reused: calls no larger
// than an earlier one allocate nothing.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "mha/layers.h"
#include "mha/safetensors.h"
#include "mha/tensor.h"

namespace mha {

// The fields of a Hugging Face BERT config.json that the encoder uses.
struct BertConfig {
  std::int64_t vocab_size = 0;
  std::int64_t hidden = 0;                // hidden_size
  std::int64_t layers = 0;                // num_hidden_layers
  std::int64_t heads = 0;                 // num_attention_heads
  std::int64_t intermediate = 0;          // intermediate_size
  std::int64_t max_positions = 512;       // max_position_embeddings
  std::int64_t type_vocab_size = 2;
  double layer_norm_eps = 1e-12;

  // Parses config.json text; `name` stands for the file in messages. IoError for malformed JSON or
  // a missing field; Unsupported for a hidden_act other than "gelu" or position embeddings other
  // than "absolute"; InvalidArgument naming the field for inconsistent sizes.
  static BertConfig parse_json(std::string_view text, const std::string& name);
  static BertConfig load(const std::string& path);
  // InvalidArgument naming the field unless every size is positive and heads divides hidden.
  void validate() const;
};

struct BertLayerWeights {
  MultiHeadAttentionWeights attention;          // attention.self.* and attention.output.dense
  std::vector<float> ln1_gamma, ln1_beta;       // attention.output.LayerNorm [hidden]
  std::vector<float> w_in, b_in;                // intermediate.dense [intermediate, hidden]
  std::vector<float> w_out, b_out;              // output.dense [hidden, intermediate]
  std::vector<float> ln2_gamma, ln2_beta;       // output.LayerNorm [hidden]
};

struct BertWeights {
  std::vector<float> word, position, token_type;  // embeddings [vocab|positions|types, hidden]
  std::vector<float> ln_gamma, ln_beta;           // embeddings.LayerNorm
  std::vector<BertLayerWeights> layers;

  // BERT's init (normal with std 0.02 for matrices, zero biases, unit LayerNorm), from `seed`.
  static BertWeights random(const BertConfig& config, std::uint64_t seed);
  // Hugging Face names (embeddings.*, encoder.layer.N.*), with or without a leading "bert.".
  // InvalidArgument naming a missing or misshapen tensor.
  static BertWeights load(const SafeTensors& file, const BertConfig& config);
  std::vector<SafeTensorEntry> entries(const BertConfig& config) const;
};

class BertEncoder {
 public:
  BertEncoder(const BertConfig& config, BertWeights weights);
  ~BertEncoder();
  BertEncoder(BertEncoder&&) noexcept;
  BertEncoder& operator=(BertEncoder&&) noexcept;

  // config.json and model.safetensors from a model directory (a Hugging Face or
  // sentence-transformers checkpoint). IoError naming the file when one is missing or malformed.
  static BertEncoder load(const std::string& model_dir);

  const BertConfig& config() const { return config_; }
  const BertWeights& weights() const { return w_; }

  // ids: the token ids of every sequence, packed; cu_seqlens: batch + 1 offsets (0 first, ids.size()
  // last, non-decreasing, each sequence at most max_positions long); token_types: one per id, or
  // empty for all zeros. hidden: [ids.size(), hidden] f32 contiguous, the last layer's output.
  // InvalidArgument naming the argument (nothing written) for ids out of the vocabulary, bad
  // offsets or a misshapen output.
  void forward(std::span<const std::int32_t> ids, std::span<const std::int32_t> cu_seqlens,
               const Tensor& hidden, std::span<const std::int32_t> token_types = {});
  // Sentence embeddings: forward, then each sequence's mean over its tokens (zeros for an empty
  // sequence), L2-normalized unless `normalize` is off (x / max(‖x‖, 1e-12), sentence-transformers'
  // Normalize). out: [batch, hidden] f32 contiguous.
  void embed(std::span<const std::int32_t> ids, std::span<const std::int32_t> cu_seqlens, const Tensor& out,
             std::span<const std::int32_t> token_types = {}, bool normalize = true);

 private:
  struct Buffers;
  void run(std::span<const std::int32_t> ids, std::span<const std::int32_t> cu_seqlens,
           std::span<const std::int32_t> token_types, float* hidden);

  BertConfig config_;
  BertWeights w_;
  std::vector<std::vector<float>> w_qkv_, b_qkv_;  // per layer: the three projections fused
  std::unique_ptr<Buffers> buffers_;
  std::unique_ptr<std::mutex> mutex_ = std::make_unique<std::mutex>();  // held by forward and embed
};

}  // namespace mha
