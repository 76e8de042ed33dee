// Chunked prefill: a chunk of new tokens against the cached prefix and itself, by the flash
// forward kernel.
#include <fmt/format.h>

#include "api/validate.h"
#include "mha/attention.h"
#include "mha/decode.h"
#include "mha/errors.h"
#include "runtime/aligned_buffer.h"

namespace mha {

void prefill_attention(const Tensor& q, const KvCache& cache, std::int32_t seq, const Tensor& out,
                       std::optional<std::int64_t> cache_seqlen, const DecodeOptions& options) {
  constexpr const char* func = "prefill_attention";
  const KvCacheConfig& c = cache.config();
  detail::check_view(func, "q", q, 3, 3);
  detail::check_view(func, "out", out, 3, 3);
  if (!cache.active(seq))
    throw InvalidArgument("seq", fmt::format("{}: sequence {} is not active in the cache", func, seq));
  const std::int64_t n = q.shape[0], have = cache.length(seq), L = cache_seqlen.value_or(have);
  if (L < n || L > have)
    throw InvalidArgument("cache_seqlen",
                          fmt::format("{}: cache_seqlen = {} with {} new tokens and a sequence of "
                                      "length {}, expected {} to {}",
                                      func, L, n, have, n, have));
  // q and out as [1, n, Hq, D] views; mha::attention checks the rest (heads, head dim, dtypes).
  auto batch1 = [](const Tensor& t) {
    Tensor b = t;
    b.rank = 4;
    b.shape = {1, t.shape[0], t.shape[1], t.shape[2]};
    b.strides = {0, t.strides[0], t.strides[1], t.strides[2]};
    return b;
  };
  AttentionOptions o{.scale = options.scale, .causal = true};
  const KvCache::Layout layout = cache.layout();
  const bool in_place = !cache.paged() && c.dtype != CacheDType::int8;
  if (in_place) {
    const DType dt = c.dtype == CacheDType::f32   ? DType::f32
                     : c.dtype == CacheDType::f16 ? DType::f16
                                                  : DType::bf16;
    const std::int64_t row = c.kv_heads * c.head_dim, offset = std::int64_t(seq) * c.max_seq_len * row;
    auto view = [&](const void* base) {
      Tensor t;
      t.data = const_cast<char*>(static_cast<const char*>(base)) + offset * std::int64_t(size_of(dt));
      t.dtype = dt;
      t.rank = 4;
      t.shape = {1, L, c.kv_heads, c.head_dim};
      t.strides = {L * row, row, c.head_dim, 1};
      return t;
    };
    // The forward kernel takes q and K/V in one dtype: an f32 q with an f16/bf16 cache is an error
    // there, so such callers pass q in the cache's dtype.
    attention(batch1(q), view(layout.k), view(layout.v), batch1(out), o);
    return;
  }
  thread_local detail::AlignedBuffer kv;
  const std::int64_t elems = L * c.kv_heads * c.head_dim;
  kv.resize(std::size_t(2 * elems));
  cache.read(seq, 0, L, kv.data(), kv.data() + elems);
  const Tensor k = Tensor::bshd(kv.data(), DType::f32, 1, L, c.kv_heads, c.head_dim);
  const Tensor v = Tensor::bshd(kv.data() + elems, DType::f32, 1, L, c.kv_heads, c.head_dim);
  if (q.dtype == DType::f32) {
    attention(batch1(q), k, v, batch1(out), o);
    return;
  }
  throw Unsupported(
      "q", fmt::format("{}: q.dtype = {} with a {} {} cache, expected f32 (the cache is gathered to f32)",
                       func, to_string(q.dtype), cache.paged() ? "paged" : "contiguous", to_string(c.dtype)));
}

}  // namespace mha
