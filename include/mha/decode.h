// Decoding against KV caches: flash decode for a few new tokens per sequence, chunked prefill, and
// a continuous-batching engine that runs one step for every active sequence at once.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "mha/kv_cache.h"
#include "mha/tensor.h"

namespace mha {

struct DecodeOptions {
  std::optional<float> scale;  // default 1/sqrt(head_dim)
};

// q [B, Nq, Hq, D] (f32/f16/bf16, any strides): the new tokens of batch entry b, whose K/V are
// already in the cache, for sequence seqs[b]. cache_seqlens[b] (the seed's cur_pos + Nq) is the
// number of cache tokens visible to the entry's last query; empty means each sequence's length.
// Query i of entry b sits at position cache_seqlens[b] − Nq + i and sees keys [0, position]:
// causal among the new tokens. Hq must be a multiple of the cache's kv_heads (GQA/MQA: every query
// head of a group shares one pass over the group's K/V). out [B, Nq, Hq, D] f32 or q's dtype;
// lse [B, Hq, Nq] f32 when given. Bitwise identical for any thread count, batch composition and
// cache layout. InvalidArgument / Unsupported naming the argument; nothing is written on error.
void decode_attention(const Tensor& q, const KvCache& cache, std::span<const std::int32_t> seqs,
                      std::span<const std::int32_t> cache_seqlens, const Tensor& out,
                      const DecodeOptions& options = {}, const Tensor* lse = nullptr);

// Chunked prefill: q [n, Hq, D] are the tokens at positions [L − n, L) of sequence seq, whose K/V
// are already written, with L = cache_seqlen (or the sequence's length when not given). They
// attend causally to the cached prefix and to themselves, through the flash forward kernel (a
// contiguous f32/f16/bf16 cache is read in place; a paged or int8 cache is gathered first).
// out [n, Hq, D] f32 or q's dtype.
void prefill_attention(const Tensor& q, const KvCache& cache, std::int32_t seq, const Tensor& out,
                       std::optional<std::int64_t> cache_seqlen = std::nullopt,
                       const DecodeOptions& options = {});

// FlashAttention's flash_attn_with_kvcache on caches the caller owns (no KvCache object).
struct KvCacheCallOptions {
  std::optional<float> scale;  // default 1/sqrt(head_dim)
  bool causal = false;         // bottom-right: query i of entry b sits at key position L_b − Nq + i
  std::int64_t window_left = -1, window_right = -1;  // as AttentionOptions
  // New tokens k_new, v_new [B, Nnew, Hkv, D] (the caches' dtype, any strides), written into the
  // caches at positions cache_seqlens[b] .. cache_seqlens[b] + Nnew − 1 before attention.
  const Tensor* k_new = nullptr;
  const Tensor* v_new = nullptr;
  // Rotary tables cos, sin [positions, rotary_dim / 2] (f32/f16/bf16): the new keys are rotated at
  // their positions; q at cache_seqlens[b] + i when causal or windowed, else all at cache_seqlens[b]
  // (FlashAttention's rule). Pairs (x[2i], x[2i+1]) when interleaved, else (x[i], x[i + rotary_dim/2]).
  const Tensor* rotary_cos = nullptr;
  const Tensor* rotary_sin = nullptr;
  bool rotary_interleaved = true;
  // Paged caches: block_table [B, max_blocks] (row-major int32) maps entry b's block j to a block of
  // the caches; empty for contiguous caches.
  std::span<const std::int32_t> block_table;
};

// q [B, Nq, Hq, D]; k_cache, v_cache C-contiguous [B, S, Hkv, D] (contiguous) or [num_blocks,
// block_size, Hkv, D] (paged), the dtype of q; cache_seqlens [B]: tokens already cached per entry.
// Entry b attends to keys [0, L_b), L_b = cache_seqlens[b] + Nnew. out [B, Nq, Hq, D] f32 or q's
// dtype; lse [B, Hq, Nq] f32 when given. Causal decode steps (Nq <= 64) run the flash-decode
// kernel; other calls the flash forward kernel per entry (a paged cache gathered first). Bitwise
// identical for any thread count. Entries may share blocks they only read (a common prefix); a
// new token must go to a row that no other position of any entry reads (InvalidArgument naming
// block_table). Everything is checked before anything is written (the new tokens included):
// InvalidArgument / Unsupported naming the argument.
void attention_with_kvcache(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                            std::span<const std::int32_t> cache_seqlens, const Tensor& out,
                            const KvCacheCallOptions& options = {}, const Tensor* lse = nullptr);

// Continuous batching over one paged (or contiguous) cache: sequences are admitted with their
// prompt, stepped together one token at a time, and retired; their blocks go back to the pool and
// are reused by later sequences. This is the attention part of a serving loop: the caller brings
// each token's q, k, v (from its model) and gets the attention output.
class DecodeEngine {
 public:
  DecodeEngine(const KvCacheConfig& cache, std::int64_t q_heads);

  const KvCache& cache() const { return cache_; }
  std::int64_t q_heads() const { return q_heads_; }
  // Active sequences in admission order: the row order of step()'s tensors.
  std::span<const std::int32_t> active() const { return active_; }

  // Blocks a sequence of `tokens` tokens occupies (1 for a contiguous cache's slot); InvalidArgument
  // ("tokens") below 0.
  std::int64_t blocks_for(std::int64_t tokens) const;

  // Admits a sequence: writes the prompt's k, v [n, Hkv, D] in chunks of `chunk` tokens (0: one
  // chunk) and runs each chunk's prefill attention, q [n, Hq, D] -> out [n, Hq, D]. Returns its id.
  // CapacityExceeded (nothing changed) when no sequence slot or not enough blocks are free.
  std::int32_t admit(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                     std::int64_t chunk = 0);

  // One decode step for every active sequence: q [A, 1, Hq, D], k, v [A, 1, Hkv, D] in the order of
  // active(); out [A, 1, Hq, D]. The new K/V are appended first. CapacityExceeded (nothing changed)
  // when the pool cannot hold the new tokens.
  void step(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out);

  // Frees the sequence's blocks; the remaining sequences keep their order.
  void retire(std::int32_t seq);

 private:
  KvCache cache_;
  std::int64_t q_heads_;
  std::vector<std::int32_t> active_, positions_;  // positions_: where this step appends
};

}  // namespace mha
