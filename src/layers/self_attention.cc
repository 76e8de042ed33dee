// SelfAttention: the single-head layer of the tutorials, naive and optimized.
#include <fmt/format.h>

#include <cmath>
#include <limits>

#include "layers/layer_args.h"
#include "layers/naive_ops.h"
#include "layers/wide_attention.h"
#include "linalg/gemm.h"
#include "mha/errors.h"
#include "mha/layers.h"
#include "runtime/aligned_buffer.h"

namespace mha {

namespace {

constexpr const char* kForward = "SelfAttention.forward";

// Batch and rows of x ([n, d_in] or [batch, n, d_in]) after checking x and out.
std::pair<std::int64_t, std::int64_t> check_io(const char* func, const Tensor& x, const Tensor& out,
                                               std::int64_t d_in, std::int64_t d_out) {
  if (x.rank != 2 && x.rank != 3)
    throw InvalidArgument(
        "x", fmt::format("{}: x is {}, expected [n, {}] or [batch, n, {}]", func, x.describe(), d_in, d_in));
  const std::int64_t batch = x.rank == 3 ? x.shape[0] : 1, n = x.shape[std::size_t(x.rank - 2)];
  if (x.rank == 3) {
    detail::check_activation(func, "x", x, {batch, n, d_in});
    detail::check_activation(func, "out", out, {batch, n, d_out});
  } else {
    detail::check_activation(func, "x", x, {n, d_in});
    detail::check_activation(func, "out", out, {n, d_out});
  }
  return {batch, n};
}

}  // namespace

struct SelfAttention::Plan {
  detail::AlignedBuffer qkv;  // [batch·n, 3·d_out]: Q | K | V per row
};

SelfAttention::SelfAttention(SelfAttentionWeights weights, SelfAttentionOptions options)
    : w_(std::move(weights)), options_(options) {
  constexpr const char* func = "SelfAttention";
  if (w_.d_in < 1 || w_.d_out < 1)
    throw InvalidArgument("weights",
                          fmt::format("{}: d_in = {}, d_out = {}, expected >= 1", func, w_.d_in, w_.d_out));
  const std::int64_t size = w_.d_in * w_.d_out;
  detail::check_weight(func, "w_query", w_.w_query, size);
  detail::check_weight(func, "w_key", w_.w_key, size);
  detail::check_weight(func, "w_value", w_.w_value, size);
  for (auto* w : {&w_.w_query, &w_.w_key, &w_.w_value}) {
    detail::round_weights(*w, options_.weight_dtype);
    w_qkv_.insert(w_qkv_.end(), w->begin(), w->end());  // rows stack: [3·d_out, d_in]
  }
}

SelfAttention::~SelfAttention() = default;
SelfAttention::SelfAttention(SelfAttention&&) noexcept = default;
SelfAttention& SelfAttention::operator=(SelfAttention&&) noexcept = default;

std::size_t SelfAttention::plans_built() const {
  const std::lock_guard lock(*plan_mutex_);
  return plans_.size();
}

void SelfAttention::forward(const Tensor& x, const Tensor& out) {
  const std::lock_guard lock(*plan_mutex_);
  const auto io = check_io(kForward, x, out, w_.d_in, w_.d_out);
  const std::int64_t batch = io.first, n = io.second;  // plain names: lambdas below capture them
  const std::int64_t rows = batch * n, d = w_.d_out, width = 3 * d;
  std::unique_ptr<Plan>& plan = plans_[{batch, n}];
  if (!plan) {
    plan = std::make_unique<Plan>();
    plan->qkv.resize(std::size_t(rows * width));
  }
  float* qkv = plan->qkv.data();
  detail::gemm(rows, width, w_.d_in, {static_cast<const float*>(x.data), w_.d_in},
               {w_qkv_.data(), w_.d_in, true}, qkv, width);
  // Q, K and V are strided views of the one projection: [batch, n, 1 head, d].
  auto view = [&](float* base) {
    Tensor t;
    t.data = base;
    t.rank = 4;
    t.shape = {batch, n, 1, d};
    t.strides = {n * width, width, d, 1};
    return t;
  };
  const Tensor o = Tensor::bshd(out.data, DType::f32, batch, n, 1, d);
  detail::layer_attention(view(qkv), view(qkv + d), view(qkv + 2 * d), o, float(1.0 / std::sqrt(double(d))),
                          options_.causal, nullptr);
}

void SelfAttention::forward_naive(const Tensor& x, const Tensor& out) const {
  const auto [batch, n] = check_io("SelfAttention.forward_naive", x, out, w_.d_in, w_.d_out);
  const std::int64_t d = w_.d_out;
  const float* xs = static_cast<const float*>(x.data);
  float* os = static_cast<float*>(out.data);
  std::vector<float> q(std::size_t(n * d)), k(q.size()), v(q.size()), s(std::size_t(n * n));
  const float scale = float(1.0 / std::sqrt(double(d)));
  for (std::int64_t b = 0; b < batch; ++b) {
    const float* xb = xs + b * n * w_.d_in;
    detail::naive::matmul_nt(xb, w_.w_query.data(), nullptr, q.data(), n, d, w_.d_in);
    detail::naive::matmul_nt(xb, w_.w_key.data(), nullptr, k.data(), n, d, w_.d_in);
    detail::naive::matmul_nt(xb, w_.w_value.data(), nullptr, v.data(), n, d, w_.d_in);
    detail::naive::matmul_nt(q.data(), k.data(), nullptr, s.data(), n, n, d);
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t j = 0; j < n; ++j)
        s[std::size_t(i * n + j)] = options_.causal && j > i ? -std::numeric_limits<float>::infinity()
                                                             : s[std::size_t(i * n + j)] * scale;
    detail::naive::softmax_rows(s.data(), n, n);
    detail::naive::matmul_nn(s.data(), v.data(), os + b * n * d, n, d, n);
  }
}

}  // namespace mha
