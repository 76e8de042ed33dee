// The validated form of one attention call, shared by the flash kernels, the naive path and the
// float64 reference. Plain data only (no member functions): the per-ISA kernel translation units
// include it, and must not share any inline code compiled with different -m flags.
#pragma once

#include <cstdint>

#include "mha/tensor.h"

namespace mha::detail {

struct AttentionParams {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* out = nullptr;
  float* lse = nullptr;         // null when not requested
  const void* mask = nullptr;   // null when no mask
  DType in_dtype = DType::f32;  // q, k, v
  DType out_dtype = DType::f32;
  DType mask_dtype = DType::f32;

  // Strides in elements. q/k/v/out: [batch, seq, head, dim]; lse: [batch, head, seq];
  // mask: [batch, head, query, key], 0 where broadcast.
  std::int64_t q_stride[4] = {};
  std::int64_t k_stride[4] = {};
  std::int64_t v_stride[4] = {};
  std::int64_t out_stride[4] = {};
  std::int64_t lse_stride[3] = {};
  std::int64_t mask_stride[4] = {};

  std::int64_t batch = 0;  // number of sequences (varlen: cu_seqlens size - 1)
  std::int64_t hq = 0, hkv = 0;
  std::int64_t nq = 0, nk = 0;  // per-sequence lengths; varlen: the maxima
  std::int64_t d = 0, dv = 0;
  float scale = 1.0f;
  // Visible keys of local query i: [i + off - window_left, i + off + window_right] with
  // off = len_k - len_q; -1 = unbounded. Causal is folded in as window_right = 0.
  std::int64_t window_left = -1, window_right = -1;

  // Varlen: sequence b spans rows [cu_q[b], cu_q[b+1]) of the tensors' seq axis (batch index 0).
  const std::int32_t* cu_q = nullptr;
  const std::int32_t* cu_k = nullptr;

  // Dropout (philox.h): off when dropout_p == 0; kept probabilities are scaled by keep_scale.
  float dropout_p = 0.0f;
  float keep_scale = 1.0f;
  std::uint64_t dropout_seed = 0, dropout_offset = 0;

  // bf16 V as key pairs (v[2j][c], v[2j+1][c]) for the vdpbf16ps kernel, made once per call when
  // several items read each KV head (packed_kv.h); null otherwise. Head h's pairs of sequence b
  // start at row h·v_pair_rows + value_pair_base(b); rows hold v_pair_ld dwords, zero padded.
  const std::uint32_t* v_pairs = nullptr;
  std::int64_t v_pair_rows = 0, v_pair_ld = 0;

  // V as f32 column panels for the f32-FMA kernels, made once per call when several items read
  // each KV head (packed_kv.h); null otherwise. Rows are v_panel_ld floats (Dv rounded up to
  // the kernel's vector, zero padded), cut into panels of v_panel_width columns: in KV head h,
  // columns [c, c + w) of key row r (key_row_base(b) + the key's index in sequence b) sit at
  // v_panels + h·v_panel_rows·v_panel_ld + c·v_panel_rows + r·w, w = min(width, ld - c).
  const float* v_panels = nullptr;
  std::int64_t v_panel_rows = 0, v_panel_ld = 0, v_panel_width = 0;

  // K as contiguous rows of k_row_ld elements of k_row_dtype (f32 for the f32-FMA kernels; bf16,
  // zero padded to an even length, for the vdpbf16ps kernel), made once per call under the same
  // rule as the value panels and pairs (packed_kv.h); null otherwise. Key row r of KV head h
  // (key_row_base(b) + the key's index in sequence b) starts at element (h·k_row_count + r)·k_row_ld.
  const void* k_rows = nullptr;
  std::int64_t k_row_count = 0, k_row_ld = 0;
  DType k_row_dtype = DType::f32;
};

// One sequence's placement: rows [q_offset, q_offset + len_q) of batch entry `batch_index`.
struct SeqSpan {
  std::int64_t batch_index, q_offset, len_q, k_offset, len_k;
};

static inline SeqSpan seq_span(const AttentionParams& p, std::int64_t b) {
  if (p.cu_q == nullptr) return {b, 0, p.nq, 0, p.nk};
  return {0, p.cu_q[b], p.cu_q[b + 1] - p.cu_q[b], p.cu_k[b], p.cu_k[b + 1] - p.cu_k[b]};
}

// First and one-past-last visible key for local query rows [i0, i1) of a sequence.
struct KeyRange {
  std::int64_t begin, end;
};

static inline KeyRange visible_keys(const AttentionParams& p, const SeqSpan& s, std::int64_t i0,
                                    std::int64_t i1) {
  const std::int64_t off = s.len_k - s.len_q;
  std::int64_t lo = p.window_left < 0 ? 0 : i0 + off - p.window_left;
  std::int64_t hi = p.window_right < 0 ? s.len_k : (i1 - 1) + off + p.window_right + 1;
  if (lo < 0) lo = 0;
  if (hi > s.len_k) hi = s.len_k;
  if (hi < lo) hi = lo;
  return {lo, hi};
}

// First pair row of sequence b in a head's value pairs: (first key row + b) / 2 leaves every
// sequence ceil(len_k / 2) rows whatever the parity of its start; value_pair_base(p, batch) rows
// hold them all.
static inline std::int64_t value_pair_base(const AttentionParams& p, std::int64_t b) {
  return ((p.cu_k == nullptr ? b * p.nk : std::int64_t(p.cu_k[b])) + b) / 2;
}

// First key row of sequence b in a head's K rows and V panels; key_row_base(p, batch) rows hold them all.
static inline std::int64_t key_row_base(const AttentionParams& p, std::int64_t b) {
  return p.cu_k == nullptr ? b * p.nk : std::int64_t(p.cu_k[b]);
}

static inline bool key_visible(const AttentionParams& p, const SeqSpan& s, std::int64_t i, std::int64_t j) {
  const std::int64_t off = s.len_k - s.len_q;
  return (p.window_left < 0 || j >= i + off - p.window_left) &&
         (p.window_right < 0 || j <= i + off + p.window_right);
}

}  // namespace mha::detail
