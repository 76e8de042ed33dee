#include "check/case.h"
#include "check/compare.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "check/random.h"
#include "mha/reference.h"
#include "runtime/dtype_convert.h"

namespace mha::check {

using detail::load_f32;
using detail::store_f32;

std::string Case::shape_string() const {
  std::string s = varlen() ? fmt::format("varlen×{}", seqlens_q.size()) : fmt::format("B={}", b);
  if (varlen()) {
    s += " Nq=" + fmt::format("{}", fmt::join(seqlens_q, "/"));
    s += " Nk=" + fmt::format("{}", fmt::join(seqlens_k, "/"));
  } else {
    s += fmt::format(" Nq={} Nk={}", nq, nk);
  }
  s += fmt::format(" H={}/{} D={}", hq, hkv, d);
  if (dv != 0 && dv != d) s += fmt::format(" Dv={}", dv);
  return s;
}

std::string Case::options_string() const {
  std::string s(to_string(dtype));
  if (!out_f32 && dtype != DType::f32) s += fmt::format(" out={}", to_string(dtype));
  if (causal) s += " causal";
  if (window_left >= 0 || window_right >= 0) s += fmt::format(" window({},{})", window_left, window_right);
  switch (mask) {
    case MaskKind::none: break;
    case MaskKind::bias: s += " bias"; break;
    case MaskKind::padding: s += " padding"; break;
    case MaskKind::head_bias: s += " head-bias"; break;
  }
  if (bhsd) s += " bhsd";
  if (scale) s += fmt::format(" scale={}", *scale);
  if (dropout_p > 0) s += fmt::format(" dropout={}", dropout_p);
  return s;
}

namespace {

void fill_normal(std::vector<std::uint8_t>& buf, std::int64_t n, DType dt, Random& rng) {
  buf.resize(std::size_t(n) * size_of(dt));
  for (std::int64_t i = 0; i < n; ++i) store_f32(buf.data(), dt, i, float(rng.normal()));
}

}  // namespace

std::vector<double> to_double(const Tensor& t) {
  std::vector<double> out(std::size_t(t.numel()));
  std::size_t n = 0;
  std::array<std::int64_t, 4> idx{};
  const std::int64_t total = t.numel();
  for (std::int64_t e = 0; e < total; ++e) {
    std::int64_t off = 0;
    for (int i = 0; i < t.rank; ++i) off += idx[std::size_t(i)] * t.strides[std::size_t(i)];
    out[n++] = double(load_f32(t.data, t.dtype, off));
    for (int i = t.rank - 1; i >= 0; --i) {
      if (++idx[std::size_t(i)] < t.shape[std::size_t(i)]) break;
      idx[std::size_t(i)] = 0;
    }
  }
  return out;
}

Tensor view4(void* data, DType dt, bool bhsd, std::int64_t b, std::int64_t s, std::int64_t h,
             std::int64_t d) {
  return bhsd ? Tensor::bhsd(data, dt, b, s, h, d) : Tensor::bshd(data, dt, b, s, h, d);
}

double dtype_eps(DType t) {
  switch (t) {
    case DType::f16: return 0x1.0p-10;
    case DType::bf16: return 0x1.0p-7;
    default: return 0x1.0p-23;
  }
}

CaseData::CaseData(const Case& c) {
  Random rng(c.seed);
  const std::int64_t B = c.varlen() ? 1 : c.b;
  std::int64_t krows = c.nk, nseq = c.b, max_q = c.nq, max_k = c.nk;
  rows = c.nq;
  if (c.varlen()) {
    cu_q.assign(1, 0);
    cu_k.assign(1, 0);
    for (std::size_t i = 0; i < c.seqlens_q.size(); ++i) {
      cu_q.push_back(cu_q.back() + c.seqlens_q[i]);
      cu_k.push_back(cu_k.back() + c.seqlens_k[i]);
    }
    rows = cu_q.back();
    krows = cu_k.back();
    nseq = std::int64_t(c.seqlens_q.size());
    max_q = *std::max_element(c.seqlens_q.begin(), c.seqlens_q.end());
    max_k = *std::max_element(c.seqlens_k.begin(), c.seqlens_k.end());
    options.cu_seqlens_q = cu_q;
    options.cu_seqlens_k = cu_k;
  }
  const std::int64_t dv = c.head_dim_v();
  fill_normal(q, B * rows * c.hq * c.d, c.dtype, rng);
  fill_normal(k, B * krows * c.hkv * c.d, c.dtype, rng);
  fill_normal(v, B * krows * c.hkv * dv, c.dtype, rng);
  tq = view4(q.data(), c.dtype, c.bhsd, B, rows, c.hq, c.d);
  tk = view4(k.data(), c.dtype, c.bhsd, B, krows, c.hkv, c.d);
  tv = view4(v.data(), c.dtype, c.bhsd, B, krows, c.hkv, dv);

  switch (c.mask) {
    case MaskKind::none: break;
    case MaskKind::bias:
      fill_normal(mask, nseq * c.hq * max_q * max_k, DType::f32, rng);
      options.mask = Tensor::contiguous(mask.data(), DType::f32, {nseq, c.hq, max_q, max_k});
      break;
    case MaskKind::head_bias:
      fill_normal(mask, c.hq * max_q * max_k, c.dtype, rng);
      options.mask = Tensor::contiguous(mask.data(), c.dtype, {1, c.hq, max_q, max_k});
      break;
    case MaskKind::padding: {
      mask.resize(std::size_t(nseq * max_k) * sizeof(float));
      auto* m = reinterpret_cast<float*>(mask.data());
      for (std::int64_t s = 0; s < nseq; ++s) {
        const std::int64_t valid = rng.range(0, max_k);
        for (std::int64_t j = 0; j < max_k; ++j)
          m[s * max_k + j] = j < valid ? 0.0f : -std::numeric_limits<float>::infinity();
      }
      options.mask = Tensor::contiguous(mask.data(), DType::f32, {nseq, 1, 1, max_k});
      break;
    }
  }
  options.causal = c.causal;
  options.window_left = c.window_left;
  options.window_right = c.window_right;
  options.scale = c.scale;
  options.dropout_p = c.dropout_p;
  options.dropout_seed = c.seed * 0x9E3779B97F4A7C15ull + 17;
  options.dropout_offset = c.seed;
}

Tensor CaseData::make_out(std::vector<std::uint8_t>& storage, const Case& c) const {
  const DType dt = c.out_f32 ? DType::f32 : c.dtype;
  const std::int64_t B = tq.shape[0], dv = c.head_dim_v();
  storage.assign(std::size_t(B * rows * c.hq * dv) * size_of(dt), 0xAB);  // junk, not zeros
  return view4(storage.data(), dt, c.bhsd, B, rows, c.hq, dv);
}

Tensor CaseData::make_lse(std::vector<float>& storage) const {
  const std::int64_t B = tq.shape[0], H = tq.shape[2];
  storage.assign(std::size_t(B * H * rows), std::numeric_limits<float>::quiet_NaN());
  return Tensor::contiguous(storage.data(), DType::f32, {B, H, rows});
}

Baseline compute_baseline(const Case& c, const CaseData& data) {
  Baseline base;
  reference::Result ref = reference::attention_f64(data.tq, data.tk, data.tv, data.options);
  base.out = std::move(ref.out);
  base.lse = std::move(ref.lse);
  std::vector<std::uint8_t> out_storage;
  std::vector<float> lse_storage;
  const Tensor out = data.make_out(out_storage, c);
  const Tensor lse = data.make_lse(lse_storage);
  reference::attention_naive(data.tq, data.tk, data.tv, out, data.options, &lse);
  base.naive_out = to_double(out);
  base.naive_lse = to_double(lse);
  return base;
}

// max |a - ref|; a mismatch in infinities counts as an infinite error.
double max_abs_diff(const std::vector<double>& a, const std::vector<double>& ref) {
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (std::isinf(ref[i]) || std::isinf(a[i])) {
      if (a[i] != ref[i]) return std::numeric_limits<double>::infinity();
      continue;
    }
    const double e = std::fabs(a[i] - ref[i]);
    if (!(e <= m)) m = e;  // NaN propagates as the maximum
  }
  return m;
}

double max_abs_finite(const std::vector<double>& v) {
  double m = 0;
  for (double x : v)
    if (std::isfinite(x)) m = std::max(m, std::fabs(x));
  return m;
}

bool meets_bar(const Accuracy& a) {
  return a.finite && a.max_err <= 2 * a.naive_max_err + a.floor &&
         a.lse_err <= 2 * a.naive_lse_err + a.lse_floor;
}

Accuracy measure(const Baseline& base, const Tensor& out, const Tensor* lse) {
  Accuracy a;
  const std::vector<double> got = to_double(out);
  a.max_err = max_abs_diff(got, base.out);
  a.naive_max_err = max_abs_diff(base.naive_out, base.out);
  a.floor = dtype_eps(out.dtype) * (max_abs_finite(base.out) + 0.3);
  a.pcc = pearson(got, base.out);
  for (double x : got) a.finite = a.finite && std::isfinite(x);
  if (lse != nullptr) {
    const std::vector<double> got_lse = to_double(*lse);
    a.lse_err = max_abs_diff(got_lse, base.lse);
    a.naive_lse_err = max_abs_diff(base.naive_lse, base.lse);
    a.lse_floor = 4 * dtype_eps(DType::f32) * (max_abs_finite(base.lse) + 1.0);
    for (double x : got_lse)
      a.finite = a.finite && !std::isnan(x) && x != std::numeric_limits<double>::infinity();
  }
  a.pass = meets_bar(a);
  return a;
}

Accuracy evaluate(const Case& c, const CaseData& data, const Baseline& base, Isa isa) {
  std::vector<std::uint8_t> out_storage;
  std::vector<float> lse_storage;
  const Tensor out = data.make_out(out_storage, c);
  const Tensor lse = data.make_lse(lse_storage);
  {
    const ScopedIsa scoped(isa);
    attention(data.tq, data.tk, data.tv, out, data.options, c.with_lse ? &lse : nullptr);
  }
  return measure(base, out, c.with_lse ? &lse : nullptr);
}

}  // namespace mha::check
