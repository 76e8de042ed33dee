// The one dispatch point for the flash forward kernels, and the driver that spreads work items
// over the thread pool.
#include <algorithm>
#include <vector>

#include "kernels/flash_fwd.h"
#include "runtime/aligned_buffer.h"
#include "runtime/thread_pool.h"

namespace mha::detail {

FlashFwdKernel flash_fwd_kernel(Isa isa) {
  switch (isa) {
    case Isa::avx512bf16: return &avx512bf16::flash_fwd;
    case Isa::avx512: return &avx512::flash_fwd;
    case Isa::avx2: return &avx2::flash_fwd;
    case Isa::generic: break;
  }
  return &generic::flash_fwd;
}

namespace {

// Each thread keeps its scratch across calls, so steady-state calls allocate only the item list.
float* thread_scratch() {
  thread_local AlignedBuffer buffer{std::size_t(kFlashScratchFloats)};
  return buffer.data();
}

// Key tiles an item visits: the cost used to hand out heavy (causal: late) items first.
std::int64_t item_cost(const AttentionParams& p, const FlashTile& t) {
  const KeyRange r = visible_keys(p, seq_span(p, t.b), t.q_begin, t.q_end);
  return (r.end - r.begin + kFlashBlockK - 1) / kFlashBlockK + 1;
}

}  // namespace

void run_flash_fwd(const AttentionParams& p, FlashFwdKernel kernel) {
  std::vector<FlashTile> items;
  for (std::int64_t b = 0; b < p.batch; ++b) {
    const SeqSpan s = seq_span(p, b);
    for (std::int64_t h = 0; h < p.hq; ++h)
      for (std::int64_t q0 = 0; q0 < s.len_q; q0 += kFlashBlockQ)
        items.push_back({b, h, q0, std::min(q0 + kFlashBlockQ, s.len_q)});
  }
  // Longest first keeps the tail short when costs differ (causal, windows, ragged varlen). The
  // order changes which thread runs an item, never what the item computes.
  if (p.window_left >= 0 || p.window_right >= 0 || p.cu_q != nullptr) {
    std::vector<std::pair<std::int64_t, FlashTile>> costed;
    costed.reserve(items.size());
    for (const FlashTile& t : items) costed.emplace_back(item_cost(p, t), t);
    std::stable_sort(costed.begin(), costed.end(),
                     [](const auto& a, const auto& b) { return a.first > b.first; });
    for (std::size_t i = 0; i < items.size(); ++i) items[i] = costed[i].second;
  }
  global_pool().parallel_for(std::int64_t(items.size()),
                             [&](std::int64_t i) { kernel(p, items[std::size_t(i)], thread_scratch()); });
}

}  // namespace mha::detail
