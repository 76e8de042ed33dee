// A forward call with one query per sequence (or a short causal step) is a decoding step: how
// PyTorch's SDPA and flash_attn_func are called by generation loops that keep their own caches. The
// flash forward kernel spends it badly: an item is one query head's block of up to 64 rows, so with
// one row per block its score vectors carry 1 useful lane in N, and every query head of a GQA group
// streams the whole K and V again. The decode kernels read each K/V byte once per group, with the
// group's rows as one small matrix product per tile, and split long caches into chunks merged in a
// fixed order (kernels/decode.h). Side by side on Zen 3 (2 threads, context 4096, 128 dims, batch
// 8): 32/32 heads f32 113 -> 45 ms, 32/8 bf16 69 -> 9 ms. Both keep results bitwise identical for any
// thread count, and meet the same oracle bar (the sweep's decoding-step cases). Packed (varlen)
// batches qualify when every sequence has the same number of queries, as the decode kernels take,
// and so do batched steps under a padding mask (visible_ranges: each sequence's visible keys).
#include "decode/forward_as_decode.h"

#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "kernels/decode.h"
#include "mha/runtime.h"
#include "runtime/aligned_buffer.h"
#include "runtime/dtype_convert.h"

namespace mha::detail {

namespace {

// Whether the decode kernels beat the forward kernel on this step. Up to 8 query rows per sequence
// they do: causal steps on Zen 3 (2 threads, context 4096, 128 dims, f32, side by side, forward ->
// decode ms): 32/32 heads Nq 4 13.6 -> 7.8, 8 15.6 -> 11.7; 32/8 Nq 8 9.8 -> 7.4; 32/1 (batch 4) Nq
// 4 21.1 -> 11.8, 8 23.5 -> 22.5. Longer steps (speculative decoding's drafts) still gain where the
// forward streams a long cache once per query head and the group's rows (G query heads per KV head
// × Nq) stay few: the decode kernels' small per-tile matrix products lose to the forward's 64-row
// items as rows grow, and a cache that fits the caches costs the forward little to stream again.
// Side by side on Zen 3 (2 threads, causal, 128 dims, min of 5-7 alternating rounds, forward ->
// decode ms), context 4096: 32/32 Nq 16 40.4 -> 26.8, Nq 24 45.1 -> 35.8, batch 4 Nq 16 102.8 ->
// 80.5, Nq 32 127.5 -> 157.2; 32/16 Nq 24 37.5 -> 29.8; 32/8 Nq 16 19.8 -> 16.6, bf16 22.8 -> 13.0,
// batch 4 72.6 -> 65.5; 32/8 Nq 24 (96 rows) 22.9 -> 25.6; 32/1 Nq 12 9.9 -> 13.0. Context 8192:
// 32/8 Nq 16 62.7 -> 33.4, 32/32 Nq 24 80.0 -> 55.2. Context 2048 was a wash (32/8 Nq 16 9.6 ->
// 8.3, bf16 7.0 -> 7.3, batch 4 31.5 -> 33.8) and 1024 the forward's (32/8 Nq 16 3.4 -> 4.6).
// On Zen 4 (AVX-512 BF16, same method, min of 5) context 2048 is decode's: 32/32 Nq 16 f32 6.73 ->
// 5.42, bf16 3.54 -> 2.69; 32/8 bf16 2.10 -> 1.84, batch 4 f32 16.5 -> 15.7, bf16 10.0 -> 7.6; one
// loss, 32/8 f32 3.81 -> 3.93. Context 1024 split (32/8 f32 1.72 -> 1.90, bf16 1.04 -> 0.93), and
// 4096 gained everywhere (32/32 Nq 16 12.2 -> 10.1, batch 4 59.1 -> 40.3; 32/8 bf16 4.92 -> 3.67;
// 8192 32/8 25.8 -> 16.0). So 2048 keys: a clear gain on Zen 4; on Zen 3 at most 7 % slower.
// All of that is in a cache's layout, where a head's rows are Hkv·D elements apart (16 KB for 32
// heads of f32), each on its own page and few cache set offsets. In PyTorch's [B, H, S, D], where
// the forward reads each head's rows contiguously, it kept the lead on Zen 3: 32/32 Nq 16 19.0 ->
// 24.0, 32/8 14.4 -> 16.8; bf16 32/32 13.6 -> 17.5, 32/8 10.4 -> 12.6 (one earlier run 16.7 ->
// 14.4). Not with AVX-512 (Zen 4, same method, decode kernels of session 22): context 4096 32/32
// Nq 16 f32 12.1 -> 11.1, bf16 5.58 -> 5.44; 32/8 f32 8.95 -> 8.17, bf16 4.33 -> 3.62, batch 4 bf16
// 18.6 -> 17.5 (f32 35.5 -> 35.1); 2048 keys 32/32 f32 6.38 -> 5.95, 32/8 bf16 1.95 -> 1.77; one
// loss, 32/32 Nq 24 bf16 7.87 -> 8.10. So there both layouts take the decode kernels.
bool decode_wins(const AttentionParams& p) {
  if (p.nq <= 8) return true;
  const std::int64_t keys = p.cu_k == nullptr ? p.nk : (p.cu_k[p.batch] - p.cu_k[0]) / p.batch;  // mean
  const bool token_rows = p.k_stride[2] < p.k_stride[1];  // a token's heads side by side (a cache's rows)
  return (token_rows || active_isa() >= Isa::avx512) && p.nq <= 24 && p.hq / p.hkv * p.nq <= 64 &&
         keys >= 2048;
}

// K and V with the same strides, each head's d elements contiguous, and (batched, not packed)
// sequences a whole number of token strides apart: rows of Hkv·D as a cache holds them, or
// PyTorch's [B, H, S, D] (token stride d, head stride S·d).
bool cache_layout(const AttentionParams& p) {
  for (int i = 0; i < 4; ++i)
    if (p.k_stride[i] != p.v_stride[i]) return false;
  const std::int64_t token = p.k_stride[1];
  if (p.k_stride[3] != 1 || token < 1) return false;
  return p.batch == 1 || p.cu_k != nullptr || (p.k_stride[0] % token == 0 && p.k_stride[0] / token >= p.nk);
}

// Every sequence has p.nq queries and at least as many keys.
bool equal_steps(const AttentionParams& p) {
  for (std::int64_t b = 0; b < p.batch; ++b) {
    const SeqSpan s = seq_span(p, b);
    if (s.len_q != p.nq || s.len_k < p.nq) return false;
  }
  return true;
}

// Every key visible to the one query, or a causal prefix (row i: keys [0, Nk - Nq + i]).
bool decode_visibility(const AttentionParams& p) {
  const bool left_open = p.window_left < 0 || p.window_left >= p.nk - 1;
  return left_open && (p.nq == 1 || p.window_right == 0);
}

// A mask that only hides keys, as generation loops pass a padding mask: per sequence, one
// contiguous range [lo, hi) of visible keys (0 there; -inf, or f32's or bf16's lowest, which exp
// takes to 0 alike, elsewhere), the same for every head and query. Causal steps need hi = Nk
// (bottom-right alignment counts from the last key). Else false.
bool visible_ranges(const AttentionParams& p, std::vector<std::int32_t>& lo, std::vector<std::int32_t>& hi) {
  if (p.cu_q != nullptr || (p.hq > 1 && p.mask_stride[1] != 0) || (p.nq > 1 && p.mask_stride[2] != 0))
    return false;
  lo.assign(std::size_t(p.batch), 0);
  hi.assign(std::size_t(p.batch), 0);
  for (std::int64_t b = 0; b < p.batch; ++b) {
    std::int64_t first = -1, last = -1;
    for (std::int64_t j = 0; j < p.nk; ++j) {
      const float x = load_f32(p.mask, p.mask_dtype, b * p.mask_stride[0] + j * p.mask_stride[3]);
      if (x == 0.0f) {
        if (first < 0)
          first = j;
        else if (last != j - 1)
          return false;  // a hidden key between visible ones
        last = j;
      } else if (!(x <= -3.38e38f)) {
        return false;  // a bias, or a finite value exp does not take to 0
      }
    }
    if (first < 0 || last + 1 - first < p.nq || (p.nq > 1 && last + 1 != p.nk)) return false;
    lo[std::size_t(b)] = std::int32_t(first);
    hi[std::size_t(b)] = std::int32_t(last + 1);
  }
  return true;
}

}  // namespace

bool forward_as_decode(const AttentionParams& p, const Tensor& out, const Tensor* lse) {
  if (p.dropout_p > 0.0f || p.d != p.dv || p.batch < 1 || p.nq < 1 || !decode_wins(p) ||
      p.nk > std::numeric_limits<std::int32_t>::max() || !decode_visibility(p) || !cache_layout(p) ||
      !equal_steps(p))
    return false;
  thread_local std::vector<std::int32_t> lo, hi;  // keys each sequence sees, under a mask
  const bool masked = p.mask != nullptr;
  if (masked && !visible_ranges(p, lo, hi)) return false;
  // Rows from one sequence to the next (batched); masked steps start each sequence at its first
  // visible key, so they take the one-row blocks too.
  const std::int64_t rows = p.batch == 1 ? p.nk : p.k_stride[0] / p.k_stride[1];
  const std::int64_t table_rows = (p.cu_q != nullptr ? p.cu_k[p.batch]
                                   : masked          ? p.batch * rows
                                                     : p.batch) +
                                  1;
  if (table_rows > std::numeric_limits<std::int32_t>::max()) return false;
  // Packed sequences as a batch: sequence b's queries are rows b·nq.. of q, out and lse (cu_q
  // starts at 0), and its keys start at row cu_k[b], which the block table says with blocks of
  // one row (table = identity over the packed rows, entry b's table at offset cu_k[b]).
  const bool packed = p.cu_q != nullptr;
  const std::int64_t B = p.batch, nq = p.nq;
  Tensor o = out;
  o.shape = {B, nq, p.hq, p.d};
  o.strides = {packed ? nq * out.strides[1] : out.strides[0], out.strides[1], out.strides[2], out.strides[3]};
  Tensor l;
  if (lse != nullptr) {
    l = *lse;
    l.shape = {B, p.hq, nq};
    l.strides = {packed ? nq * lse->strides[2] : lse->strides[0], lse->strides[1], lse->strides[2]};
  }
  const std::int64_t q_shape[4] = {B, nq, p.hq, p.d};
  const std::int64_t q_stride[4] = {packed ? nq * p.q_stride[1] : p.q_stride[0], p.q_stride[1], p.q_stride[2],
                                    p.q_stride[3]};
  thread_local AlignedBuffer qf;
  thread_local std::vector<std::int32_t> table, seqs, lens;
  qf.resize(std::size_t(B * nq * p.hq * p.d));
  load_view_f32(p.q, p.in_dtype, q_shape, q_stride, qf.data());
  if (std::int64_t(table.size()) < table_rows) {  // an identity table, grown once and kept
    const std::size_t had = table.size();
    table.resize(std::size_t(table_rows));
    std::iota(table.begin() + std::ptrdiff_t(had), table.end(), std::int32_t(had));
  }
  seqs.resize(std::size_t(B));
  lens.resize(std::size_t(B));
  for (std::int64_t b = 0; b < B; ++b) {
    seqs[std::size_t(b)] = packed   ? p.cu_k[b]
                           : masked ? std::int32_t(b * rows + lo[std::size_t(b)])
                                    : std::int32_t(b);
    lens[std::size_t(b)] =
        masked ? hi[std::size_t(b)] - lo[std::size_t(b)] : std::int32_t(seq_span(p, b).len_k);
  }
  const DecodeParams d{.q = qf.data(),
                       .k = p.k,
                       .v = p.v,
                       .token_stride = p.k_stride[1],
                       .head_stride = p.k_stride[2],
                       .cache_dtype = cache_dtype_of(p.in_dtype),
                       .tables = table.data(),
                       .blocks_per_seq = 1,
                       .rows_per_block = packed || masked ? 1 : rows,
                       .seqs = seqs.data(),
                       .seqlens = lens.data(),
                       .batch = B,
                       .nq = nq,
                       .hq = p.hq,
                       .hkv = p.hkv,
                       .d = p.d,
                       .scale = p.scale};
  run_decode(d, o, lse != nullptr ? &l : nullptr);
  return true;
}

}  // namespace mha::detail
