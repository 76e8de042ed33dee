// TensorParallelDecoder: one causal attention layer with a KV cache, sharded by heads over ranks.
// Per operation each rank projects x onto its heads (one fused GEMM), applies RoPE at the tokens'
// positions, writes its KV heads into its own cache, attends (chunked prefill or flash decode),
// multiplies its context by its columns of W_out, and the ranks all-reduce the partial outputs.
// Before any of that the ranks agree on the operation (an allgather of its hash), so a rank that
// calls something else fails on every rank instead of leaving the others in a collective.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>

#include "api/views.h"
#include "dist/shard.h"
#include "layers/layer_args.h"
#include "linalg/gemm.h"
#include "mha/decode.h"
#include "mha/dist.h"

namespace mha::dist {

namespace {

enum class OpKind : std::int64_t { admit = 1, admit_kv, step, retire };

// Columns [col, col + heads·dh) of a row-major [rows, width] buffer as [rows, heads, dh] (rank 3) or
// [rows, 1, heads, dh] (rank 4).
Tensor heads(float* base, std::int64_t col, std::int64_t width, std::int64_t rows, std::int64_t h,
             std::int64_t dh, bool rank4) {
  Tensor t;
  t.data = base + col;
  if (rank4) {
    t.rank = 4;
    t.shape = {rows, 1, h, dh};
    t.strides = {width, width, dh, 1};
  } else {
    t.rank = 3;
    t.shape = {rows, h, dh, 0};
    t.strides = {width, dh, 1, 0};
  }
  return t;
}

// Rows [r0, r1) of a rank-3 view.
Tensor rows_of(const Tensor& t, std::int64_t r0, std::int64_t r1) {
  Tensor r = t;
  r.data = static_cast<char*>(t.data) + r0 * t.strides[0] * std::int64_t(size_of(t.dtype));
  r.shape[0] = r1 - r0;
  return r;
}

using Clock = std::chrono::steady_clock;

}  // namespace

struct TensorParallelDecoder::Op {
  OpKind kind;
  std::int64_t a = 0, b = 0;
};

TensorParallelDecoder::TensorParallelDecoder(Communicator& comm, const MultiHeadAttentionConfig& config,
                                             const MultiHeadAttentionWeights& weights, const KvCacheConfig& cache)
    : comm_(comm), config_(config.resolved()) {
  constexpr const char* func = "TensorParallelDecoder";
  config_.causal = true;
  if (cache.kv_heads != config_.kv_heads || cache.head_dim != config_.head_dim)
    throw InvalidArgument("cache", fmt::format("{}: cache has kv_heads = {}, head_dim = {}; expected the "
                                               "layer's {} and {}",
                                               func, cache.kv_heads, cache.head_dim, config_.kv_heads,
                                               config_.head_dim));
  shard_ = shard_heads(config_.heads, config_.kv_heads, comm.rank(), comm.size());
  detail::check_same_model(comm, func, config_, weights);
  MultiHeadAttentionWeights local = detail::shard_weights(config_, weights, shard_);
  for (auto* w : {&local.w_query, &local.w_key, &local.w_value, &local.w_out, &local.b_query, &local.b_key,
                  &local.b_value})
    mha::detail::round_weights(*w, config_.weight_dtype);
  mha::detail::fuse_qkv(local, w_qkv_, b_qkv_);
  w_out_ = std::move(local.w_out);
  if (config_.bias) {
    b_out_ = weights.b_out;
    mha::detail::round_weights(b_out_, config_.weight_dtype);
  }
  KvCacheConfig mine = cache;
  mine.kv_heads = shard_.nkv;
  cache_ = std::make_unique<KvCache>(mine);
  if (config_.rope)
    rope_ = std::make_unique<RopeTable>(config_.rope->rotary_dim, config_.rope->max_positions, config_.rope->theta);
}

TensorParallelDecoder::~TensorParallelDecoder() = default;

void TensorParallelDecoder::agree(const Op& op) {
  const std::uint64_t h = (std::uint64_t(op.kind) * 0x9E3779B97F4A7C15ull) ^
                          (std::uint64_t(op.a) * 0xC2B2AE3D27D4EB4Full) ^ (std::uint64_t(op.b) + 0x165667B19E3779F9ull);
  comm_.require_same(h, "operation", "operation (admit, admit_kv, step or retire, with its sizes)");
}

void TensorParallelDecoder::project(const float* x, std::int64_t rows) {
  const std::int64_t width = (shard_.nq + 2 * shard_.nkv) * config_.head_dim;
  qkv_.resize(std::size_t(rows * width));
  ctx_.resize(std::size_t(rows * shard_.nq * config_.head_dim));
  mha::detail::gemm(rows, width, config_.hidden, {x, config_.hidden}, {w_qkv_.data(), config_.hidden, true},
                    qkv_.data(), width, {.bias = config_.bias ? b_qkv_.data() : nullptr});
}

void TensorParallelDecoder::output(std::int64_t rows, float* out) {
  const std::int64_t cols = shard_.nq * config_.head_dim;
  mha::detail::gemm(rows, config_.hidden, cols, {ctx_.data(), cols}, {w_out_.data(), cols, true}, out,
                    config_.hidden);
  comm_.allreduce_sum({out, std::size_t(rows * config_.hidden)});
  if (!b_out_.empty())
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t c = 0; c < config_.hidden; ++c) out[r * config_.hidden + c] += b_out_[std::size_t(c)];
}

std::int32_t TensorParallelDecoder::admit(const Tensor& x, const Tensor& out, std::int64_t chunk) {
  constexpr const char* func = "TensorParallelDecoder.admit";
  const auto start = Clock::now();
  const double comm0 = comm_.comm_seconds();
  if (x.rank != 2)
    throw InvalidArgument("x", fmt::format("{}: x is {}, expected [n, {}]", func, x.describe(), config_.hidden));
  const std::int64_t n = x.shape[0], dh = config_.head_dim;
  mha::detail::check_activation(func, "x", x, {n, config_.hidden});
  mha::detail::check_activation(func, "out", out, {n, config_.hidden});
  if (n < 1) throw InvalidArgument("x", fmt::format("{}: the prompt has no tokens, expected at least one", func));
  if (chunk < 0) throw InvalidArgument("chunk", fmt::format("{}: chunk = {}, expected >= 0", func, chunk));
  agree({OpKind::admit, n, chunk});
  const std::int32_t seq = cache_->add_sequence();
  try {
    project(static_cast<const float*>(x.data), n);
    const std::int64_t width = (shard_.nq + 2 * shard_.nkv) * dh;
    const Tensor q = heads(qkv_.data(), 0, width, n, shard_.nq, dh, false);
    const Tensor k = heads(qkv_.data(), shard_.nq * dh, width, n, shard_.nkv, dh, false);
    const Tensor v = heads(qkv_.data(), (shard_.nq + shard_.nkv) * dh, width, n, shard_.nkv, dh, false);
    const Tensor ctx = Tensor::contiguous(ctx_.data(), DType::f32, {n, shard_.nq, dh});
    if (rope_) {
      rope_->apply(mha::detail::with_batch_dim(q), config_.rope->style);
      rope_->apply(mha::detail::with_batch_dim(k), config_.rope->style);
    }
    const std::int64_t step = chunk > 0 ? chunk : n;
    for (std::int64_t t0 = 0; t0 < n; t0 += step) {
      const std::int64_t t1 = std::min(n, t0 + step);
      const std::int32_t pos = std::int32_t(t0);
      cache_->write({&seq, 1}, {&pos, 1}, mha::detail::with_batch_dim(rows_of(k, t0, t1)),
                    mha::detail::with_batch_dim(rows_of(v, t0, t1)));
      prefill_attention(rows_of(q, t0, t1), *cache_, seq, rows_of(ctx, t0, t1), t1);
    }
  } catch (...) {
    cache_->free_sequence(seq);  // nothing of a failed admission stays behind
    throw;
  }
  active_.push_back(seq);
  output(n, static_cast<float*>(out.data));
  last_comm_seconds_ = comm_.comm_seconds() - comm0;
  last_seconds_ = std::chrono::duration<double>(Clock::now() - start).count();
  return seq;
}

std::int32_t TensorParallelDecoder::admit_kv(const Tensor& k, const Tensor& v) {
  constexpr const char* func = "TensorParallelDecoder.admit_kv";
  const std::pair<const Tensor*, const char*> args[] = {{&k, "k"}, {&v, "v"}};
  for (const auto& [t, name] : args)
    if (t->rank != 3 || t->shape[0] != k.shape[0] || t->shape[1] != config_.kv_heads ||
        t->shape[2] != config_.head_dim)
      throw InvalidArgument(name, fmt::format("{}: {} is {}, expected [n, {}, {}] (n = k.shape[0])", func, name,
                                              t->describe(), config_.kv_heads, config_.head_dim));
  agree({OpKind::admit_kv, k.shape[0]});
  auto mine = [&](const Tensor& t) {  // this rank's KV heads
    Tensor s = t;
    s.data = static_cast<char*>(t.data) + shard_.kv0 * t.strides[1] * std::int64_t(size_of(t.dtype));
    s.shape[1] = shard_.nkv;
    return s;
  };
  const std::int32_t seq = cache_->add_sequence();
  try {
    cache_->fill(seq, mine(k), mine(v));
  } catch (...) {
    cache_->free_sequence(seq);
    throw;
  }
  active_.push_back(seq);
  return seq;
}

void TensorParallelDecoder::step(const Tensor& x, const Tensor& out) {
  constexpr const char* func = "TensorParallelDecoder.step";
  const auto start = Clock::now();
  const double comm0 = comm_.comm_seconds();
  const auto A = std::int64_t(active_.size());
  const std::int64_t dh = config_.head_dim;
  if (x.rank != 2)
    throw InvalidArgument("x", fmt::format("{}: x is {}, expected [{}, {}] (one row per active sequence)", func,
                                           x.describe(), A, config_.hidden));
  mha::detail::check_activation(func, "x", x, {A, config_.hidden});
  mha::detail::check_activation(func, "out", out, {A, config_.hidden});
  agree({OpKind::step, A});
  if (A == 0) return;
  project(static_cast<const float*>(x.data), A);
  const std::int64_t width = (shard_.nq + 2 * shard_.nkv) * dh;
  const Tensor q = heads(qkv_.data(), 0, width, A, shard_.nq, dh, true);
  const Tensor k = heads(qkv_.data(), shard_.nq * dh, width, A, shard_.nkv, dh, true);
  const Tensor v = heads(qkv_.data(), (shard_.nq + shard_.nkv) * dh, width, A, shard_.nkv, dh, true);
  const Tensor ctx = Tensor::bshd(ctx_.data(), DType::f32, A, 1, shard_.nq, dh);
  positions_.resize(active_.size());
  for (std::size_t i = 0; i < active_.size(); ++i) positions_[i] = std::int32_t(cache_->length(active_[i]));
  if (rope_) {
    rope_->apply(q, config_.rope->style, positions_);
    rope_->apply(k, config_.rope->style, positions_);
  }
  cache_->write(active_, positions_, k, v);  // all or nothing
  try {
    decode_attention(q, *cache_, active_, {}, ctx);
  } catch (...) {
    for (std::size_t i = 0; i < active_.size(); ++i) cache_->truncate(active_[i], positions_[i]);
    throw;
  }
  output(A, static_cast<float*>(out.data));
  last_comm_seconds_ = comm_.comm_seconds() - comm0;
  last_seconds_ = std::chrono::duration<double>(Clock::now() - start).count();
}

void TensorParallelDecoder::retire(std::int32_t seq) {
  agree({OpKind::retire, seq});
  const auto it = std::find(active_.begin(), active_.end(), seq);
  if (it == active_.end())
    throw InvalidArgument("seq", fmt::format("TensorParallelDecoder.retire: sequence {} is not active", seq));
  cache_->free_sequence(seq);
  active_.erase(it);
}

}  // namespace mha::dist
