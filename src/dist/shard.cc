#include "dist/shard.h"

#include <fmt/format.h>

#include <cstring>

#include "layers/layer_args.h"

namespace mha::dist {

HeadShard shard_heads(std::int64_t heads, std::int64_t kv_heads, int rank, int size) {
  const std::int64_t P = size;
  if (heads < 1 || heads % P != 0)
    throw InvalidArgument("heads", fmt::format("tensor parallel: heads = {} over {} ranks, expected a positive "
                                               "multiple of the rank count",
                                               heads, P));
  HeadShard s;
  s.nq = heads / P;
  s.q0 = rank * s.nq;
  if (kv_heads >= 1 && kv_heads % P == 0) {
    s.nkv = kv_heads / P;
    s.kv0 = rank * s.nkv;
  } else if (kv_heads >= 1 && P % kv_heads == 0) {
    s.nkv = 1;
    s.kv0 = rank / (P / kv_heads);  // P / Hkv neighbouring ranks replicate one KV head
    s.kv_replicated = true;
  } else {
    throw InvalidArgument("kv_heads", fmt::format("tensor parallel: kv_heads = {} over {} ranks, expected a "
                                                  "multiple of the rank count or a divisor of it "
                                                  "(KV heads replicated)",
                                                  kv_heads, P));
  }
  return s;
}

namespace detail {

MultiHeadAttentionConfig shard_config(const MultiHeadAttentionConfig& c, const HeadShard& s) {
  MultiHeadAttentionConfig local = c;
  local.heads = s.nq;
  local.kv_heads = s.nkv;
  local.head_dim = c.head_dim;
  return local;
}

MultiHeadAttentionWeights shard_weights(const MultiHeadAttentionConfig& c, const MultiHeadAttentionWeights& w,
                                        const HeadShard& s) {
  const std::int64_t dh = c.head_dim, hidden = c.hidden;
  auto rows = [&](const std::vector<float>& m, std::int64_t head0, std::int64_t heads, std::int64_t width) {
    const auto b = m.begin() + std::ptrdiff_t(head0 * dh * width);
    return std::vector<float>(b, b + std::ptrdiff_t(heads * dh * width));
  };
  MultiHeadAttentionWeights local;
  local.w_query = rows(w.w_query, s.q0, s.nq, hidden);
  local.w_key = rows(w.w_key, s.kv0, s.nkv, hidden);
  local.w_value = rows(w.w_value, s.kv0, s.nkv, hidden);
  if (c.bias) {
    local.b_query = rows(w.b_query, s.q0, s.nq, 1);
    local.b_key = rows(w.b_key, s.kv0, s.nkv, 1);
    local.b_value = rows(w.b_value, s.kv0, s.nkv, 1);
    local.b_out.assign(std::size_t(hidden), 0.0f);
  }
  // W_out [hidden, Hq·Dh]: columns [q0·Dh, (q0 + nq)·Dh) of every row.
  const std::int64_t cols = s.nq * dh, width = c.heads * dh;
  local.w_out.resize(std::size_t(hidden * cols));
  for (std::int64_t r = 0; r < hidden; ++r)
    std::memcpy(local.w_out.data() + r * cols, w.w_out.data() + r * width + s.q0 * dh,
                std::size_t(cols) * sizeof(float));
  return local;
}

namespace {

struct Fnv {
  std::uint64_t h = 1469598103934665603ull;
  void bytes(const void* p, std::size_t n) {
    const auto* b = static_cast<const unsigned char*>(p);
    for (std::size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
  }
  template <class T>
  void value(const T& v) {
    bytes(&v, sizeof v);
  }
};

}  // namespace

std::uint64_t hash_config(const MultiHeadAttentionConfig& c) {
  Fnv f;
  f.value(c.hidden);
  f.value(c.heads);
  f.value(c.kv_heads);
  f.value(c.head_dim);
  f.value(c.bias);
  f.value(c.causal);
  f.value(c.weight_dtype);
  f.value(c.rope.has_value());
  if (c.rope) {
    f.value(c.rope->style);
    f.value(c.rope->theta);
    f.value(c.rope->rotary_dim);
    f.value(c.rope->max_positions);
  }
  return f.h;
}

std::uint64_t hash_weights(const MultiHeadAttentionWeights& w) {
  Fnv f;
  for (const std::vector<float>* m :
       {&w.w_query, &w.b_query, &w.w_key, &w.b_key, &w.w_value, &w.b_value, &w.w_out, &w.b_out}) {
    f.value(m->size());
    f.bytes(m->data(), m->size() * sizeof(float));
  }
  return f.h;
}

void check_same_model(Communicator& comm, const char* func, const MultiHeadAttentionConfig& c,
                      const MultiHeadAttentionWeights& w) {
  const std::int64_t q = c.heads * c.head_dim, kv = c.kv_heads * c.head_dim;
  mha::detail::check_weight(func, "w_query", w.w_query, q * c.hidden);
  mha::detail::check_weight(func, "w_key", w.w_key, kv * c.hidden);
  mha::detail::check_weight(func, "w_value", w.w_value, kv * c.hidden);
  mha::detail::check_weight(func, "w_out", w.w_out, c.hidden * q);
  mha::detail::check_weight(func, "b_query", w.b_query, c.bias ? q : 0);
  mha::detail::check_weight(func, "b_key", w.b_key, c.bias ? kv : 0);
  mha::detail::check_weight(func, "b_value", w.b_value, c.bias ? kv : 0);
  mha::detail::check_weight(func, "b_out", w.b_out, c.bias ? c.hidden : 0);
  comm.require_same(hash_config(c), "config", "layer config");
  comm.require_same(hash_weights(w), "weights", "weights");
}

}  // namespace detail
}  // namespace mha::dist
