#include "check/backward_case.h"

#include <cmath>

#include "check/random.h"
#include "mha/backward.h"
#include "mha/reference.h"
#include "runtime/dtype_convert.h"

namespace mha::check {

namespace {

// Gradient views of the case's shapes in its layout and gradient dtype.
struct GradViews {
  std::array<std::vector<std::uint8_t>, 3> storage;
  std::array<Tensor, 3> t;
  GradViews(const Case& c, const CaseData& data, DType dt) {
    const Tensor* in[3] = {&data.tq, &data.tk, &data.tv};
    for (int i = 0; i < 3; ++i) {
      const Tensor& x = *in[i];
      storage[std::size_t(i)].assign(std::size_t(x.numel()) * size_of(dt), 0xAB);  // junk, not zeros
      t[std::size_t(i)] = view4(storage[std::size_t(i)].data(), dt, c.bhsd, x.shape[0], x.shape[1], x.shape[2],
                                x.shape[3]);
    }
  }
};

}  // namespace

DType grad_dtype(const Case& c) { return c.out_f32 ? DType::f32 : c.dtype; }

BackwardBaseline compute_backward_baseline(const Case& c, const CaseData& data) {
  BackwardBaseline base;
  const Tensor& q = data.tq;
  Random rng(c.seed * 31 + 7);
  const std::int64_t n = q.shape[0] * q.shape[1] * q.shape[2] * c.head_dim_v();
  base.dout_storage.resize(std::size_t(n) * size_of(c.dtype));
  for (std::int64_t i = 0; i < n; ++i) detail::store_f32(base.dout_storage.data(), c.dtype, i, float(rng.normal()));
  base.dout = view4(base.dout_storage.data(), c.dtype, c.bhsd, q.shape[0], q.shape[1], q.shape[2], c.head_dim_v());
  reference::Gradients g = reference::attention_backward_f64(data.tq, data.tk, data.tv, base.dout, data.options);
  base.oracle = {std::move(g.dq), std::move(g.dk), std::move(g.dv)};
  GradViews naive(c, data, grad_dtype(c));
  reference::attention_backward_naive(data.tq, data.tk, data.tv, base.dout, naive.t[0], naive.t[1], naive.t[2],
                                      data.options);
  for (std::size_t i = 0; i < 3; ++i) base.naive[i] = to_double(naive.t[i]);
  return base;
}

GradRun run_backward(const Case& c, const CaseData& data, const BackwardBaseline& base, Isa isa) {
  const ScopedIsa scoped(isa);
  std::vector<std::uint8_t> out_storage;
  std::vector<float> lse_storage;
  const Tensor out = data.make_out(out_storage, c);
  const Tensor lse = data.make_lse(lse_storage);
  attention(data.tq, data.tk, data.tv, out, data.options, &lse);
  GradViews g(c, data, grad_dtype(c));
  attention_backward(data.tq, data.tk, data.tv, out, base.dout, lse, g.t[0], g.t[1], g.t[2], data.options);
  GradRun run;
  for (std::size_t i = 0; i < 3; ++i) run.grads[i] = to_double(g.t[i]);
  return run;
}

GradAccuracy measure_backward(const BackwardBaseline& base, const GradRun& run, DType grad_dtype) {
  GradAccuracy a;
  a.pass = true;
  for (std::size_t i = 0; i < 3; ++i) {
    for (double x : run.grads[i]) a.finite = a.finite && std::isfinite(x);
    a.max_err[i] = max_abs_diff(run.grads[i], base.oracle[i]);
    a.naive_err[i] = max_abs_diff(base.naive[i], base.oracle[i]);
    a.floor[i] = dtype_eps(grad_dtype) * (max_abs_finite(base.oracle[i]) + 0.3);
    a.pass = a.pass && a.max_err[i] <= 3 * a.naive_err[i] + a.floor[i];
  }
  a.pass = a.pass && a.finite;
  return a;
}

}  // namespace mha::check
