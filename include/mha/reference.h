// The oracle and the naive path, always built and callable, for tests, `mha check` and benchmarks.
#pragma once

#include <cstdint>
#include <vector>

#include "mha/attention.h"

namespace mha::reference {

struct Result {
  std::vector<double> out;  // [B, Nq, Hq, Dv] row-major (varlen: [1, total_q, Hq, Dv])
  std::vector<double> lse;  // [B, Hq, Nq] row-major; -inf for fully masked rows
};

// Float64 oracle: the inputs are read exactly in their dtype; everything after is double.
// Same arguments and validation as mha::attention.
Result attention_f64(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& options = {});

// The textbook path in working precision, one step at a time, materializing the [Nq, Nk] scores:
// S = q·kᵀ, S *= scale, S += mask, causal/window masking, P = softmax(S), out = P·v. Products
// accumulate in f32; for f16/bf16 inputs S and P are stored in that dtype between steps, as a
// framework running in that precision would. Its error against the oracle is the yardstick of
// the accuracy bar. Same arguments, validation and outputs as mha::attention.
void attention_naive(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                     const AttentionOptions& options = {}, const Tensor* lse = nullptr);

}  // namespace mha::reference
