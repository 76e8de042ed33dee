// attention_with_kvcache: FlashAttention's flash_attn_with_kvcache on caller-owned caches.
//
// The call has three steps, all after every argument has been checked: (1) the new keys (rotated)
// and values are written into the caches at each entry's length; (2) q is copied to f32 and
// rotated; (3) attention. A causal step of at most 64 new queries is what the flash-decode kernel
// does (each KV head's group of query heads in one pass over the cache, split-K chunks merged in a
// fixed order), so it runs there, over a block table that is the caller's (paged) or the identity
// (contiguous: one block of S rows per entry). Everything else (non-causal or windowed with several
// queries, long prefill chunks, entries shorter than their queries) runs the flash forward kernel
// entry by entry: a contiguous cache in place as a strided view, a paged one gathered first.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <tuple>
#include <vector>

#include "api/validate.h"
#include "kernels/decode.h"
#include "mha/attention.h"
#include "mha/decode.h"
#include "mha/errors.h"
#include "runtime/aligned_buffer.h"
#include "runtime/dtype_convert.h"

namespace mha {

namespace {

constexpr const char* kFunc = "attention_with_kvcache";

template <class E = InvalidArgument, class... Args>
[[noreturn]] void fail(const char* argument, fmt::format_string<Args...> f, Args&&... args) {
  throw E(argument, fmt::format("{}: {}", kFunc, fmt::format(f, std::forward<Args>(args)...)));
}

std::int64_t offset(const Tensor& t, std::int64_t a, std::int64_t b, std::int64_t c, std::int64_t d) {
  return a * t.strides[0] + b * t.strides[1] + c * t.strides[2] + d * t.strides[3];
}

// Rotates the first rotary_dim elements of x by the table row at `pos`.
void rotate(float* x, const Tensor& cos, const Tensor& sin, std::int64_t pos, bool interleaved) {
  const std::int64_t half = cos.shape[1];
  for (std::int64_t i = 0; i < half; ++i) {
    const float c = detail::load_f32(cos.data, cos.dtype, pos * cos.strides[0] + i * cos.strides[1]);
    const float s = detail::load_f32(sin.data, sin.dtype, pos * sin.strides[0] + i * sin.strides[1]);
    const std::int64_t a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + half;
    const float xa = x[a], xb = x[b];
    x[a] = xa * c - xb * s;
    x[b] = xa * s + xb * c;
  }
}

// A paged call's new tokens must go to cache rows that no other position of any entry reads:
// entries whose block tables share the block being written (or one entry's table naming a block
// twice) would otherwise attend to another entry's new keys, or lose their own earlier ones,
// silently. row_of(b, r): the cache row of entry b's token r. The rows written are few (B·n_new,
// sorted); every block each entry reads is looked up among them.
template <class RowOf>
void check_written_rows(std::span<const std::int32_t> cache_seqlens, std::int64_t n_new,
                        std::int64_t rows_per_block, const RowOf& row_of) {
  const std::int64_t B = std::int64_t(cache_seqlens.size());
  std::vector<std::tuple<std::int64_t, std::int64_t, std::int64_t>> written;  // (cache row, entry, token)
  written.reserve(std::size_t(B * n_new));
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t i = 0; i < n_new; ++i) {
      const std::int64_t t = cache_seqlens[std::size_t(b)] + i;
      written.emplace_back(row_of(b, t), b, t);
    }
  std::sort(written.begin(), written.end());
  for (std::int64_t b = 0; b < B; ++b) {
    const std::int64_t L = cache_seqlens[std::size_t(b)] + n_new;
    for (std::int64_t r0 = 0; r0 < L; r0 += rows_per_block) {
      const std::int64_t first = row_of(b, r0), n = std::min(rows_per_block, L - r0);
      for (auto it = std::lower_bound(written.begin(), written.end(),
                                      std::tuple{first, std::int64_t(-1), std::int64_t(-1)});
           it != written.end() && std::get<0>(*it) < first + n; ++it) {
        const auto [cache_row, w, t] = *it;
        const std::int64_t r = r0 + (cache_row - first);  // entry b reads that row as its token r
        if (w != b || t != r)
          fail("block_table",
               "entry {} writes its token {} to cache row {}, which entry {} reads as its token {}; expected "
               "the new tokens in rows of their own",
               w, t, cache_row, b, r);
      }
    }
  }
}

}  // namespace

void attention_with_kvcache(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                            std::span<const std::int32_t> cache_seqlens, const Tensor& out,
                            const KvCacheCallOptions& o, const Tensor* lse) {
  // ---- checks: nothing is written before all of them pass ----
  const detail::Span sq = detail::check_view(kFunc, "q", q, 4, 4);
  const std::int64_t B = q.shape[0], Nq = q.shape[1], Hq = q.shape[2], D = q.shape[3];
  const detail::Span skc = detail::check_view(kFunc, "k_cache", k_cache, 4, 4);
  const detail::Span svc = detail::check_view(kFunc, "v_cache", v_cache, 4, 4);
  const bool paged = !o.block_table.empty();
  const std::int64_t Hkv = k_cache.shape[2];
  if (k_cache.shape[3] != D) fail("k_cache", "k_cache is {}, expected head dim {} as q", k_cache.describe(), D);
  if (D > kMaxHeadDim) fail<Unsupported>("q", "head dim {} above {}", D, kMaxHeadDim);
  if (Hkv < 1 || Hq % Hkv != 0)
    fail("k_cache", "k_cache has {} KV heads, expected a divisor of q's {} heads", Hkv, Hq);
  for (const auto& [name, t] : {std::pair{"k_cache", &k_cache}, {"v_cache", &v_cache}}) {
    if (t->dtype != q.dtype)
      fail(name, "{}.dtype = {}, expected q's {}", name, to_string(t->dtype), to_string(q.dtype));
    if (!detail::is_c_contiguous(*t)) fail(name, "{} is {}, expected a C-contiguous array", name, t->describe());
  }
  if (v_cache.shape != k_cache.shape)
    fail("v_cache", "v_cache is {}, expected the shape of k_cache {}", v_cache.describe(), k_cache.describe());
  if (detail::overlaps(skc, svc)) fail("v_cache", "v_cache overlaps k_cache, expected separate memory");
  if (std::int64_t(cache_seqlens.size()) != B)
    fail("cache_seqlens", "{} lengths for q.shape[0] = {}", cache_seqlens.size(), B);
  std::int64_t max_blocks = 0, rows_per_block = k_cache.shape[1], capacity = rows_per_block;
  if (paged) {
    if (B == 0 || std::int64_t(o.block_table.size()) % B != 0)
      fail("block_table", "block_table has {} entries, expected [batch = {}, max_blocks]", o.block_table.size(), B);
    max_blocks = std::int64_t(o.block_table.size()) / B;
    capacity = max_blocks * rows_per_block;
  } else if (k_cache.shape[0] < B) {
    fail("k_cache", "k_cache is {}, expected at least {} cache entries (q.shape[0])", k_cache.describe(), B);
  }
  std::int64_t n_new = 0;
  if ((o.k_new == nullptr) != (o.v_new == nullptr)) fail(o.k_new ? "v" : "k", "k and v: expected both or neither");
  detail::Span skn, svn;
  if (o.k_new != nullptr) {
    skn = detail::check_view(kFunc, "k", *o.k_new, 4, 4);
    svn = detail::check_view(kFunc, "v", *o.v_new, 4, 4);
    n_new = o.k_new->shape[1];
    for (const auto& [name, t] : {std::pair{"k", o.k_new}, {"v", o.v_new}}) {
      if (t->shape[0] != B || t->shape[1] != n_new || t->shape[2] != Hkv || t->shape[3] != D)
        fail(name, "{} is {}, expected [{}, {}, {}, {}]", name, t->describe(), B, n_new, Hkv, D);
      if (t->dtype != q.dtype) fail(name, "{}.dtype = {}, expected q's {}", name, to_string(t->dtype), to_string(q.dtype));
    }
    for (const detail::Span& s : {skn, svn})
      if (detail::overlaps(s, skc) || detail::overlaps(s, svc))
        fail("k", "the new k or v overlaps a cache, expected separate memory");
  }
  const bool windowed = o.window_left >= 0 || o.window_right >= 0;
  if (o.window_left < -1 || o.window_right < -1)
    fail("window_size", "window = ({}, {}), expected -1 or >= 0 on each side", o.window_left, o.window_right);
  for (std::int64_t b = 0; b < B; ++b) {
    const std::int64_t c = cache_seqlens[std::size_t(b)];
    if (c < 0 || c + n_new > capacity)
      fail("cache_seqlens", "cache_seqlens[{}] = {} with {} new tokens, expected 0 to {} (the cache holds {} rows "
           "per entry)", b, c, n_new, capacity - n_new, capacity);
    if (paged)
      for (std::int64_t j = 0; j < (c + n_new + rows_per_block - 1) / rows_per_block; ++j)
        if (const std::int32_t blk = o.block_table[std::size_t(b * max_blocks + j)]; blk < 0 || blk >= k_cache.shape[0])
          fail("block_table", "block_table[{}, {}] = {}, expected a block of the cache, 0 to {}", b, j, blk,
               k_cache.shape[0] - 1);
  }
  if ((o.rotary_cos == nullptr) != (o.rotary_sin == nullptr))
    fail("rotary_cos", "rotary_cos and rotary_sin: expected both or neither");
  if (o.rotary_cos != nullptr) {
    detail::check_view(kFunc, "rotary_cos", *o.rotary_cos, 2, 2);
    detail::check_view(kFunc, "rotary_sin", *o.rotary_sin, 2, 2);
    const std::int64_t rd = 2 * o.rotary_cos->shape[1];
    if (o.rotary_sin->shape != o.rotary_cos->shape || rd < 2 || rd > D)
      fail("rotary_cos", "rotary_cos is {} and rotary_sin {}, expected one shape [positions, rotary_dim / 2] with "
           "rotary_dim from 2 to the head dim {}", o.rotary_cos->describe(), o.rotary_sin->describe(), D);
    const bool q_steps = o.causal || windowed;
    for (std::int64_t b = 0; b < B; ++b) {
      const std::int64_t c = cache_seqlens[std::size_t(b)];
      const std::int64_t last = std::max(c + n_new, q_steps ? c + Nq : c + 1) - 1;
      if (last >= o.rotary_cos->shape[0])
        fail("rotary_cos", "position {} of entry {} is past the rotary tables' {} positions", last, b,
             o.rotary_cos->shape[0]);
    }
  }
  const detail::Span so = detail::check_view(kFunc, "out", out, 4, 4);
  if (out.shape != q.shape) fail("out", "out is {}, expected the shape of q {}", out.describe(), q.describe());
  if (out.dtype != DType::f32 && out.dtype != q.dtype)
    fail<Unsupported>("out", "out.dtype = {}, expected f32 or q's {}", to_string(out.dtype), to_string(q.dtype));
  detail::check_no_self_overlap(kFunc, "out", out);
  for (const detail::Span& s : {sq, skc, svc, skn, svn})
    if (detail::overlaps(so, s)) fail("out", "out overlaps an input, expected separate memory");
  detail::Span sl;
  if (lse != nullptr) {
    sl = detail::check_view(kFunc, "lse", *lse, 3, 3);
    if (lse->dtype != DType::f32 || lse->shape[0] != B || lse->shape[1] != Hq || lse->shape[2] != Nq)
      fail("lse", "lse is {}, expected [{}, {}, {}] f32", lse->describe(), B, Hq, Nq);
    detail::check_no_self_overlap(kFunc, "lse", *lse);
    for (const detail::Span& s : {sq, skc, svc, so})
      if (detail::overlaps(sl, s)) fail("lse", "lse overlaps q, a cache or out, expected separate memory");
  }
  const float scale = o.scale.value_or(float(1.0 / std::sqrt(double(D))));
  if (!std::isfinite(scale)) fail("scale", "scale = {}, expected a finite number", scale);

  // Row r of entry b's cache (rows of Hkv·D elements).
  std::vector<std::int32_t> identity;
  const std::int32_t* tables = o.block_table.data();
  if (!paged) {
    identity.resize(std::size_t(B));
    std::iota(identity.begin(), identity.end(), 0);
    tables = identity.data();
    max_blocks = 1;
  }
  auto row_of = [&](std::int64_t b, std::int64_t r) {
    return std::int64_t(tables[b * max_blocks + r / rows_per_block]) * rows_per_block + r % rows_per_block;
  };
  const std::int64_t row = Hkv * D;
  if (paged && n_new > 0) check_written_rows(cache_seqlens, n_new, rows_per_block, row_of);

  // ---- 1. the new tokens into the caches ----
  std::vector<float> buf(static_cast<std::size_t>(D));
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t i = 0; i < n_new; ++i) {
      const std::int64_t pos = cache_seqlens[std::size_t(b)] + i, dst = row_of(b, pos) * row;
      for (std::int64_t h = 0; h < Hkv; ++h) {
        detail::load_row_f32(o.k_new->data, q.dtype, offset(*o.k_new, b, i, h, 0), o.k_new->strides[3], D,
                             buf.data());
        if (o.rotary_cos != nullptr) rotate(buf.data(), *o.rotary_cos, *o.rotary_sin, pos, o.rotary_interleaved);
        for (std::int64_t e = 0; e < D; ++e) {
          detail::store_f32(k_cache.data, q.dtype, dst + h * D + e, buf[std::size_t(e)]);
          detail::store_f32(v_cache.data, q.dtype, dst + h * D + e,
                            detail::load_f32(o.v_new->data, q.dtype, offset(*o.v_new, b, i, h, e)));
        }
      }
    }

  // ---- 2. q as contiguous f32, rotated ----
  detail::AlignedBuffer qf(std::size_t(std::max<std::int64_t>(1, B * Nq * Hq * D)));
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t i = 0; i < Nq; ++i)
      for (std::int64_t h = 0; h < Hq; ++h) {
        float* x = qf.data() + ((b * Nq + i) * Hq + h) * D;
        detail::load_row_f32(q.data, q.dtype, offset(q, b, i, h, 0), q.strides[3], D, x);
        if (o.rotary_cos != nullptr) {  // rotated in f32 and stored in q's dtype, as FlashAttention does
          rotate(x, *o.rotary_cos, *o.rotary_sin, cache_seqlens[std::size_t(b)] + (o.causal || windowed ? i : 0),
                 o.rotary_interleaved);
          for (std::int64_t e = 0; e < D; ++e) x[e] = detail::round_to(q.dtype, x[e]);
        }
      }

  // ---- 3. attention ----
  std::vector<std::int32_t> lens(static_cast<std::size_t>(B)), seqs(static_cast<std::size_t>(B));
  bool decode = (o.causal || Nq == 1) && !windowed && Nq <= 64;
  for (std::int64_t b = 0; b < B; ++b) {
    lens[std::size_t(b)] = std::int32_t(cache_seqlens[std::size_t(b)] + n_new);
    seqs[std::size_t(b)] = std::int32_t(b);
    decode = decode && lens[std::size_t(b)] >= Nq;
  }
  if (decode) {
    const detail::DecodeParams p{.q = qf.data(), .k = k_cache.data, .v = v_cache.data,
                                 .token_stride = Hkv * D, .head_stride = D,
                                 .cache_dtype = detail::cache_dtype_of(q.dtype),
                                 .tables = tables, .blocks_per_seq = max_blocks, .rows_per_block = rows_per_block,
                                 .seqs = seqs.data(), .seqlens = lens.data(), .batch = B, .nq = Nq, .hq = Hq,
                                 .hkv = Hkv, .d = D, .scale = scale};
    detail::run_decode(p, out, lse);
    return;
  }
  // The forward kernel per entry: q back in q's dtype (rotated), keys [0, L_b).
  const std::size_t esize = size_of(q.dtype);
  std::vector<std::uint8_t> qx(std::size_t(Nq * Hq * D) * esize), kx, vx;
  for (std::int64_t b = 0; b < B; ++b) {
    for (std::int64_t j = 0; j < Nq * Hq * D; ++j) detail::store_f32(qx.data(), q.dtype, j, qf.data()[b * Nq * Hq * D + j]);
    const std::int64_t L = lens[std::size_t(b)];
    Tensor kv[2] = {k_cache, v_cache};
    if (paged) {  // gather entry b's rows into one contiguous block
      kx.resize(std::size_t(L * row) * esize);
      vx.resize(kx.size());
      for (std::int64_t r = 0; r < L; ++r) {
        const std::size_t src = std::size_t(row_of(b, r) * row) * esize, bytes = std::size_t(row) * esize;
        std::memcpy(kx.data() + std::size_t(r * row) * esize, static_cast<const std::uint8_t*>(k_cache.data) + src, bytes);
        std::memcpy(vx.data() + std::size_t(r * row) * esize, static_cast<const std::uint8_t*>(v_cache.data) + src, bytes);
      }
      kv[0].data = kx.data();
      kv[1].data = vx.data();
    } else {
      kv[0].data = static_cast<std::uint8_t*>(k_cache.data) + std::size_t(b * k_cache.strides[0]) * esize;
      kv[1].data = static_cast<std::uint8_t*>(v_cache.data) + std::size_t(b * v_cache.strides[0]) * esize;
    }
    for (Tensor& t : kv) {
      t.shape = {1, L, Hkv, D};
      t.strides = {L * row, row, D, 1};
    }
    Tensor qb = Tensor::bshd(qx.data(), q.dtype, 1, Nq, Hq, D), ob = out, lb;
    ob.data = static_cast<std::uint8_t*>(out.data) + std::size_t(b * out.strides[0]) * size_of(out.dtype);
    ob.shape[0] = 1;
    if (lse != nullptr) {
      lb = *lse;
      lb.data = static_cast<float*>(lse->data) + b * lse->strides[0];
      lb.shape[0] = 1;
    }
    AttentionOptions ao{.scale = scale, .causal = o.causal, .window_left = o.window_left, .window_right = o.window_right};
    attention(qb, kv[0], kv[1], ob, ao, lse ? &lb : nullptr);
  }
}

}  // namespace mha
