// bf16 V as key pairs, made once per call for the vdpbf16ps forward kernel instead of once per
// work item and tile: at 2k tokens every KV head's V is read by 32 items (more with GQA), and
// pairing it per tile cost up to 12 % of that kernel's time on Zen 4 (pairing skipped, an upper
// bound; made once, side by side on one thread: 2k 5 % and 2k causal 4 % faster). The pairs cost
// one pass over V and a V-sized buffer.
#pragma once

#include <cstdint>

#include "kernels/attention_params.h"
#include "runtime/aligned_buffer.h"

namespace mha::detail {

// Pairs p's V into `buffer` (grown as needed) and points p.v_pairs at it, when the call is bf16,
// each KV head is read by at least 8 items, and the pairs fit in `max_bytes`; else leaves p as is.
void prepare_value_pairs(AttentionParams& p, std::int64_t ld, std::int64_t block_q, AlignedBuffer& buffer,
                         std::size_t max_bytes);

}  // namespace mha::detail
