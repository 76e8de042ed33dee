// attention() calls that are decoding steps in disguise run on the flash-decode kernels.
#pragma once

#include "kernels/attention_params.h"
#include "mha/tensor.h"

namespace mha::detail {

// Runs the validated call `p` (out and lse its views) on the flash-decode kernels and returns true
// when it is a step they do: a few query rows per sequence that see every key (one query) or a
// causal prefix (bottom-right, as both define it), the same number of queries in every sequence
// (batched or packed), no dropout, no mask or one that only hides keys outside a range per
// sequence (a padding mask of 0 and -inf), D = Dv, and K and V with the same strides, heads'
// elements contiguous (a cache's rows of Hkv·D, or PyTorch's [B, H, S, D]). Else returns false,
// having written nothing.
bool forward_as_decode(const AttentionParams& p, const Tensor& out, const Tensor* lse);

}  // namespace mha::detail
