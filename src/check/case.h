// Accuracy cases: a shape and options, random data for it, and the verdict of the flash kernel
// against the float64 oracle with FlashAttention's bar. Shared by the tests, `mha check` and
// `mha demo`.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "mha/attention.h"
#include "mha/runtime.h"

namespace mha::check {

enum class MaskKind {
  none,
  bias,       // random N(0,1) bias, full [B, Hq, Nq, Nk], f32
  padding,    // [B, 1, 1, Nk]: 0 for the first valid_k[b] keys, -inf after (some batches all -inf)
  head_bias,  // [1, Hq, Nq, Nk] bias in the input dtype, broadcast over the batch
};

struct Case {
  std::int64_t b = 1, nq = 1, nk = 1, hq = 1, hkv = 1, d = 64, dv = 0;  // dv 0: same as d
  DType dtype = DType::f32;
  bool out_f32 = true;  // false: out in the input dtype
  bool causal = false;
  std::int64_t window_left = -1, window_right = -1;
  MaskKind mask = MaskKind::none;
  bool bhsd = false;  // q/k/v/out in PyTorch's layout instead of FlashAttention's
  std::optional<float> scale;
  std::vector<std::int32_t> seqlens_q, seqlens_k;  // non-empty: a varlen batch of these lengths
  bool with_lse = true;
  float dropout_p = 0.0f;  // seed and offset derived from `seed`
  std::uint64_t seed = 1;

  std::int64_t head_dim_v() const { return dv == 0 ? d : dv; }
  bool varlen() const { return !seqlens_q.empty(); }
  std::string shape_string() const;    // "B=2 Nq=17 Nk=33 H=8/2 D=64"
  std::string options_string() const;  // "f16 causal mask=padding ..."
};

// Random inputs for a case, owned, with the views and options that point into them.
struct CaseData {
  std::vector<std::uint8_t> q, k, v, mask;
  std::vector<std::int32_t> cu_q, cu_k;
  Tensor tq, tk, tv;
  AttentionOptions options;
  std::int64_t rows = 0;  // q.shape[1]: Nq, or total_q for varlen

  explicit CaseData(const Case& c);
  CaseData(const CaseData&) = delete;
  // An output buffer and view of the case's out shape and dtype.
  Tensor make_out(std::vector<std::uint8_t>& storage, const Case& c) const;
  Tensor make_lse(std::vector<float>& storage) const;
};

struct Accuracy {
  double max_err = 0;        // flash vs oracle, max |difference| over out
  double naive_max_err = 0;  // naive same-precision path vs oracle
  double floor = 0;          // the bar's absolute floor (output rounding near |oracle| + 0.3)
  double lse_err = 0, naive_lse_err = 0, lse_floor = 0;
  double pcc = 1;      // Pearson correlation of flash out with the oracle
  bool finite = true;  // no NaN / inf in out or lse (other than -inf for empty rows)
  bool pass = false;
  double ratio() const { return max_err / (naive_max_err > 0 ? naive_max_err : floor); }
};

// Forces an ISA for its lifetime, then restores the previous one.
class ScopedIsa {
 public:
  explicit ScopedIsa(Isa isa) : previous_(active_isa()) { set_isa(isa); }
  ~ScopedIsa() { set_isa(previous_); }
  ScopedIsa(const ScopedIsa&) = delete;
  ScopedIsa& operator=(const ScopedIsa&) = delete;

 private:
  Isa previous_;
};

// FlashAttention's bar: max_err <= 2 · naive_max_err + floor (and the same for lse), all finite.
bool meets_bar(const Accuracy& a);

// The oracle and the naive path for a case, computed once and reused across ISAs.
struct Baseline {
  std::vector<double> out, lse;  // oracle
  std::vector<double> naive_out, naive_lse;
};
Baseline compute_baseline(const Case& c, const CaseData& data);

// Measures an output (and optional lse) of the case's shape against the baseline.
Accuracy measure(const Baseline& base, const Tensor& out, const Tensor* lse);

// Runs mha::attention under `isa` and measures it against the baseline.
Accuracy evaluate(const Case& c, const CaseData& data, const Baseline& base, Isa isa);

// Helpers shared with the backward's checks (backward_case.h).
std::vector<double> to_double(const Tensor& t);  // a view's values in logical row-major order
Tensor view4(void* data, DType dt, bool bhsd, std::int64_t b, std::int64_t s, std::int64_t h, std::int64_t d);
double dtype_eps(DType t);  // unit roundoff·2 of a dtype (2^-23, 2^-10, 2^-7)
double max_abs_diff(const std::vector<double>& a, const std::vector<double>& ref);
double max_abs_finite(const std::vector<double>& v);

// The fixed sweep of the test suite: every option and head dim, odd sizes, each in every dtype.
std::vector<Case> sweep_cases();
// A random sweep of `count` cases (shapes, options, dtypes), reproducible from `seed`.
std::vector<Case> random_cases(int count, std::uint64_t seed);

}  // namespace mha::check
