// DecodeEngine: continuous batching of sequences over one KV cache.
#include <fmt/format.h>

#include <algorithm>

#include "api/validate.h"
#include "api/views.h"
#include "mha/decode.h"
#include "mha/errors.h"

namespace mha {

DecodeEngine::DecodeEngine(const KvCacheConfig& cache, std::int64_t q_heads)
    : cache_(cache), q_heads_(q_heads) {
  if (q_heads < 1 || q_heads % cache.kv_heads != 0)
    throw InvalidArgument("q_heads",
                          fmt::format("DecodeEngine: q_heads = {}, expected a positive multiple of "
                                      "kv_heads {}",
                                      q_heads, cache.kv_heads));
}

std::int64_t DecodeEngine::blocks_for(std::int64_t tokens) const {
  if (tokens < 0)
    throw InvalidArgument("tokens",
                          fmt::format("DecodeEngine.blocks_for: tokens = {}, expected >= 0", tokens));
  return cache_.paged() ? (tokens + cache_.config().block_size - 1) / cache_.config().block_size : 1;
}

std::int32_t DecodeEngine::admit(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                                 std::int64_t chunk) {
  if (k.rank != 3)
    throw InvalidArgument("k",
                          fmt::format("DecodeEngine.admit: k is {}, expected [n, Hkv, D]", k.describe()));
  const std::int64_t n = k.shape[0];
  // q, v and out are sliced by k's rows below: each must have them, and the head counts of a step.
  const KvCacheConfig& c = cache_.config();
  // Query-shaped or not by position, never by address (one Tensor may be passed twice).
  const struct {
    const Tensor* t;
    const char* name;
    bool query;
  } args[] = {{&q, "q", true}, {&k, "k", false}, {&v, "v", false}, {&out, "out", true}};
  for (const auto& [t, name, query] : args) {
    detail::check_view("DecodeEngine.admit", name, *t, 3, 3);
    const std::int64_t heads = query ? q_heads_ : c.kv_heads;
    if (t->shape[0] != n || t->shape[1] != heads || t->shape[2] != c.head_dim)
      throw InvalidArgument(name,
                            fmt::format("DecodeEngine.admit: {} is {}, expected [{}, {}, {}] ([n, {}, D] "
                                        "with n = k.shape[0])",
                                        name, t->describe(), n, heads, c.head_dim, query ? "Hq" : "Hkv"));
  }
  if (n < 1)
    throw InvalidArgument("k", "DecodeEngine.admit: the prompt has no tokens, expected at least one");
  if (chunk < 0)
    throw InvalidArgument(
        "chunk", fmt::format("DecodeEngine.admit: chunk = {}, expected 0 (one chunk) or more", chunk));
  if (n > c.max_seq_len)
    throw CapacityExceeded(
        "cache", fmt::format("DecodeEngine.admit: a {}-token prompt, max_seq_len is {}", n, c.max_seq_len));
  if (cache_.paged() && blocks_for(n) > cache_.free_blocks())
    throw CapacityExceeded(
        "cache", fmt::format("DecodeEngine.admit: a {}-token prompt needs {} blocks, {} are free", n,
                             blocks_for(n), cache_.free_blocks()));
  const std::int32_t seq = cache_.add_sequence();
  try {
    const std::int64_t step = chunk > 0 ? chunk : n;
    for (std::int64_t t0 = 0; t0 < n; t0 += step) {
      const std::int64_t t1 = std::min(n, t0 + step);
      auto rows = [&](const Tensor& t) {  // tokens [t0, t1) as [1, t1 - t0, H, D] or [t1 - t0, H, D]
        Tensor r = t;
        r.data = static_cast<char*>(t.data) + t0 * t.strides[0] * std::int64_t(size_of(t.dtype));
        r.shape[0] = t1 - t0;
        return r;
      };
      const std::int32_t pos = std::int32_t(t0);
      cache_.write({&seq, 1}, {&pos, 1}, detail::with_batch_dim(rows(k)), detail::with_batch_dim(rows(v)));
      prefill_attention(rows(q), cache_, seq, rows(out), t1);
    }
  } catch (...) {
    cache_.free_sequence(seq);  // nothing of a failed admission stays behind
    throw;
  }
  active_.push_back(seq);
  return seq;
}

void DecodeEngine::step(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out) {
  const std::int64_t A = std::int64_t(active_.size()), D = cache_.config().head_dim;
  const std::array<std::int64_t, 4> want{A, 1, q_heads_, D};
  if (q.rank != 4 || q.shape != want)
    throw InvalidArgument("q", fmt::format("DecodeEngine.step: q is {}, expected [{}, 1, {}, {}]",
                                           q.describe(), A, q_heads_, D));
  if (out.rank != 4 || out.shape != want)
    throw InvalidArgument("out", fmt::format("DecodeEngine.step: out is {}, expected [{}, 1, {}, {}]",
                                             out.describe(), A, q_heads_, D));
  positions_.resize(active_.size());
  for (std::size_t i = 0; i < active_.size(); ++i) positions_[i] = std::int32_t(cache_.length(active_[i]));
  cache_.write(active_, positions_, k, v);  // all or nothing
  try {
    decode_attention(q, cache_, active_, {}, out);  // each sequence up to its new length
  } catch (...) {
    for (std::size_t i = 0; i < active_.size(); ++i) cache_.truncate(active_[i], positions_[i]);
    throw;
  }
}

void DecodeEngine::retire(std::int32_t seq) {
  const auto it = std::find(active_.begin(), active_.end(), seq);
  if (it == active_.end())
    throw InvalidArgument("seq", fmt::format("DecodeEngine.retire: sequence {} is not active", seq));
  cache_.free_sequence(seq);
  active_.erase(it);
}

}  // namespace mha
