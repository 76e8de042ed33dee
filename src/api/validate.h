// Validation at the API edge: every public argument is checked here, once; kernels trust the
// AttentionParams they receive.
#pragma once

#include "kernels/attention_params.h"
#include "mha/attention.h"

namespace mha::detail {

// Checks q, k, v, out, options and lse; returns the call in validated form or throws
// InvalidArgument / Unsupported naming the argument. `func` prefixes the messages. A null `out`
// (the float64 reference, which returns its own buffers) skips the output checks.
AttentionParams validate_attention(const char* func, const Tensor& q, const Tensor& k,
                                   const Tensor& v, const Tensor* out,
                                   const AttentionOptions& options, const Tensor* lse);

}  // namespace mha::detail
