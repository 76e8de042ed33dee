// Argument checks shared by the layers' forward calls.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "mha/tensor.h"

namespace mha {
struct MultiHeadAttentionWeights;
}

namespace mha::detail {

// Checks that t is an f32, C-contiguous view of exactly `shape`; throws InvalidArgument (or
// Unsupported for the dtype) naming `name`, with `func` prefixing the message.
void check_activation(const char* func, const char* name, const Tensor& t,
                      std::initializer_list<std::int64_t> shape);

// Rounds every weight to `dtype` (a no-op for f32): the layer then computes with exactly the
// weights a checkpoint in that dtype holds.
void round_weights(std::vector<float>& w, DType dtype);

// Appends w_query, w_key and w_value to w_qkv (one [(Hq + 2·Hkv)·dh][hidden] matrix, the fused
// projection's weights) and their biases to b_qkv.
void fuse_qkv(const MultiHeadAttentionWeights& w, std::vector<float>& w_qkv, std::vector<float>& b_qkv);

// Throws InvalidArgument naming `name` unless w has `size` elements.
void check_weight(const char* func, const std::string& name, const std::vector<float>& w, std::int64_t size);

}  // namespace mha::detail
