// Chunked prefill: a chunk of new tokens against the cached prefix and itself, by the flash
// forward kernel.
#include <fmt/format.h>

#include "api/validate.h"
#include "api/views.h"
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
  const Tensor q4 = detail::with_batch_dim(q), out4 = detail::with_batch_dim(out);
  AttentionOptions o{.scale = options.scale, .causal = true};
  const KvCache::Layout layout = cache.layout();
  const bool in_place = !cache.paged() && c.dtype != CacheDType::int8;
  if (in_place) {
    const DType dt = c.dtype == CacheDType::f32   ? DType::f32
                     : c.dtype == CacheDType::f16 ? DType::f16
                                                  : DType::bf16;
    // A contiguous cache is one block per sequence: its rows start at the sequence's block.
    const std::int64_t row = c.kv_heads * c.head_dim,
                       offset = std::int64_t(layout.tables[seq * layout.blocks_per_seq]) *
                                layout.rows_per_block * row;
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
    attention(q4, view(layout.k), view(layout.v), out4, o);
    return;
  }
  // Paged or int8: gathered to f32 first, so q must be f32 too (checked before the gather).
  if (q.dtype != DType::f32)
    throw Unsupported(
        "q",
        fmt::format("{}: q.dtype = {} with a {} {} cache, expected f32 (the cache is gathered "
                    "to f32)",
                    func, to_string(q.dtype), cache.paged() ? "paged" : "contiguous", to_string(c.dtype)));
  thread_local detail::AlignedBuffer kv;
  const std::int64_t elems = L * c.kv_heads * c.head_dim;
  kv.resize(std::size_t(2 * elems));
  cache.read(seq, 0, L, kv.data(), kv.data() + elems);
  const Tensor k = Tensor::bshd(kv.data(), DType::f32, 1, L, c.kv_heads, c.head_dim);
  const Tensor v = Tensor::bshd(kv.data() + elems, DType::f32, 1, L, c.kv_heads, c.head_dim);
  attention(q4, k, v, out4, o);
}

}  // namespace mha
