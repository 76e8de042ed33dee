// K and V repacked once per call for the flash forward kernels, instead of once per work item and
// tile: at 2k tokens every KV head is read by 32 items (more with GQA). Each form costs one pass
// over K or V and a buffer of its size.
//  - bf16 key pairs for the vdpbf16ps kernel: pairing per tile cost up to 12 % of that kernel's
//    time on Zen 4 (pairing skipped, an upper bound; made once, side by side on one thread: 2k 5 %
//    and 2k causal 4 % faster).
//  - f32 column panels for the f32-FMA kernels: V read in place has a row stride of heads × Dv
//    floats (6 KB for 12 heads of 128), a multiple of 32 cache lines for most shapes, so a tile's
//    64 keys start on 2 of L1's 64 set offsets and its P·V slice (16 KB) cannot stay in L1. In
//    panels of DB·N columns a tile's slice is contiguous. f16 and bf16 inputs are converted there
//    too, once instead of per item and tile.
//  - key rows, f32 for the same kernels and bf16 for the vdpbf16ps one: a score block's keys, read
//    in place, share one or two set offsets the same way and evict Qᵀ (GQA 32/8: 6–9 % faster
//    packed).
#pragma once

#include <cstdint>

#include "kernels/attention_params.h"
#include "runtime/aligned_buffer.h"

namespace mha::detail {

// Pairs p's V into `buffer` (grown as needed) and points p.v_pairs at it, when the call is bf16,
// each KV head is read by at least 8 items, and the pairs fit in `max_bytes`; else leaves p as is.
void prepare_value_pairs(AttentionParams& p, std::int64_t ld, std::int64_t block_q, AlignedBuffer& buffer,
                         std::size_t max_bytes);

// Copies p's K as rows of dtype `as` (f32, or bf16 from bf16 zero padded to an even length), each
// (sequence, KV head) contiguous, into `buffer` and points p.k_rows at them, under the same rule
// as the value panels.
void prepare_key_rows(AttentionParams& p, DType as, std::int64_t block_q, AlignedBuffer& buffer,
                      std::size_t max_bytes);

// Copies p's V as f32 into column panels of `width` floats (rows padded with zeros to `ld`, a
// multiple of the kernel's vector) in `buffer` and points p.v_panels at them, when each KV head is
// read by at least 8 items and the panels fit in `max_bytes`; else leaves p as is.
void prepare_value_panels(AttentionParams& p, std::int64_t ld, std::int64_t width, std::int64_t block_q,
                          AlignedBuffer& buffer, std::size_t max_bytes);

}  // namespace mha::detail
