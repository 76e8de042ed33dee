#include "mha/kv_cache.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>

#include "api/validate.h"
#include "api/views.h"
#include "mha/attention.h"
#include "mha/errors.h"
#include "runtime/aligned_buffer.h"
#include "runtime/dtype_convert.h"
#include "runtime/thread_pool.h"

namespace mha {

namespace {

std::size_t element_bytes(CacheDType t) {
  switch (t) {
    case CacheDType::f32: return 4;
    case CacheDType::f16:
    case CacheDType::bf16: return 2;
    case CacheDType::int8: return 1;
  }
  return 4;
}

// Large caches are on huge pages (allocate_aligned): a decode step walks the whole cache.
std::uint8_t* allocate(std::size_t bytes) {
  void* p = detail::allocate_aligned(bytes);
  if (p == nullptr) throw OutOfMemory("config", fmt::format("KvCache: cannot allocate {} bytes", bytes));
  return static_cast<std::uint8_t*>(p);
}

// Stores one head's row of D values (f32) in the cache's element type; int8 returns its scale.
float store_row(const float* x, std::int64_t d, CacheDType t, void* dst) {
  switch (t) {
    case CacheDType::f32: std::memcpy(dst, x, std::size_t(d) * 4); return 1;
    case CacheDType::f16:
      for (std::int64_t i = 0; i < d; ++i) static_cast<std::uint16_t*>(dst)[i] = detail::f32_to_f16(x[i]);
      return 1;
    case CacheDType::bf16:
      for (std::int64_t i = 0; i < d; ++i) static_cast<std::uint16_t*>(dst)[i] = detail::f32_to_bf16(x[i]);
      return 1;
    case CacheDType::int8: {
      float amax = 0;
      for (std::int64_t i = 0; i < d; ++i) amax = std::max(amax, std::fabs(x[i]));
      const float scale = amax / 127.f, inv = amax > 0 ? 127.f / amax : 0.f;
      for (std::int64_t i = 0; i < d; ++i)
        static_cast<std::int8_t*>(dst)[i] =
            std::int8_t(std::clamp(std::nearbyint(x[i] * inv), -127.f, 127.f));
      return scale;
    }
  }
  return 1;
}

void load_row(const void* src, float scale, std::int64_t d, CacheDType t, float* x) {
  for (std::int64_t i = 0; i < d; ++i) {
    switch (t) {
      case CacheDType::f32: x[i] = static_cast<const float*>(src)[i]; break;
      case CacheDType::f16: x[i] = detail::f16_to_f32(static_cast<const std::uint16_t*>(src)[i]); break;
      case CacheDType::bf16: x[i] = detail::bf16_to_f32(static_cast<const std::uint16_t*>(src)[i]); break;
      case CacheDType::int8: x[i] = scale * float(static_cast<const std::int8_t*>(src)[i]); break;
    }
  }
}

}  // namespace

void KvCache::Free::operator()(std::uint8_t* p) const { std::free(p); }

std::string_view to_string(CacheDType t) {
  switch (t) {
    case CacheDType::f32: return "f32";
    case CacheDType::f16: return "f16";
    case CacheDType::bf16: return "bf16";
    case CacheDType::int8: return "int8";
  }
  return "?";
}

CacheDType parse_cache_dtype(std::string_view name, std::string_view argument) {
  if (name == "f32") return CacheDType::f32;
  if (name == "f16") return CacheDType::f16;
  if (name == "bf16") return CacheDType::bf16;
  if (name == "int8") return CacheDType::int8;
  throw InvalidArgument(std::string(argument),
                        fmt::format("{} = '{}', expected f32, f16, bf16 or int8", argument, name));
}

KvCache::KvCache(const KvCacheConfig& config) : config_(config) {
  auto bad = [](const char* field, const std::string& what) {
    throw InvalidArgument(field, fmt::format("KvCache: {}", what));
  };
  KvCacheConfig& c = config_;
  if (c.kv_heads < 1) bad("kv_heads", fmt::format("kv_heads = {}, expected >= 1", c.kv_heads));
  if (c.head_dim < 1 || c.head_dim > kMaxHeadDim)
    bad("head_dim", fmt::format("head_dim = {}, expected 1 to {}", c.head_dim, kMaxHeadDim));
  if (c.max_seqs < 1 || c.max_seqs > (1 << 20))
    bad("max_seqs", fmt::format("max_seqs = {}, expected 1 to 2^20", c.max_seqs));
  if (c.max_seq_len < 1 || c.max_seq_len > (std::int64_t(1) << 30))
    bad("max_seq_len", fmt::format("max_seq_len = {}, expected 1 to 2^30", c.max_seq_len));
  if (c.dtype != CacheDType::f32 && c.dtype != CacheDType::f16 && c.dtype != CacheDType::bf16 &&
      c.dtype != CacheDType::int8)
    bad("dtype",
        fmt::format("dtype = {} is not a cache dtype, expected f32, f16, bf16 or int8", int(c.dtype)));
  if (c.block_size < 0 || c.block_size > (std::int64_t(1) << 30) || (c.block_size & (c.block_size - 1)) != 0)
    bad("block_size",
        fmt::format("block_size = {}, expected 0 (contiguous) or a power of two up to 2^30", c.block_size));
  if (paged()) {
    blocks_per_seq_ = (c.max_seq_len + c.block_size - 1) / c.block_size;
    rows_per_block_ = c.block_size;
    if (c.num_blocks == 0) c.num_blocks = blocks_per_seq_ * c.max_seqs;
    if (c.num_blocks < 1 || c.num_blocks > (std::int64_t(1) << 31) - 1)
      bad("num_blocks", fmt::format("num_blocks = {}, expected 1 to 2^31 - 1", c.num_blocks));
  } else {
    if (c.num_blocks != 0)
      bad("num_blocks", fmt::format("num_blocks = {}, expected 0 for a contiguous cache", c.num_blocks));
    blocks_per_seq_ = 1;
    rows_per_block_ = c.max_seq_len;
  }
  if (c.kv_heads > (std::int64_t(1) << 20))
    bad("kv_heads", fmt::format("kv_heads = {}, expected 1 to 2^20", c.kv_heads));
  // Every size below is a product of the fields, checked: a wrapped product would allocate a small
  // buffer and let the first write run past it.
  const std::int64_t blocks = total_blocks();
  std::int64_t rows = 0, row_bytes = 0, bytes = 0, scales = 0, table_entries = 0;
  if (__builtin_mul_overflow(blocks, rows_per_block_, &rows) ||
      __builtin_mul_overflow(c.kv_heads * c.head_dim, std::int64_t(element_bytes(c.dtype)), &row_bytes) ||
      __builtin_mul_overflow(rows, row_bytes, &bytes) || __builtin_mul_overflow(rows, c.kv_heads, &scales) ||
      __builtin_mul_overflow(c.max_seqs, blocks_per_seq_, &table_entries) ||
      bytes > (std::numeric_limits<std::int64_t>::max() >> 2))
    throw OutOfMemory("config", fmt::format("KvCache: {} blocks × {} rows of {} heads × {} exceeds any "
                                            "memory, expected a smaller config",
                                            blocks, rows_per_block_, c.kv_heads, c.head_dim));
  try {
    k_.reset(allocate(std::size_t(bytes)));
    v_.reset(allocate(std::size_t(bytes)));
    if (c.dtype == CacheDType::int8) {
      k_scale_.assign(std::size_t(scales), 0.f);
      v_scale_.assign(std::size_t(scales), 0.f);
    }
    tables_.assign(std::size_t(table_entries), -1);
    lengths_.assign(std::size_t(c.max_seqs), -1);
  } catch (const std::bad_alloc&) {
    throw OutOfMemory("config", fmt::format("KvCache: cannot allocate the tables of {} sequences × {} "
                                            "blocks",
                                            c.max_seqs, blocks_per_seq_));
  }
  if (paged()) {
    // A stack popped from the back: blocks 0, 1, 2, ... are handed out first.
    for (std::int64_t b = blocks - 1; b >= 0; --b) free_.push_back(std::int32_t(b));
  }
}

std::int32_t KvCache::add_sequence() {
  for (std::size_t s = 0; s < lengths_.size(); ++s) {
    if (lengths_[s] < 0) {
      lengths_[s] = 0;
      if (!paged()) tables_[s] = std::int32_t(s);
      return std::int32_t(s);
    }
  }
  throw CapacityExceeded("cache", fmt::format("KvCache: all {} sequences are in use", config_.max_seqs));
}

void KvCache::check_seq(const char* func, std::int32_t seq) const {
  if (seq < 0 || seq >= config_.max_seqs || lengths_[std::size_t(seq)] < 0)
    throw InvalidArgument("seq", fmt::format("KvCache.{}: sequence {} is not active (ids 0 to {})", func, seq,
                                             config_.max_seqs - 1));
}

void KvCache::free_sequence(std::int32_t seq) {
  check_seq("free_sequence", seq);
  std::int32_t* table = tables_.data() + seq * blocks_per_seq_;
  if (paged()) {
    // Returned in reverse, so the sequence's first block is the next one handed out.
    for (std::int64_t i = blocks_per_seq_ - 1; i >= 0; --i)
      if (table[i] >= 0) free_.push_back(table[i]);
  }
  std::fill(table, table + blocks_per_seq_, -1);
  lengths_[std::size_t(seq)] = -1;
}

bool KvCache::active(std::int32_t seq) const {
  return seq >= 0 && seq < config_.max_seqs && lengths_[std::size_t(seq)] >= 0;
}

std::int64_t KvCache::length(std::int32_t seq) const {
  check_seq("length", seq);
  return lengths_[std::size_t(seq)];
}

std::span<const std::int32_t> KvCache::block_table(std::int32_t seq) const {
  check_seq("block_table", seq);
  return {tables_.data() + seq * blocks_per_seq_, std::size_t(blocks_per_seq_)};
}

std::size_t KvCache::bytes() const {
  const std::size_t rows = std::size_t(total_blocks() * rows_per_block_);
  return 2 * rows * std::size_t(config_.kv_heads * config_.head_dim) * element_bytes(config_.dtype) +
         (k_scale_.size() + v_scale_.size()) * sizeof(float);
}

KvCache::Layout KvCache::layout() const {
  return {k_.get(),
          v_.get(),
          k_scale_.empty() ? nullptr : k_scale_.data(),
          v_scale_.empty() ? nullptr : v_scale_.data(),
          tables_.data(),
          blocks_per_seq_,
          rows_per_block_};
}

void KvCache::write(std::span<const std::int32_t> seqs, std::span<const std::int32_t> positions,
                    const Tensor& k, const Tensor& v) {
  constexpr const char* func = "KvCache.write";
  const KvCacheConfig& c = config_;
  detail::check_view(func, "k", k, 4, 4);
  detail::check_view(func, "v", v, 4, 4);
  const std::int64_t n_seqs = k.shape[0], n_tok = k.shape[1];
  const std::array<std::int64_t, 4> want{n_seqs, n_tok, c.kv_heads, c.head_dim};
  // k and v by position, never by address: one Tensor passed as both (K = V) is two arguments.
  const std::pair<const Tensor*, const char*> kv[] = {{&k, "k"}, {&v, "v"}};
  for (const auto& [t, name] : kv) {
    if (t->shape != want)
      throw InvalidArgument(
          name, fmt::format("{}: {} is {}, expected [{}, {}, {}, {}] ([seqs, tokens, Hkv, D])", func, name,
                            t->describe(), n_seqs, n_tok, c.kv_heads, c.head_dim));
  }
  if (std::int64_t(seqs.size()) != n_seqs)
    throw InvalidArgument("seqs",
                          fmt::format("{}: {} sequences for k.shape[0] = {}", func, seqs.size(), n_seqs));
  if (std::int64_t(positions.size()) != n_seqs)
    throw InvalidArgument(
        "positions", fmt::format("{}: {} positions for k.shape[0] = {}", func, positions.size(), n_seqs));
  std::int64_t blocks_needed = 0;
  for (std::int64_t i = 0; i < n_seqs; ++i) {
    const std::int32_t s = seqs[std::size_t(i)], pos = positions[std::size_t(i)];
    check_seq("write", s);
    for (std::int64_t j = 0; j < i; ++j)
      if (seqs[std::size_t(j)] == s)
        throw InvalidArgument("seqs", fmt::format("{}: sequence {} appears twice", func, s));
    if (pos < 0 || pos > lengths_[std::size_t(s)])
      throw InvalidArgument("positions",
                            fmt::format("{}: position {} of sequence {} (length {}), expected 0 to its "
                                        "length: writes may not leave holes",
                                        func, pos, s, lengths_[std::size_t(s)]));
    if (pos + n_tok > c.max_seq_len)
      throw CapacityExceeded("positions",
                             fmt::format("{}: sequence {} would hold {} tokens, max_seq_len is {}", func, s,
                                         pos + n_tok, c.max_seq_len));
    if (paged()) {
      const std::int32_t* table = tables_.data() + s * blocks_per_seq_;
      for (std::int64_t b = 0; b < (pos + n_tok + c.block_size - 1) / c.block_size; ++b)
        blocks_needed += table[b] < 0;
    }
  }
  if (blocks_needed > free_blocks())
    throw CapacityExceeded("cache", fmt::format("{}: needs {} free blocks, the pool has {} of {}", func,
                                                blocks_needed, free_blocks(), c.num_blocks));
  // int8 rows keep one scale per row: an inf would make it inf (the row dequantizes to NaN) and a
  // NaN would quantize to 0, so non-finite values are refused before anything is written.
  if (c.dtype == CacheDType::int8)
    for (const auto& [t, name] : kv)
      for (std::int64_t i = 0; i < n_seqs; ++i)
        for (std::int64_t tok = 0; tok < n_tok; ++tok)
          for (std::int64_t h = 0; h < c.kv_heads; ++h)
            for (std::int64_t d = 0; d < c.head_dim; ++d) {
              const float x = detail::load_f32(
                  t->data, t->dtype,
                  i * t->strides[0] + tok * t->strides[1] + h * t->strides[2] + d * t->strides[3]);
              if (!std::isfinite(x))
                throw InvalidArgument(name, fmt::format("{}: {}[{}, {}, {}, {}] = {} cannot be stored in an "
                                                        "int8 cache, expected finite values",
                                                        func, name, i, tok, h, d, x));
            }
  // Everything is checked: allocate, then write.
  for (std::int64_t i = 0; i < n_seqs && paged(); ++i) {
    const std::int32_t s = seqs[std::size_t(i)];
    std::int32_t* table = tables_.data() + s * blocks_per_seq_;
    for (std::int64_t b = 0; b < (positions[std::size_t(i)] + n_tok + c.block_size - 1) / c.block_size; ++b) {
      if (table[b] < 0) {
        table[b] = free_.back();
        free_.pop_back();
      }
    }
  }
  const Layout L = layout();
  const std::size_t eb = element_bytes(c.dtype), row_bytes = std::size_t(c.kv_heads * c.head_dim) * eb;
  detail::global_pool()->parallel_for(n_seqs * n_tok, [&](std::int64_t item) {
    const std::int64_t i = item / n_tok, t = item % n_tok;
    const std::int32_t s = seqs[std::size_t(i)];
    const std::int64_t pos = positions[std::size_t(i)] + t;
    const std::int64_t row =
        std::int64_t(L.tables[s * L.blocks_per_seq + pos / L.rows_per_block]) * L.rows_per_block +
        pos % L.rows_per_block;
    float x[kMaxHeadDim];
    for (int which = 0; which < 2; ++which) {
      const Tensor* src = kv[which].first;
      const bool is_k = which == 0;
      std::uint8_t* dst = (is_k ? k_.get() : v_.get()) + std::size_t(row) * row_bytes;
      for (std::int64_t h = 0; h < c.kv_heads; ++h) {
        const std::int64_t base = i * src->strides[0] + t * src->strides[1] + h * src->strides[2];
        for (std::int64_t d = 0; d < c.head_dim; ++d)
          x[d] = detail::load_f32(src->data, src->dtype, base + d * src->strides[3]);
        const float scale = store_row(x, c.head_dim, c.dtype, dst + std::size_t(h * c.head_dim) * eb);
        if (c.dtype == CacheDType::int8)
          (is_k ? k_scale_ : v_scale_)[std::size_t(row * c.kv_heads + h)] = scale;
      }
    }
  });
  for (std::int64_t i = 0; i < n_seqs; ++i)
    lengths_[std::size_t(seqs[std::size_t(i)])] = positions[std::size_t(i)] + n_tok;
}

void KvCache::fill(std::int32_t seq, const Tensor& k, const Tensor& v) {
  for (const auto& [t, name] : {std::pair<const Tensor&, const char*>{k, "k"}, {v, "v"}})
    if (t.rank != 3)
      throw InvalidArgument(
          name, fmt::format("KvCache.fill: {} is {}, expected [tokens, Hkv, D]", name, t.describe()));
  const std::int32_t zero = 0;
  write({&seq, 1}, {&zero, 1}, detail::with_batch_dim(k), detail::with_batch_dim(v));
}

void KvCache::append(std::span<const std::int32_t> seqs, const Tensor& k, const Tensor& v) {
  std::vector<std::int32_t> positions;
  for (std::int32_t s : seqs) {
    check_seq("append", s);
    positions.push_back(std::int32_t(lengths_[std::size_t(s)]));
  }
  write(seqs, positions, k, v);
}

void KvCache::truncate(std::int32_t seq, std::int64_t length) {
  check_seq("truncate", seq);
  if (length < 0 || length > lengths_[std::size_t(seq)])
    throw InvalidArgument("length", fmt::format("KvCache.truncate: length {} for sequence {} of length {}",
                                                length, seq, lengths_[std::size_t(seq)]));
  lengths_[std::size_t(seq)] = length;
}

void KvCache::read(std::int32_t seq, std::int64_t begin, std::int64_t end, float* k, float* v) const {
  check_seq("read", seq);
  if (begin < 0 || end < begin || end > lengths_[std::size_t(seq)])
    throw InvalidArgument("end", fmt::format("KvCache.read: tokens [{}, {}) of sequence {} of length {}",
                                             begin, end, seq, lengths_[std::size_t(seq)]));
  const KvCacheConfig& c = config_;
  const Layout L = layout();
  const std::size_t eb = element_bytes(c.dtype), row_bytes = std::size_t(c.kv_heads * c.head_dim) * eb;
  for (std::int64_t t = begin; t < end; ++t) {
    const std::int64_t row =
        std::int64_t(L.tables[seq * L.blocks_per_seq + t / L.rows_per_block]) * L.rows_per_block +
        t % L.rows_per_block;
    for (std::int64_t h = 0; h < c.kv_heads; ++h) {
      const std::size_t off = std::size_t(row) * row_bytes + std::size_t(h * c.head_dim) * eb;
      const std::size_t out = std::size_t(((t - begin) * c.kv_heads + h) * c.head_dim);
      const std::size_t si = std::size_t(row * c.kv_heads + h);
      load_row(k_.get() + off, k_scale_.empty() ? 1.f : k_scale_[si], c.head_dim, c.dtype, k + out);
      load_row(v_.get() + off, v_scale_.empty() ? 1.f : v_scale_[si], c.head_dim, c.dtype, v + out);
    }
  }
}

}  // namespace mha
