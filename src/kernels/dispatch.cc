// The one dispatch point for the flash forward kernels, and the driver that spreads work items
// over the thread pool.
#include <algorithm>
#include <tuple>
#include <vector>

#include "kernels/flash_fwd.h"
#include "kernels/packed_kv.h"
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

// Each thread keeps its scratch across calls.
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

void run_flash_fwd(const AttentionParams& call, FlashFwdKernel kernel) {
  AttentionParams p = call;
  // K and V repacked once here rather than per item and tile (packed_kv.h): bf16 V key pairs for
  // the vdpbf16ps kernel; f32 K rows and V column panels of DB·N columns for the others. Each
  // buffer is kept per calling thread up to 64 MiB (steady state allocates nothing); larger calls
  // hold theirs only while they run.
  constexpr std::size_t kKeptBytes = std::size_t(64) << 20;
  thread_local AlignedBuffer kept_v, kept_k;
  AlignedBuffer held_v, held_k;
  // prepare(buffer, max_bytes) -> made: in the kept buffer when it fits, else in a held one.
  const auto pack = [](AlignedBuffer& kept, AlignedBuffer& held, auto prepare) {
    if (!prepare(kept, kKeptBytes)) prepare(held, ~std::size_t(0));
  };
  const auto padded = [&](std::int64_t vec) { return (p.dv + vec - 1) / vec * vec; };
  if (kernel == &avx512bf16::flash_fwd && p.in_dtype == DType::bf16) {
    pack(kept_v, held_v, [&](AlignedBuffer& b, std::size_t max) {
      prepare_value_pairs(p, padded(16), kFlashBlockQ, b, max);
      return p.v_pairs != nullptr;
    });
    pack(kept_k, held_k, [&](AlignedBuffer& b, std::size_t max) {
      prepare_key_rows(p, DType::bf16, kFlashBlockQ, b, max);
      return p.k_rows != nullptr;
    });
  } else {
    // The vector width of each kernel's f32 path, and its P·V column block (DB vectors)
    const std::int64_t vec = kernel == &avx512bf16::flash_fwd || kernel == &avx512::flash_fwd ? 16
                             : kernel == &avx2::flash_fwd                                     ? 8
                                                                                              : 4;
    const std::int64_t width = vec == 16 ? 4 * vec : 2 * vec;
    pack(kept_v, held_v, [&](AlignedBuffer& b, std::size_t max) {
      prepare_value_panels(p, padded(vec), width, kFlashBlockQ, b, max);
      return p.v_panels != nullptr;
    });
    pack(kept_k, held_k, [&](AlignedBuffer& b, std::size_t max) {
      prepare_key_rows(p, DType::f32, kFlashBlockQ, b, max);
      return p.k_rows != nullptr;
    });
  }
  // Kept per calling thread and refilled: once it has grown, steady-state calls allocate nothing.
  // (A thread_local is not captured by the lambda below: workers must see the caller's list.)
  thread_local std::vector<FlashTile> caller_items;
  std::vector<FlashTile>& items = caller_items;
  items.clear();
  for (std::int64_t b = 0; b < p.batch; ++b) {
    const SeqSpan s = seq_span(p, b);
    for (std::int64_t h = 0; h < p.hq; ++h)
      for (std::int64_t q0 = 0; q0 < s.len_q; q0 += kFlashBlockQ)
        items.push_back({b, h, q0, std::min(q0 + kFlashBlockQ, s.len_q)});
  }
  // Longest first keeps the tail short when costs differ (causal, windows, ragged varlen). The
  // order changes which thread runs an item, never what the item computes. Without varlen it is
  // longest first within each head, heads in order: the threads then work on one head's K and V
  // at a time, as without a window, where longest first over all items had them on different
  // heads (2 Zen 4 threads, 2k and 4k causal: 3 % faster).
  if (p.window_left >= 0 || p.window_right >= 0 || p.cu_q != nullptr) {
    thread_local std::vector<std::pair<std::int64_t, FlashTile>> costed;
    costed.clear();
    for (const FlashTile& t : items) costed.emplace_back(item_cost(p, t), t);
    // A total order (ties by position) keeps the sort in place: std::stable_sort would allocate.
    const bool head_major = p.cu_q == nullptr;
    std::sort(costed.begin(), costed.end(), [&](const auto& x, const auto& y) {
      if (head_major && std::tie(x.second.b, x.second.h) != std::tie(y.second.b, y.second.h))
        return std::tie(x.second.b, x.second.h) < std::tie(y.second.b, y.second.h);
      if (x.first != y.first) return x.first > y.first;
      return std::tie(x.second.b, x.second.h, x.second.q_begin) <
             std::tie(y.second.b, y.second.h, y.second.q_begin);
    });
    for (std::size_t i = 0; i < items.size(); ++i) items[i] = costed[i].second;
  }
  global_pool()->parallel_for(std::int64_t(items.size()),
                              [&](std::int64_t i) { kernel(p, items[std::size_t(i)], thread_scratch()); });
}

}  // namespace mha::detail
