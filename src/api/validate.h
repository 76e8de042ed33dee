// Validation at the API edge: every public argument is checked here, once; kernels trust the
// AttentionParams they receive.
#pragma once

#include <array>
#include <cstdint>
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

// Whether the view is C-contiguous (row-major, no gaps); extent-1 dims may have any stride.
bool is_c_contiguous(const Tensor& t);

// An output must not write one element twice: sorted by stride, each dim must step past the span
// of the smaller ones. Throws InvalidArgument otherwise.
void check_no_self_overlap(const char* func, const std::string& name, const Tensor& t);

// Whether two byte spans share a byte (empty spans share none).
bool overlaps(const Span& a, const Span& b);

// Checks an additive mask (rank 1-4, right-aligned NumPy broadcast to [batch, heads, nq, nk]);
// returns the bytes it spans and its strides over those four dims, 0 where broadcast.
struct MaskView {
  Span span;
  std::array<std::int64_t, 4> strides;
};
MaskView check_mask(const char* func, const Tensor& mask, std::int64_t batch, std::int64_t heads,
                    std::int64_t nq, std::int64_t nk);

// Checks q, k, v, out, options and lse; returns the call in validated form or throws
// InvalidArgument / Unsupported naming the argument. `func` prefixes the messages. A null `out`
// (the float64 reference, which returns its own buffers) skips the output checks. Head dims above
// `max_head_dim` are Unsupported (the layers' wide-head path passes a larger limit).
AttentionParams validate_attention(const char* func, const Tensor& q, const Tensor& k, const Tensor& v,
                                   const Tensor* out, const AttentionOptions& options, const Tensor* lse,
                                   std::int64_t max_head_dim = kMaxHeadDim);

}  // namespace mha::detail
