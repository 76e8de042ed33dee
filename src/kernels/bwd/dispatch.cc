// The one dispatch point for the flash backward kernels, and the driver: delta = rowsum(dO ∘ O),
// the work items over the pool, and dq summed from the items' partial slots in a fixed order.
#include <algorithm>
#include <tuple>
#include <vector>

#include "kernels/bwd/flash_bwd.h"
#include "runtime/aligned_buffer.h"
#include "runtime/dtype_convert.h"
#include "runtime/thread_pool.h"

namespace mha::detail {

FlashBwdKernel flash_bwd_kernel(Isa isa) {
  switch (isa) {
    case Isa::avx512bf16: return {&avx512bf16::flash_bwd, &avx512bf16::flash_bwd_delta};
    case Isa::avx512: return {&avx512::flash_bwd, &avx512::flash_bwd_delta};
    case Isa::avx2: return {&avx2::flash_bwd, &avx2::flash_bwd_delta};
    case Isa::generic: break;
  }
  return {&generic::flash_bwd, &generic::flash_bwd_delta};
}

namespace {

constexpr std::int64_t kAccAlign = 16;  // dq_acc rows padded for the widest vector (16 floats)
constexpr std::int64_t kTargetItems = 16;

float* thread_scratch() {
  thread_local AlignedBuffer buffer{std::size_t(kBwdScratchFloats)};
  return buffer.data();
}

std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

// Query rows [lo, hi) of a sequence that see any key of [j0, j1).
std::pair<std::int64_t, std::int64_t> query_range(const AttentionParams& p, const SeqSpan& s, std::int64_t j0,
                                                  std::int64_t j1) {
  const std::int64_t off = s.len_k - s.len_q;
  std::int64_t lo = p.window_right < 0 ? 0 : j0 - off - p.window_right;
  std::int64_t hi = p.window_left < 0 ? s.len_q : j1 - 1 - off + p.window_left + 1;
  return {std::max<std::int64_t>(lo, 0), std::min(hi, s.len_q)};
}

// dq = scale · Σ_c dq_acc[c], chunks in order, for every row of every sequence.
void reduce_dq(const BackwardParams& bp, const std::vector<std::int64_t>& chunks) {
  const AttentionParams& p = bp.a;
  const std::size_t qsz = elem_size(bp.dq_dtype);
  global_pool()->parallel_for(p.batch * p.hq, [&](std::int64_t item) {
    const std::int64_t b = item / p.hq, h = item % p.hq;
    const SeqSpan s = seq_span(p, b);
    for (std::int64_t i = 0; i < s.len_q; ++i) {
      const std::int64_t row = s.q_offset + i;
      const float* src = bp.dq_acc + (s.batch_index * bp.rows + row) * p.hq * bp.dp + h * bp.dp;
      char* dst = static_cast<char*>(bp.dq) +
                  qsz * std::size_t(s.batch_index * bp.dq_stride[0] + row * bp.dq_stride[1] + h * bp.dq_stride[2]);
      for (std::int64_t d = 0; d < p.d; ++d) {
        float sum = 0;
        for (std::int64_t c = 0; c < chunks[std::size_t(b)]; ++c) sum += src[c * bp.acc_chunk + d];
        store_f32(dst, bp.dq_dtype, d * bp.dq_stride[3], sum * p.scale);
      }
    }
  });
}

}  // namespace

void run_flash_bwd(BackwardParams& bp, FlashBwdKernel kernel) {
  const AttentionParams& p = bp.a;
  const std::int64_t batch_entries = p.cu_q == nullptr ? p.batch : 1;
  bp.rows = p.cu_q == nullptr ? p.nq : p.cu_q[p.batch];
  bp.dp = ceil_div(p.d, kAccAlign) * kAccAlign;

  // Chunks per sequence from the shape alone: enough items for a pool, never more than key blocks.
  const std::int64_t max_blocks = ceil_div(p.nk, kBwdBlockK);
  const std::int64_t want = std::clamp<std::int64_t>(ceil_div(kTargetItems, p.batch * p.hkv), 1,
                                                     std::max<std::int64_t>(max_blocks, 1));
  const std::int64_t per_chunk = std::max<std::int64_t>(ceil_div(max_blocks, want), 1);
  std::vector<std::int64_t> chunks(std::size_t(p.batch));
  std::vector<std::pair<std::int64_t, BwdItem>> items;
  std::int64_t max_chunks = 1;
  for (std::int64_t b = 0; b < p.batch; ++b) {
    const SeqSpan s = seq_span(p, b);
    const std::int64_t blocks = ceil_div(s.len_k, kBwdBlockK);
    chunks[std::size_t(b)] = ceil_div(blocks, per_chunk);
    max_chunks = std::max(max_chunks, chunks[std::size_t(b)]);
    for (std::int64_t c = 0; c < chunks[std::size_t(b)]; ++c) {
      const BwdItem item{b, 0, c * per_chunk, std::min(blocks, (c + 1) * per_chunk), c};
      std::int64_t cost = 1;  // query rows visited, the item's share of the work
      for (std::int64_t kb = item.kb_begin; kb < item.kb_end; ++kb) {
        const auto [lo, hi] = query_range(p, s, kb * kBwdBlockK, std::min(s.len_k, (kb + 1) * kBwdBlockK));
        cost += std::max<std::int64_t>(hi - lo, 0);
      }
      for (std::int64_t kvh = 0; kvh < p.hkv; ++kvh) {
        BwdItem with_head = item;
        with_head.kvh = kvh;
        items.emplace_back(cost, with_head);
      }
    }
  }
  // Heaviest first keeps the tail short; the order decides only which thread runs an item.
  std::sort(items.begin(), items.end(), [](const auto& x, const auto& y) {
    if (x.first != y.first) return x.first > y.first;
    return std::tie(x.second.b, x.second.kvh, x.second.chunk) < std::tie(y.second.b, y.second.kvh, y.second.chunk);
  });

  bp.acc_chunk = batch_entries * bp.rows * p.hq * bp.dp;
  AlignedBuffer delta(std::size_t(std::max<std::int64_t>(batch_entries * p.hq * bp.rows, 1)));
  AlignedBuffer acc(std::size_t(std::max<std::int64_t>(max_chunks * bp.acc_chunk, 1)));
  bp.delta = delta.data();
  bp.dq_acc = acc.data();
  global_pool()->parallel_for(p.batch * p.hq,
                              [&](std::int64_t i) { kernel.delta(bp, i / p.hq, i % p.hq, delta.data()); });
  global_pool()->parallel_for(std::int64_t(items.size()), [&](std::int64_t i) {
    kernel.item(bp, items[std::size_t(i)].second, thread_scratch());
  });
  reduce_dq(bp, chunks);
}

}  // namespace mha::detail
