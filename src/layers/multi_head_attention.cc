// MultiHeadAttention: the BERT-style layer, naive (six plain ops) and optimized (fused).
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "api/validate.h"
#include "layers/layer_args.h"
#include "layers/naive_ops.h"
#include "layers/wide_attention.h"
#include "linalg/gemm.h"
#include "mha/errors.h"
#include "mha/layers.h"
#include "runtime/aligned_buffer.h"
#include "runtime/dtype_convert.h"

namespace mha {

namespace {

// [batch, seq, heads, dim] view of columns [col, col + heads·dim) of a row-major [batch·seq, width] buffer.
Tensor heads_view(float* base, std::int64_t col, std::int64_t width, std::int64_t batch, std::int64_t seq,
                  std::int64_t heads, std::int64_t dim) {
  Tensor t;
  t.data = base + col;
  t.rank = 4;
  t.shape = {batch, seq, heads, dim};
  t.strides = {seq * width, width, dim, 1};
  return t;
}

}  // namespace

struct MultiHeadAttention::Plan {
  detail::AlignedBuffer qkv;  // [batch·seq, (Hq + 2·Hkv)·Dh]
  detail::AlignedBuffer ctx;  // [batch·seq, Hq·Dh]: heads concatenated by the layout
};

MultiHeadAttention::MultiHeadAttention(const MultiHeadAttentionConfig& config,
                                       MultiHeadAttentionWeights weights)
    : config_(config.resolved()), w_(std::move(weights)) {
  constexpr const char* func = "MultiHeadAttention";
  const MultiHeadAttentionConfig& c = config_;
  const std::int64_t q = c.heads * c.head_dim, kv = c.kv_heads * c.head_dim;
  detail::check_weight(func, "w_query", w_.w_query, q * c.hidden);
  detail::check_weight(func, "w_key", w_.w_key, kv * c.hidden);
  detail::check_weight(func, "w_value", w_.w_value, kv * c.hidden);
  detail::check_weight(func, "w_out", w_.w_out, c.hidden * q);
  detail::check_weight(func, "b_query", w_.b_query, c.bias ? q : 0);
  detail::check_weight(func, "b_key", w_.b_key, c.bias ? kv : 0);
  detail::check_weight(func, "b_value", w_.b_value, c.bias ? kv : 0);
  detail::check_weight(func, "b_out", w_.b_out, c.bias ? c.hidden : 0);
  for (auto* w :
       {&w_.w_query, &w_.w_key, &w_.w_value, &w_.w_out, &w_.b_query, &w_.b_key, &w_.b_value, &w_.b_out})
    detail::round_weights(*w, c.weight_dtype);
  detail::fuse_qkv(w_, w_qkv_, b_qkv_);
  if (c.rope) rope_.emplace(c.rope->rotary_dim, c.rope->max_positions, c.rope->theta);
}

MultiHeadAttention::~MultiHeadAttention() = default;
MultiHeadAttention::MultiHeadAttention(MultiHeadAttention&&) noexcept = default;
MultiHeadAttention& MultiHeadAttention::operator=(MultiHeadAttention&&) noexcept = default;

std::size_t MultiHeadAttention::plans_built() const {
  const std::lock_guard lock(*plan_mutex_);
  return plans_.size();
}

namespace {

struct Io {
  std::int64_t batch, seq;
  std::array<std::int64_t, 4> mask_strides;  // over [batch, heads, query, key]; zeros without a mask
};

// Checks x, out, mask and positions.
Io check_io(const char* func, const MultiHeadAttentionConfig& c, const Tensor& x, const Tensor& out,
            const Tensor* mask, std::span<const std::int32_t> positions) {
  if (x.rank != 3)
    throw InvalidArgument(
        "x", fmt::format("{}: x is {}, expected [batch, seq, {}]", func, x.describe(), c.hidden));
  const std::int64_t batch = x.shape[0], seq = x.shape[1];
  detail::check_activation(func, "x", x, {batch, seq, c.hidden});
  detail::check_activation(func, "out", out, {batch, seq, c.hidden});
  Io io{batch, seq, {}};
  if (mask != nullptr) io.mask_strides = detail::check_mask(func, *mask, batch, c.heads, seq, seq).strides;
  if (c.rope) {
    if (!positions.empty() && std::int64_t(positions.size()) != batch)
      throw InvalidArgument("positions", fmt::format("{}: {} positions, expected one per batch entry ({})",
                                                     func, positions.size(), batch));
    for (std::int64_t b = 0; b < batch; ++b)
      if (const std::int64_t p = positions.empty() ? 0 : positions[std::size_t(b)];
          p < 0 || p + seq > c.rope->max_positions)
        throw InvalidArgument(
            "positions", fmt::format("{}: position {} + seq {} leaves [0, max_positions = {}]", func, p, seq,
                                     c.rope->max_positions));
  }
  return io;
}

}  // namespace

void MultiHeadAttention::forward(const Tensor& x, const Tensor& out, const Tensor* mask,
                                 std::span<const std::int32_t> positions) {
  const std::lock_guard lock(*plan_mutex_);
  const MultiHeadAttentionConfig& c = config_;
  const auto [batch, seq, mask_strides] = check_io("MultiHeadAttention.forward", c, x, out, mask, positions);
  const std::int64_t rows = batch * seq, dh = c.head_dim, width = (c.heads + 2 * c.kv_heads) * dh;
  std::unique_ptr<Plan>& plan = plans_[{batch, seq}];
  if (!plan) {
    plan = std::make_unique<Plan>();
    plan->qkv.resize(std::size_t(rows * width));
    plan->ctx.resize(std::size_t(rows * c.heads * dh));
  }
  float* qkv = plan->qkv.data();
  // One projection for Q, K and V with the bias fused.
  detail::gemm(rows, width, c.hidden, {static_cast<const float*>(x.data), c.hidden},
               {w_qkv_.data(), c.hidden, true}, qkv, width, {.bias = c.bias ? b_qkv_.data() : nullptr});
  // Heads are strided views of the projection: no split copies.
  const Tensor q = heads_view(qkv, 0, width, batch, seq, c.heads, dh);
  const Tensor k = heads_view(qkv, c.heads * dh, width, batch, seq, c.kv_heads, dh);
  const Tensor v = heads_view(qkv, (c.heads + c.kv_heads) * dh, width, batch, seq, c.kv_heads, dh);
  if (rope_) {
    rope_->apply(q, c.rope->style, positions);
    rope_->apply(k, c.rope->style, positions);
  }
  // The context lands in [batch, seq, heads, dim] order, which is the heads concatenated.
  const Tensor ctx = Tensor::bshd(plan->ctx.data(), DType::f32, batch, seq, c.heads, dh);
  detail::layer_attention(q, k, v, ctx, float(1.0 / std::sqrt(double(dh))), c.causal, mask);
  detail::gemm(rows, c.hidden, c.heads * dh, {plan->ctx.data(), c.heads * dh},
               {w_.w_out.data(), c.heads * dh, true}, static_cast<float*>(out.data), c.hidden,
               {.bias = c.bias ? w_.b_out.data() : nullptr});
}

void MultiHeadAttention::forward_naive(const Tensor& x, const Tensor& out, const Tensor* mask,
                                       std::span<const std::int32_t> positions) const {
  constexpr const char* func = "MultiHeadAttention.forward_naive";
  const MultiHeadAttentionConfig& c = config_;
  const Io io = check_io(func, c, x, out, mask, positions);  // plain names: lambdas below capture them
  const std::int64_t batch = io.batch, seq = io.seq;
  const std::array<std::int64_t, 4>& ms = io.mask_strides;
  const std::int64_t rows = batch * seq, dh = c.head_dim, hq = c.heads, hkv = c.kv_heads;
  const float* xs = static_cast<const float*>(x.data);
  auto bias = [&](const std::vector<float>& b) { return c.bias ? b.data() : nullptr; };

  // 1. three projections
  std::vector<float> q(std::size_t(rows * hq * dh)), k(std::size_t(rows * hkv * dh)), v(k.size());
  detail::naive::matmul_nt(xs, w_.w_query.data(), bias(w_.b_query), q.data(), rows, hq * dh, c.hidden);
  detail::naive::matmul_nt(xs, w_.w_key.data(), bias(w_.b_key), k.data(), rows, hkv * dh, c.hidden);
  detail::naive::matmul_nt(xs, w_.w_value.data(), bias(w_.b_value), v.data(), rows, hkv * dh, c.hidden);
  if (rope_) {
    rope_->apply(Tensor::bshd(q.data(), DType::f32, batch, seq, hq, dh), c.rope->style, positions);
    rope_->apply(Tensor::bshd(k.data(), DType::f32, batch, seq, hkv, dh), c.rope->style, positions);
  }
  // 2. split heads: [batch, seq, heads, dh] -> [batch, heads, seq, dh] copies (and back for step 6)
  auto permute = [&](const std::vector<float>& src, std::int64_t heads, bool split_heads) {
    std::vector<float> dst(src.size());
    for (std::int64_t b = 0; b < batch; ++b)
      for (std::int64_t s = 0; s < seq; ++s)
        for (std::int64_t h = 0; h < heads; ++h) {
          const std::size_t bshd = std::size_t(((b * seq + s) * heads + h) * dh);
          const std::size_t bhsd = std::size_t(((b * heads + h) * seq + s) * dh);
          std::copy_n(src.begin() + std::ptrdiff_t(split_heads ? bshd : bhsd), dh,
                      dst.begin() + std::ptrdiff_t(split_heads ? bhsd : bshd));
        }
    return dst;
  };
  auto split = [&](const std::vector<float>& src, std::int64_t heads) { return permute(src, heads, true); };
  const std::vector<float> qh = split(q, hq), kh = split(k, hkv), vh = split(v, hkv);
  // 3-5. per head: scores, scale + mask + softmax, P·V
  std::vector<float> scores(std::size_t(seq * seq)), ctx_h(std::size_t(rows * hq * dh));
  const float scale = float(1.0 / std::sqrt(double(dh)));
  for (std::int64_t b = 0; b < batch; ++b) {
    for (std::int64_t h = 0; h < hq; ++h) {
      const std::int64_t kvh = h / (hq / hkv);
      const float* kb = kh.data() + (b * hkv + kvh) * seq * dh;
      detail::naive::matmul_nt(qh.data() + (b * hq + h) * seq * dh, kb, nullptr, scores.data(), seq, seq, dh);
      for (std::int64_t i = 0; i < seq; ++i) {
        for (std::int64_t j = 0; j < seq; ++j) {
          float& s = scores[std::size_t(i * seq + j)];
          s *= scale;
          if (mask != nullptr)
            s += detail::load_f32(mask->data, mask->dtype, b * ms[0] + h * ms[1] + i * ms[2] + j * ms[3]);
          if (c.causal && j > i) s = -std::numeric_limits<float>::infinity();
        }
      }
      detail::naive::softmax_rows(scores.data(), seq, seq);
      detail::naive::matmul_nn(scores.data(), vh.data() + (b * hkv + kvh) * seq * dh,
                               ctx_h.data() + (b * hq + h) * seq * dh, seq, dh, seq);
    }
  }
  // 6. concatenate heads (copy back to [batch, seq, heads·dh]) and project out
  const std::vector<float> ctx = permute(ctx_h, hq, false);
  detail::naive::matmul_nt(ctx.data(), w_.w_out.data(), bias(w_.b_out), static_cast<float*>(out.data), rows,
                           c.hidden, hq * dh);
}

}  // namespace mha
