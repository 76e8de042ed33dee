// Contract of the flash-decode kernels: a few new query tokens per sequence against that sequence's
// KV cache (contiguous or paged), one implementation per ISA behind one dispatch point.
//
// Work is split into items (sequence b, a chunk of kDecodeChunk cache tokens, its KV heads). For every KV
// head g, an item computes, for all R = (Hq / Hkv) · Nq query rows that share g, the softmax partials
// (running max m, sum l, unnormalized output o) over its chunk, so each K/V byte is read once per
// group, not once per query head. Partials are merged per (b, g) in chunk order. The chunk size is
// a constant, so the split and the merge order never depend on the thread count, the batch or the
// cache layout: results are bitwise identical across all three.
#pragma once

#include <cstdint>

#include "mha/runtime.h"
#include "mha/tensor.h"

namespace mha::detail {

inline constexpr std::int64_t kDecodeChunk = 256;  // cache tokens per item
inline constexpr std::int64_t kDecodeTile = 32;    // keys per inner tile

// Plain data only (included by the per-ISA translation units).
struct DecodeParams {
  const float* q = nullptr;  // [batch, nq, hq, d] f32, contiguous
  const void* k = nullptr;   // rows of hkv heads of d elements (one row per cached token)
  const void* v = nullptr;
  // Elements from one row to the next and from one head of a row to the next: hkv·d and d in a
  // cache, d and S·d in PyTorch's [B, H, S, D] (K and V alike).
  std::int64_t token_stride = 0, head_stride = 0;
  const float* k_scale = nullptr;  // int8: [rows][hkv]
  const float* v_scale = nullptr;
  int cache_dtype = 0;                   // CacheDType as an int: 0 f32, 1 f16, 2 bf16, 3 int8
  const std::int32_t* tables = nullptr;  // [max_seqs][blocks_per_seq]
  std::int64_t blocks_per_seq = 0, rows_per_block = 0;
  const std::int32_t* seqs = nullptr;     // cache sequence of each batch entry
  const std::int32_t* seqlens = nullptr;  // keys visible to the last query of each entry
  std::int64_t batch = 0, nq = 0, hq = 0, hkv = 0, d = 0;
  float scale = 1;
};

// One item: keys [t0, t1) of batch entry b, KV heads [g0, g1). `partial` receives (g1 - g0)·R
// rows of (m, l, o[d]), group by group. Items span all heads when a token's heads sit together
// (a cache row), and one head when each head's tokens do (PyTorch's [B, H, S, D]): either way
// the item reads its bytes as few forward streams. With fewer chunks than threads a chunk's heads
// are shared out instead (run_decode).
struct DecodeItem {
  std::int64_t b, t0, t1, g0, g1;
  float* partial;
  const DecodeItem* next = nullptr;  // the item the same thread runs next, whose first tile it prefetches
};

// Row stride of q and O in the scratch: d rounded up to 32, so the bf16 dot-product kernel works on
// whole 32-element chunks (the f32 kernels use the first d).
inline std::int64_t decode_ld(std::int64_t d) { return (d + 31) / 32 * 32; }

// Floats of scratch an item needs (64-byte aligned): q rows (f32 and bf16 or int16), scores, bf16
// or int16 probability pairs, O, row state (m, l, alpha, causal limit, q and P scales), the V
// staging and the tile's K/V scales, then the AVX-512 BF16 kernel's lane-wise softmax: scores
// [kDecodeTile][rows], P pairs [kDecodeTile / 2][rows] (rows: Hq·Nq rounded up to 16) and the
// K/V scales [kDecodeTile][hkv + 16].
std::int64_t decode_scratch_floats(const DecodeParams& p);
// Where in the scratch the kernels stage a tile's V rows (kDecodeTile rows of hkv·ld floats at
// most, 64-byte aligned), after q, scores, O and the row state.
inline std::int64_t stage_offset(const DecodeParams& p) {
  const std::int64_t HR = p.hq * p.nq, ld = decode_ld(p.d);
  return (HR * (2 * ld + ld / 2 + kDecodeTile + kDecodeTile / 2 + 7) + 2 + 15) / 16 * 16;
}

// DecodeParams::cache_dtype of K and V held in an attention input dtype (f32, f16 or bf16).
inline int cache_dtype_of(DType dt) { return dt == DType::f32 ? 0 : dt == DType::f16 ? 1 : 2; }

using DecodeKernel = void (*)(const DecodeParams& p, const DecodeItem& item, float* scratch);

namespace generic {
void decode_chunk(const DecodeParams&, const DecodeItem&, float*);
}
namespace avx2 {
void decode_chunk(const DecodeParams&, const DecodeItem&, float*);
}
namespace avx512 {
void decode_chunk(const DecodeParams&, const DecodeItem&, float*);
}
namespace avx512bf16 {
void decode_chunk(const DecodeParams&, const DecodeItem&, float*);
}

DecodeKernel decode_kernel(Isa isa);

// Runs the items on the global pool (the active ISA's kernel), merges the partials, writes out
// [batch, nq, hq, d] (f32 or q's dtype, any strides) and, when lse is not null, lse [batch, hq, nq]
// f32. The caller has checked both.
void run_decode(const DecodeParams& p, const Tensor& out, const Tensor* lse);

}  // namespace mha::detail
