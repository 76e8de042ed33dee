// KV caches for decoding: one layer's K and V for many sequences, contiguous or paged.
//
//   contiguous: K, V [max_seqs, max_seq_len, Hkv, D]; sequence s owns slot s.
//   paged:      K, V [num_blocks, block_size, Hkv, D] pools; each sequence has a block table that
//               maps its token t to row t % block_size of block table[t / block_size]. Blocks are
//               taken from the pool as sequences grow and returned when they are freed.
//
// Element types: f32, f16, bf16, or int8 with one f32 scale per (token, head) for K and for V:
// x ≈ scale · q with scale = max|x| / 127 over the head's D values, q = round(x / scale). The
// scale is per token so appends never requantize what is already stored; the error of every
// element is at most scale / 2 = max|row| / 254 (checked by the tests), and the scales add
// 8 bytes per token and head to 2·D bytes of data.
//
// Threads: like a standard container, a cache (and the DecodeEngine that owns one) may be read by
// several threads at once (decode_attention, read) but not written while it is read; callers
// serialize writes (the Python bindings take a lock per cache).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "mha/tensor.h"

namespace mha {

enum class CacheDType : std::uint8_t { f32, f16, bf16, int8 };
std::string_view to_string(CacheDType t);
// "f32" | "f16" | "bf16" | "int8"; InvalidArgument naming `argument` otherwise.
CacheDType parse_cache_dtype(std::string_view name, std::string_view argument = "kv_dtype");

struct KvCacheConfig {
  std::int64_t kv_heads = 0;
  std::int64_t head_dim = 0;  // 1..kMaxHeadDim
  CacheDType dtype = CacheDType::bf16;
  std::int64_t max_seqs = 1;     // sequences held at once (contiguous: slots)
  std::int64_t max_seq_len = 0;  // tokens one sequence may hold
  std::int64_t block_size = 0;   // 0: contiguous; else paged, a power of two
  std::int64_t num_blocks = 0;   // paged: blocks in the pool (0: enough for max_seqs full sequences)
};

class KvCache {
 public:
  // Allocates the storage. InvalidArgument naming the field for an inconsistent config (an unknown
  // dtype included); OutOfMemory("config") when the storage cannot be had or its size overflows.
  explicit KvCache(const KvCacheConfig& config);

  const KvCacheConfig& config() const { return config_; }
  bool paged() const { return config_.block_size > 0; }

  // Sequence ids are in [0, max_seqs). add_sequence takes the lowest free one (CapacityExceeded
  // when all are in use); free_sequence returns its blocks to the pool and its length to 0.
  std::int32_t add_sequence();
  void free_sequence(std::int32_t seq);
  bool active(std::int32_t seq) const;
  std::int64_t length(std::int32_t seq) const;  // tokens written: positions [0, length)

  // Writes k, v [n_seqs, n_tokens, Hkv, D] (f32/f16/bf16, any strides) of batch entry i at positions
  // [positions[i], positions[i] + n_tokens) of sequence seqs[i]; its length becomes
  // positions[i] + n_tokens (writing below the length rewinds: speculative tokens rejected). All or
  // nothing: every argument and the capacity are checked before anything is written, so an error
  // leaves every sequence as it was. InvalidArgument: shapes, inactive or repeated sequences, a
  // position past the length (a hole), a NaN or inf bound for an int8 cache. CapacityExceeded: past
  // max_seq_len ("positions"), or the pool has too few free blocks ("cache").
  void write(std::span<const std::int32_t> seqs, std::span<const std::int32_t> positions, const Tensor& k,
             const Tensor& v);
  // A prefill: k, v [n_tokens, Hkv, D] at positions [0, n_tokens) of one sequence.
  void fill(std::int32_t seq, const Tensor& k, const Tensor& v);
  // An update: k, v [n_seqs, n_tokens, Hkv, D] appended at each sequence's own length.
  void append(std::span<const std::int32_t> seqs, const Tensor& k, const Tensor& v);

  // Drops tokens [length, current length) (speculative tokens rejected); blocks stay with the sequence.
  void truncate(std::int32_t seq, std::int64_t length);

  // Tokens [begin, end) of a sequence as f32 [end - begin, Hkv, D] (int8 dequantized).
  void read(std::int32_t seq, std::int64_t begin, std::int64_t end, float* k, float* v) const;

  std::int64_t free_blocks() const { return std::int64_t(free_.size()); }
  std::int64_t total_blocks() const { return paged() ? config_.num_blocks : config_.max_seqs; }
  std::span<const std::int32_t> block_table(std::int32_t seq) const;
  std::size_t bytes() const;  // storage of K, V and scales

  // Raw layout, for the decode kernels: token t of sequence s is row
  // table[s][t / rows_per_block] · rows_per_block + t % rows_per_block of K and V; each row holds
  // Hkv·D elements (and Hkv scales for int8). A contiguous cache is one block per sequence.
  struct Layout {
    const void* k;
    const void* v;
    const float* k_scale;  // int8 only
    const float* v_scale;
    const std::int32_t* tables;  // [max_seqs][blocks_per_seq]
    std::int64_t blocks_per_seq, rows_per_block;
  };
  Layout layout() const;

 private:
  void check_seq(const char* func, std::int32_t seq) const;

  KvCacheConfig config_;
  std::int64_t blocks_per_seq_ = 0, rows_per_block_ = 0;
  struct Free {
    void operator()(std::uint8_t* p) const;
  };
  std::unique_ptr<std::uint8_t[], Free> k_, v_;  // 64-byte aligned, uninitialized until written
  std::vector<float> k_scale_, v_scale_;
  std::vector<std::int32_t> tables_;   // [max_seqs][blocks_per_seq], -1 where unallocated
  std::vector<std::int64_t> lengths_;  // -1: sequence not active
  std::vector<std::int32_t> free_;     // free blocks, a stack: freed blocks are reused first
};

}  // namespace mha
