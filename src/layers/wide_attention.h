// Attention for the layers' f32 activations at any head dim. Head dims up to kMaxHeadDim go to the
// flash kernels (mha::attention); wider heads (the tutorial's single head of 2048) go to a flash
// loop whose two products are BLAS calls on tiles: the same online softmax, the same O(n) memory
// (a 128 × 256 score tile per thread), never the full score matrix.
#pragma once

#include <cstdint>

#include "mha/tensor.h"

namespace mha::detail {

// q [B, Nq, Hq, D], k [B, Nk, Hkv, D], v [B, Nk, Hkv, Dv], out [B, Nq, Hq, Dv]: f32 views with unit
// stride along the head dim. mask as in mha::attention. Inputs are trusted (the layers built them).
void layer_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, float scale,
                     bool causal, const Tensor* mask);

}  // namespace mha::detail
