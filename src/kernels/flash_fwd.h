// Contract of the flash-attention forward kernels, one implementation per ISA behind one
// dispatch point. Plain declarations and constants only (see attention_params.h).
#pragma once

#include <cstdint>

#include "kernels/attention_params.h"
#include "mha/attention.h"
#include "mha/runtime.h"

namespace mha::detail {

// Query rows per work item and keys per inner tile.
inline constexpr std::int64_t kFlashBlockQ = 64;
inline constexpr std::int64_t kFlashBlockK = 64;
inline constexpr std::int64_t kFlashMaxDim = kMaxHeadDim;      // scratch is sized for the largest head dim
inline constexpr std::int64_t kFlashVcLd = kFlashMaxDim + 16;  // a V tile row, padded by up to a line

// Floats of scratch a kernel needs per worker thread: Qᵀ, converted K and V tiles, the Sᵀ/Pᵀ tile,
// a transposed mask tile, P in bf16 key pairs, the O tile, and per-row max, sum and rescale. Independent of
// sequence lengths.
inline constexpr std::int64_t kFlashScratchFloats =
    kFlashMaxDim * kFlashBlockQ + kFlashBlockK * (kFlashMaxDim + kFlashVcLd) +
    2 * kFlashBlockK * kFlashBlockQ + kFlashBlockK * kFlashBlockQ / 2 + kFlashBlockQ * kFlashMaxDim +
    3 * kFlashBlockQ;

// One work item: query rows [q_begin, q_end) (local to sequence b) of query head h. Every output
// row belongs to exactly one item, so items never combine results across threads.
struct FlashTile {
  std::int64_t b, h, q_begin, q_end;
};

// Computes one work item's out (and lse) rows. `scratch` holds kFlashScratchFloats floats,
// 64-byte aligned.
using FlashFwdKernel = void (*)(const AttentionParams& p, const FlashTile& tile, float* scratch);

namespace generic {
void flash_fwd(const AttentionParams&, const FlashTile&, float*);
}
namespace avx2 {
void flash_fwd(const AttentionParams&, const FlashTile&, float*);
}
namespace avx512 {
void flash_fwd(const AttentionParams&, const FlashTile&, float*);
}
namespace avx512bf16 {
void flash_fwd(const AttentionParams&, const FlashTile&, float*);
}

// The one dispatch point: the kernel for an ISA (falls back to the nearest one built).
FlashFwdKernel flash_fwd_kernel(Isa isa);

// Runs the whole call: builds the work items, balances them over the global pool, calls `kernel`.
void run_flash_fwd(const AttentionParams& p, FlashFwdKernel kernel);

}  // namespace mha::detail
