// BertEncoder: a packed (varlen) BERT forward, mean pooling and L2 normalization.
//
// One layer on a packed batch of T tokens (hidden H, intermediate I), each product one fixed-grid
// GEMM on the pool with its epilogue folded into the tile while it is in cache:
//   qkv [T, 3H] = x·W_qkvᵀ + b                      (the three projections fused)
//   ctx [T, H]  = varlen flash attention over qkv's strided head views (no padding, no copies)
//   h1  [T, H]  = LayerNorm(x + ctx·W_oᵀ + b_o)      (residual and bias are sgemm's starting c)
//   f   [T, I]  = GELU(h1·W_inᵀ + b_in)
//   x   [T, H]  = LayerNorm(h1 + f·W_outᵀ + b_out)
// The products are ~24·H² FLOPs per token against attention's 4·H per (token, key) pair: at
// MiniLM's H = 384 and 128-token sentences the products are ~85 % of the work.
#include <fmt/format.h>

#include <cmath>
#include <filesystem>

#include "layers/layer_args.h"
#include "linalg/elementwise.h"
#include "linalg/gemm.h"
#include "mha/attention.h"
#include "mha/bert.h"
#include "mha/errors.h"
#include "runtime/aligned_buffer.h"
#include "runtime/thread_pool.h"

namespace mha {

struct BertEncoder::Buffers {
  std::int64_t tokens = 0;  // capacity in token rows
  detail::AlignedBuffer x, qkv, ctx, h1, inter;
};

BertEncoder::BertEncoder(const BertConfig& config, BertWeights weights) : config_(config), w_(std::move(weights)) {
  config_.validate();
  constexpr const char* func = "BertEncoder";
  const BertConfig& c = config_;
  const std::int64_t h = c.hidden, i = c.intermediate;
  detail::check_weight(func, "word", w_.word, c.vocab_size * h);
  detail::check_weight(func, "position", w_.position, c.max_positions * h);
  detail::check_weight(func, "token_type", w_.token_type, c.type_vocab_size * h);
  detail::check_weight(func, "ln_gamma", w_.ln_gamma, h);
  detail::check_weight(func, "ln_beta", w_.ln_beta, h);
  if (std::int64_t(w_.layers.size()) != c.layers)
    throw InvalidArgument("layers", fmt::format("{}: {} layers of weights, config says {}", func,
                                                w_.layers.size(), c.layers));
  for (const BertLayerWeights& l : w_.layers) {
    const MultiHeadAttentionWeights& a = l.attention;
    for (const auto* m : {&a.w_query, &a.w_key, &a.w_value, &a.w_out})
      detail::check_weight(func, "attention", *m, h * h);
    for (const auto* b : {&a.b_query, &a.b_key, &a.b_value, &a.b_out, &l.ln1_gamma, &l.ln1_beta, &l.b_out,
                          &l.ln2_gamma, &l.ln2_beta})
      detail::check_weight(func, "layer vector", *b, h);
    detail::check_weight(func, "w_in", l.w_in, i * h);
    detail::check_weight(func, "b_in", l.b_in, i);
    detail::check_weight(func, "w_out", l.w_out, h * i);
    std::vector<float>& w = w_qkv_.emplace_back();
    std::vector<float>& b = b_qkv_.emplace_back();
    for (const auto* m : {&a.w_query, &a.w_key, &a.w_value}) w.insert(w.end(), m->begin(), m->end());
    for (const auto* m : {&a.b_query, &a.b_key, &a.b_value}) b.insert(b.end(), m->begin(), m->end());
  }
  buffers_ = std::make_unique<Buffers>();
}

BertEncoder::~BertEncoder() = default;
BertEncoder::BertEncoder(BertEncoder&&) noexcept = default;
BertEncoder& BertEncoder::operator=(BertEncoder&&) noexcept = default;

BertEncoder BertEncoder::load(const std::string& model_dir) {
  const std::filesystem::path dir(model_dir);
  const BertConfig config = BertConfig::load((dir / "config.json").string());
  const SafeTensors file = SafeTensors::load((dir / "model.safetensors").string());
  return BertEncoder(config, BertWeights::load(file, config));
}

namespace {

// Checks ids, offsets and token types against the config; nothing is computed before they pass.
void check_tokens(const char* func, const BertConfig& c, std::span<const std::int32_t> ids,
                  std::span<const std::int32_t> cu, std::span<const std::int32_t> types) {
  if (cu.size() < 2 || cu.front() != 0 || std::size_t(cu.back()) != ids.size())
    throw InvalidArgument("cu_seqlens",
                          fmt::format("{}: cu_seqlens has {} entries (first {}, last {}), expected batch + 1 >= 2 "
                                      "offsets from 0 to the number of ids ({})",
                                      func, cu.size(), cu.empty() ? 0 : cu.front(), cu.empty() ? 0 : cu.back(),
                                      ids.size()));
  for (std::size_t b = 0; b + 1 < cu.size(); ++b) {
    const std::int64_t len = std::int64_t(cu[b + 1]) - cu[b];
    if (len < 0 || len > c.max_positions)
      throw InvalidArgument("cu_seqlens", fmt::format("{}: sequence {} has length {}, expected 0 to max_positions "
                                                      "= {}",
                                                      func, b, len, c.max_positions));
  }
  for (std::size_t t = 0; t < ids.size(); ++t)
    if (ids[t] < 0 || ids[t] >= c.vocab_size)
      throw InvalidArgument("ids", fmt::format("{}: ids[{}] = {}, expected 0 to vocab_size - 1 = {}", func, t,
                                               ids[t], c.vocab_size - 1));
  if (!types.empty() && types.size() != ids.size())
    throw InvalidArgument("token_types", fmt::format("{}: {} token types for {} ids, expected one per id or none",
                                                     func, types.size(), ids.size()));
  for (std::size_t t = 0; t < types.size(); ++t)
    if (types[t] < 0 || types[t] >= c.type_vocab_size)
      throw InvalidArgument("token_types", fmt::format("{}: token_types[{}] = {}, expected 0 to {}", func, t,
                                                       types[t], c.type_vocab_size - 1));
}

// [1, tokens, heads, dim] view of columns [col, col + heads·dim) of a row-major [tokens, width] buffer.
Tensor packed_heads(float* base, std::int64_t col, std::int64_t width, std::int64_t tokens, std::int64_t heads,
                    std::int64_t dim) {
  Tensor t;
  t.data = base + col;
  t.rank = 4;
  t.shape = {1, tokens, heads, dim};
  t.strides = {tokens * width, width, dim, 1};
  return t;
}

}  // namespace

void BertEncoder::run(std::span<const std::int32_t> ids, std::span<const std::int32_t> cu,
                      std::span<const std::int32_t> types, float* x) {
  const BertConfig& c = config_;
  const std::int64_t tokens = std::int64_t(ids.size()), h = c.hidden, inter = c.intermediate;
  const std::int64_t batch = std::int64_t(cu.size()) - 1, dh = h / c.heads;
  Buffers& buf = *buffers_;
  if (tokens > buf.tokens) {  // grows to the largest batch seen; smaller calls allocate nothing
    buf.qkv.resize(std::size_t(tokens * 3 * h));
    buf.ctx.resize(std::size_t(tokens * h));
    buf.h1.resize(std::size_t(tokens * h));
    buf.inter.resize(std::size_t(tokens * inter));
    buf.tokens = tokens;
  }
  // Embeddings: (word + token type) + position, in the order BertEmbeddings adds them.
  detail::global_pool()->parallel_for(batch, [&](std::int64_t b) {
    for (std::int64_t t = cu[std::size_t(b)]; t < cu[std::size_t(b) + 1]; ++t) {
      const float* word = w_.word.data() + std::int64_t(ids[std::size_t(t)]) * h;
      const float* type = w_.token_type.data() + (types.empty() ? 0 : std::int64_t(types[std::size_t(t)])) * h;
      const float* pos = w_.position.data() + (t - cu[std::size_t(b)]) * h;
      float* row = x + t * h;
      for (std::int64_t j = 0; j < h; ++j) row[j] = (word[j] + type[j]) + pos[j];
    }
  });
  detail::layer_norm_rows(x, tokens, h, h, w_.ln_gamma.data(), w_.ln_beta.data(), c.layer_norm_eps);

  AttentionOptions options;
  options.cu_seqlens_q = cu;
  options.cu_seqlens_k = cu;
  float *qkv = buf.qkv.data(), *ctx = buf.ctx.data(), *h1 = buf.h1.data(), *f = buf.inter.data();
  const Tensor q = packed_heads(qkv, 0, 3 * h, tokens, c.heads, dh);
  const Tensor k = packed_heads(qkv, h, 3 * h, tokens, c.heads, dh);
  const Tensor v = packed_heads(qkv, 2 * h, 3 * h, tokens, c.heads, dh);
  const Tensor o = packed_heads(ctx, 0, h, tokens, c.heads, dh);
  for (std::size_t n = 0; n < w_.layers.size(); ++n) {
    const BertLayerWeights& l = w_.layers[n];
    detail::gemm(tokens, 3 * h, h, {x, h}, {w_qkv_[n].data(), h, true}, qkv, 3 * h, {.bias = b_qkv_[n].data()});
    attention(q, k, v, o, options);
    detail::gemm(tokens, h, h, {ctx, h}, {l.attention.w_out.data(), h, true}, h1, h,
                 {.bias = l.attention.b_out.data(), .residual = x, .ld_residual = h});
    detail::layer_norm_rows(h1, tokens, h, h, l.ln1_gamma.data(), l.ln1_beta.data(), c.layer_norm_eps);
    detail::gemm(tokens, inter, h, {h1, h}, {l.w_in.data(), h, true}, f, inter,
                 {.bias = l.b_in.data(), .gelu = true});
    detail::gemm(tokens, h, inter, {f, inter}, {l.w_out.data(), inter, true}, x, h,
                 {.bias = l.b_out.data(), .residual = h1, .ld_residual = h});
    detail::layer_norm_rows(x, tokens, h, h, l.ln2_gamma.data(), l.ln2_beta.data(), c.layer_norm_eps);
  }
}

void BertEncoder::forward(std::span<const std::int32_t> ids, std::span<const std::int32_t> cu_seqlens,
                          const Tensor& hidden, std::span<const std::int32_t> token_types) {
  constexpr const char* func = "BertEncoder.forward";
  const std::lock_guard lock(*mutex_);
  check_tokens(func, config_, ids, cu_seqlens, token_types);
  detail::check_activation(func, "hidden", hidden, {std::int64_t(ids.size()), config_.hidden});
  if (ids.empty()) return;
  run(ids, cu_seqlens, token_types, static_cast<float*>(hidden.data));
}

void BertEncoder::embed(std::span<const std::int32_t> ids, std::span<const std::int32_t> cu_seqlens,
                        const Tensor& out, std::span<const std::int32_t> token_types, bool normalize) {
  constexpr const char* func = "BertEncoder.embed";
  const std::lock_guard lock(*mutex_);
  check_tokens(func, config_, ids, cu_seqlens, token_types);
  const std::int64_t batch = std::int64_t(cu_seqlens.size()) - 1, h = config_.hidden;
  detail::check_activation(func, "out", out, {batch, h});
  Buffers& buf = *buffers_;
  if (std::int64_t(buf.x.size()) < std::int64_t(ids.size()) * h) buf.x.resize(ids.size() * std::size_t(h));
  if (!ids.empty()) run(ids, cu_seqlens, token_types, buf.x.data());
  float* e = static_cast<float*>(out.data);
  // Mean over each sequence's tokens and x / max(‖x‖, 1e-12), as sentence-transformers' Pooling
  // and Normalize modules; sums in double, in token order.
  detail::global_pool()->parallel_for(batch, [&](std::int64_t b) {
    const std::int64_t begin = cu_seqlens[std::size_t(b)], end = cu_seqlens[std::size_t(b) + 1];
    float* row = e + b * h;
    double norm = 0;
    for (std::int64_t j = 0; j < h; ++j) {
      double s = 0;
      for (std::int64_t t = begin; t < end; ++t) s += buf.x.data()[t * h + j];
      row[j] = end > begin ? float(s / double(end - begin)) : 0.f;
      norm += double(row[j]) * row[j];
    }
    const double divisor = normalize ? std::max(std::sqrt(norm), 1e-12) : 1.0;
    for (std::int64_t j = 0; j < h; ++j) row[j] = float(row[j] / divisor);
  });
}

}  // namespace mha
