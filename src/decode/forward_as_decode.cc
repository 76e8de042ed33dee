// A forward call with one query per sequence (or a short causal step) is a decoding step: how
// PyTorch's SDPA and flash_attn_func are called by generation loops that keep their own caches. The
// flash forward kernel spends it badly: an item is one query head's block of up to 64 rows, so with
// one row per block its score vectors carry 1 useful lane in N, and every query head of a GQA group
// streams the whole K and V again. The decode kernels read each K/V byte once per group, with the
// group's rows as one small matrix product per tile, and split long caches into chunks merged in a
// fixed order (kernels/decode.h). Side by side on Zen 3 (2 threads, context 4096, 128 dims, batch
// 8): 32/32 heads f32 114 -> 38 ms, 32/8 bf16 78 -> 8 ms. Both keep results bitwise identical for any
// thread count; the decode kernels' accuracy is held to the same oracle bar (decode_test).
#include "decode/forward_as_decode.h"

#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "kernels/decode.h"
#include "runtime/aligned_buffer.h"
#include "runtime/dtype_convert.h"

namespace mha::detail {

namespace {

// Query rows per sequence up to which the decode kernels win. Causal steps on Zen 3 (2 threads,
// context 4096, 128 dims, f32, side by side, forward -> decode ms): 32/32 heads Nq 4 13.6 -> 7.8,
// 8 15.6 -> 11.7, 16 18.3 -> 22.3; 32/8 Nq 8 9.8 -> 7.4, 16 16.1 -> 12.4, 32 18.5 -> 25.8; 32/1
// (batch 4) Nq 4 21.1 -> 11.8, 8 23.5 -> 22.5, 16 9.4 -> 16.6 (batch 1). Past 8 the forward's
// 64-row items fill their vectors.
constexpr std::int64_t kMaxDecodeRows = 8;

bool cache_layout(const AttentionParams& p) {
  const std::int64_t row = p.hkv * p.d;
  for (int i = 0; i < 4; ++i)
    if (p.k_stride[i] != p.v_stride[i]) return false;
  if (p.k_stride[3] != 1 || p.k_stride[2] != p.d || p.k_stride[1] != row) return false;
  return p.batch == 1 || (p.k_stride[0] % row == 0 && p.k_stride[0] / row >= p.nk);
}

// Every key visible to the one query, or a causal prefix (row i: keys [0, Nk - Nq + i]).
bool decode_visibility(const AttentionParams& p) {
  const bool left_open = p.window_left < 0 || p.window_left >= p.nk - 1;
  return left_open && (p.nq == 1 || p.window_right == 0);
}

}  // namespace

bool forward_as_decode(const AttentionParams& p, const Tensor& out, const Tensor* lse) {
  if (p.cu_q != nullptr || p.mask != nullptr || p.dropout_p > 0.0f || p.d != p.dv || p.batch < 1 ||
      p.nq < 1 || p.nq > kMaxDecodeRows || p.nk < p.nq || p.nk > std::numeric_limits<std::int32_t>::max() ||
      !decode_visibility(p) || !cache_layout(p))
    return false;
  // q as contiguous f32 [batch, nq, hq, d] (a few rows), the identity block table: sequence b's
  // rows start at row b·(k_stride[0] / row) of K and V.
  thread_local AlignedBuffer qf;
  thread_local std::vector<std::int32_t> ids, lens;
  qf.resize(std::size_t(p.batch * p.nq * p.hq * p.d));
  const std::int64_t q_shape[4] = {p.batch, p.nq, p.hq, p.d};
  load_view_f32(p.q, p.in_dtype, q_shape, p.q_stride, qf.data());
  ids.resize(std::size_t(p.batch));
  std::iota(ids.begin(), ids.end(), 0);
  lens.assign(std::size_t(p.batch), std::int32_t(p.nk));
  const DecodeParams d{.q = qf.data(),
                       .k = p.k,
                       .v = p.v,
                       .cache_dtype = p.in_dtype == DType::f32   ? 0
                                      : p.in_dtype == DType::f16 ? 1
                                                                 : 2,
                       .tables = ids.data(),
                       .blocks_per_seq = 1,
                       .rows_per_block = p.batch == 1 ? p.nk : p.k_stride[0] / (p.hkv * p.d),
                       .seqs = ids.data(),
                       .seqlens = lens.data(),
                       .batch = p.batch,
                       .nq = p.nq,
                       .hq = p.hq,
                       .hkv = p.hkv,
                       .d = p.d,
                       .scale = p.scale};
  run_decode(d, out, lse);
  return true;
}

}  // namespace mha::detail
