// Validation at the API edge: every public argument is checked here, once; kernels trust the
// AttentionParams they receive.
#pragma once

#include <string>

#include "kernels/attention_params.h"
#include "mha/attention.h"

namespace mha::detail {

// Bytes spanned by a view: [begin, end); begin == end when it has no elements.
struct Span {
  const char* begin = nullptr;
  const char* end = nullptr;
};

// Checks a view's rank (min_rank..max_rank), dtype, sizes and strides (non-negative, offsets
// addressable) and data (not null when it has elements); throws InvalidArgument / Unsupported
// naming `name`, with `func` prefixing the message.
Span check_view(const char* func, const std::string& name, const Tensor& t, int min_rank, int max_rank);

// An output must not write one element twice: sorted by stride, each dim must step past the span
// of the smaller ones. Throws InvalidArgument otherwise.
void check_no_self_overlap(const char* func, const std::string& name, const Tensor& t);

// Checks q, k, v, out, options and lse; returns the call in validated form or throws
// InvalidArgument / Unsupported naming the argument. `func` prefixes the messages. A null `out`
// (the float64 reference, which returns its own buffers) skips the output checks.
AttentionParams validate_attention(const char* func, const Tensor& q, const Tensor& k, const Tensor& v,
                                   const Tensor* out, const AttentionOptions& options, const Tensor* lse);

}  // namespace mha::detail
