#include <fmt/format.h>

#include <cmath>

#include "api/validate.h"
#include "kernels/decode.h"
#include "mha/attention.h"
#include "mha/decode.h"
#include "mha/errors.h"
#include "runtime/aligned_buffer.h"
#include "runtime/dtype_convert.h"
#include "runtime/thread_pool.h"

namespace mha {

namespace {

constexpr const char* kFunc = "decode_attention";

template <class E = InvalidArgument, class... Args>
[[noreturn]] void fail(const char* argument, fmt::format_string<Args...> f, Args&&... args) {
  throw E(argument, fmt::format("{}: {}", kFunc, fmt::format(f, std::forward<Args>(args)...)));
}

}  // namespace

void decode_attention(const Tensor& q, const KvCache& cache, std::span<const std::int32_t> seqs,
                      std::span<const std::int32_t> cache_seqlens, const Tensor& out,
                      const DecodeOptions& options, const Tensor* lse) {
  const KvCacheConfig& c = cache.config();
  const detail::Span sq = detail::check_view(kFunc, "q", q, 4, 4);
  const std::int64_t B = q.shape[0], Nq = q.shape[1], Hq = q.shape[2], D = q.shape[3];
  if (D != c.head_dim)
    fail("q", "q.shape[3] (head dim) = {}, expected the cache's head_dim {}", D, c.head_dim);
  if (Hq < 1 || Hq % c.kv_heads != 0)
    fail("q", "q.shape[2] (heads) = {}, expected a positive multiple of the cache's kv_heads {}", Hq,
         c.kv_heads);
  if (Nq < 1 || Nq > 64) fail("q", "q.shape[1] (new tokens) = {}, expected 1 to 64", Nq);
  const detail::Span so = detail::check_view(kFunc, "out", out, 4, 4);
  if (out.shape != q.shape)
    fail("out", "out is {}, expected the shape of q {}", out.describe(), q.describe());
  if (out.dtype != DType::f32 && out.dtype != q.dtype)
    fail<Unsupported>("out", "out.dtype = {}, expected f32 or q's {}", to_string(out.dtype),
                      to_string(q.dtype));
  detail::check_no_self_overlap(kFunc, "out", out);
  detail::Span sl;
  if (lse != nullptr) {
    sl = detail::check_view(kFunc, "lse", *lse, 3, 3);
    if (lse->dtype != DType::f32 || lse->shape[0] != B || lse->shape[1] != Hq || lse->shape[2] != Nq)
      fail("lse", "lse is {}, expected [{}, {}, {}] f32", lse->describe(), B, Hq, Nq);
    detail::check_no_self_overlap(kFunc, "lse", *lse);
  }
  if (detail::overlaps(so, sq)) fail("out", "out overlaps q, expected separate memory");
  if (detail::overlaps(sl, sq) || detail::overlaps(sl, so))
    fail("lse", "lse overlaps q or out, expected separate memory");
  if (std::int64_t(seqs.size()) != B) fail("seqs", "{} sequences for q.shape[0] = {}", seqs.size(), B);
  if (!cache_seqlens.empty() && std::int64_t(cache_seqlens.size()) != B)
    fail("cache_seqlens", "{} lengths for q.shape[0] = {}, expected {} or none", cache_seqlens.size(), B, B);
  // Lengths as the kernels read them (the cache's own when none are given), kept per calling thread.
  thread_local std::vector<std::int32_t> lens;
  lens.resize(std::size_t(B));
  for (std::int64_t b = 0; b < B; ++b) {
    const std::int32_t s = seqs[std::size_t(b)];
    if (!cache.active(s)) fail("seqs", "seqs[{}] = {} is not an active sequence of the cache", b, s);
    const std::int64_t have = cache.length(s);
    const std::int64_t L = cache_seqlens.empty() ? have : cache_seqlens[std::size_t(b)];
    if (cache_seqlens.empty() && L < Nq)
      fail("seqs",
           "sequence {} (seqs[{}]) holds {} tokens, expected at least q.shape[1] = {} (the new tokens "
           "are written before they attend)",
           s, b, have, Nq);
    if (L < Nq || L > have)
      fail("cache_seqlens",
           "cache_seqlens[{}] = {} for sequence {} of length {}, expected {} to {} (the new tokens "
           "are written before they attend)",
           b, L, s, have, Nq, have);
    lens[std::size_t(b)] = std::int32_t(L);
  }
  const float scale = options.scale.value_or(float(1.0 / std::sqrt(double(D))));
  if (!std::isfinite(scale)) fail("scale", "scale = {}, expected a finite number", scale);

  // q to contiguous f32 once: a few rows per sequence, read by every item of its groups.
  thread_local detail::AlignedBuffer qf;
  qf.resize(std::size_t(std::max<std::int64_t>(1, B * Nq * Hq * D)));
  float* qd = qf.data();
  detail::load_view_f32(q.data, q.dtype, q.shape.data(), q.strides.data(), qd);

  const KvCache::Layout L = cache.layout();
  detail::DecodeParams p;
  p.q = qd;
  p.k = L.k;
  p.v = L.v;
  p.token_stride = c.kv_heads * D;
  p.head_stride = D;
  p.k_scale = L.k_scale;
  p.v_scale = L.v_scale;
  p.cache_dtype = int(c.dtype);
  p.tables = L.tables;
  p.blocks_per_seq = L.blocks_per_seq;
  p.rows_per_block = L.rows_per_block;
  p.seqs = seqs.data();
  p.seqlens = lens.data();
  p.batch = B;
  p.nq = Nq;
  p.hq = Hq;
  p.hkv = c.kv_heads;
  p.d = D;
  p.scale = scale;
  detail::run_decode(p, out, lse);
}

}  // namespace mha
