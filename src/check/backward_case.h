// Accuracy of the backward for a check::Case: mha's dq, dk, dv against the float64 oracle, with
// FlashAttention's bar for gradients (max error <= 3 × the naive same-precision path's + a floor).
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "check/case.h"

namespace mha::check {

// The case's dout, and the oracle's and the naive path's gradients, computed once per case.
struct BackwardBaseline {
  std::vector<std::uint8_t> dout_storage;
  Tensor dout;
  std::array<std::vector<double>, 3> oracle, naive;  // dq, dk, dv in logical row-major order
};
BackwardBaseline compute_backward_baseline(const Case& c, const CaseData& data);

// The gradients' dtype of a case: f32 when its out is f32, else the input dtype.
DType grad_dtype(const Case& c);

struct GradAccuracy {
  std::array<double, 3> max_err{}, naive_err{}, floor{};
  bool finite = true;
  bool pass = false;
};

// The gradients of a run, as double in logical order.
struct GradRun {
  std::array<std::vector<double>, 3> grads;
};
// Runs mha::attention then mha::attention_backward under `isa`.
GradRun run_backward(const Case& c, const CaseData& data, const BackwardBaseline& base, Isa isa);
GradAccuracy measure_backward(const BackwardBaseline& base, const GradRun& run, DType grad_dtype);

}  // namespace mha::check
