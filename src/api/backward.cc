#include "mha/backward.h"

#include <fmt/format.h>

#include <string>

#include "api/validate.h"
#include "kernels/bwd/flash_bwd.h"
#include "kernels/philox.h"
#include "mha/errors.h"

namespace mha {

namespace {

[[noreturn]] void fail(const std::string& argument, const std::string& message) {
  throw InvalidArgument(argument, "attention_backward: " + message);
}

std::string shape_string(const std::array<std::int64_t, 4>& s) {
  return fmt::format("[{}, {}, {}, {}]", s[0], s[1], s[2], s[3]);
}

// A gradient or dout: rank 4, `want` shape, dtype f32 or q's.
detail::Span check_grad(const char* name, const Tensor& t, const std::array<std::int64_t, 4>& want,
                        DType q_dtype, const char* what) {
  const detail::Span span = detail::check_view("attention_backward", name, t, 4, 4);
  if (t.dtype != DType::f32 && t.dtype != q_dtype)
    throw Unsupported(name, fmt::format("attention_backward: {}.dtype = {}, expected f32 or q's {}", name,
                                        to_string(t.dtype), to_string(q_dtype)));
  for (std::size_t i = 0; i < 4; ++i)
    if (t.shape[i] != want[i])
      fail(name, fmt::format("{}.shape = {}, expected {} ({})", name, t.describe(), shape_string(want), what));
  return span;
}

detail::Span bytes_of(const Tensor* t) {
  if (t == nullptr) return {};
  return detail::check_view("attention_backward", "", *t, 1, 4);
}

}  // namespace

void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& dout, const Tensor& lse, const Tensor& dq, const Tensor& dk,
                        const Tensor& dv, const AttentionOptions& options) {
  detail::BackwardParams bp;
  // Checks q, k, v, out, lse and the options as the forward does (out and lse are read here).
  bp.a = detail::validate_attention("attention_backward", q, k, v, &out, options, &lse);
  const detail::Span sdout = check_grad("dout", dout, {out.shape[0], out.shape[1], out.shape[2], out.shape[3]},
                                        q.dtype, "out's shape");
  const detail::Span sdq = check_grad("dq", dq, {q.shape[0], q.shape[1], q.shape[2], q.shape[3]}, q.dtype,
                                      "q's shape");
  const detail::Span sdk = check_grad("dk", dk, {k.shape[0], k.shape[1], k.shape[2], k.shape[3]}, q.dtype,
                                      "k's shape");
  const detail::Span sdv = check_grad("dv", dv, {v.shape[0], v.shape[1], v.shape[2], v.shape[3]}, q.dtype,
                                      "v's shape");
  struct Output {
    const char* name;
    const Tensor& t;
    detail::Span span;
  };
  const Output outputs[] = {{"dq", dq, sdq}, {"dk", dk, sdk}, {"dv", dv, sdv}};
  const std::pair<const char*, detail::Span> inputs[] = {
      {"q", bytes_of(&q)},     {"k", bytes_of(&k)},       {"v", bytes_of(&v)},
      {"out", bytes_of(&out)}, {"dout", sdout},           {"lse", bytes_of(&lse)},
      {"mask", bytes_of(options.mask ? &*options.mask : nullptr)}};
  for (std::size_t i = 0; i < 3; ++i) {
    const Output& o = outputs[i];
    detail::check_no_self_overlap("attention_backward", o.name, o.t);
    for (const auto& [in_name, in_span] : inputs)
      if (detail::overlaps(o.span, in_span))
        fail(o.name, fmt::format("{} overlaps {} in memory, expected a separate output buffer", o.name, in_name));
    for (std::size_t j = 0; j < i; ++j)
      if (detail::overlaps(o.span, outputs[j].span))
        fail(o.name, fmt::format("{} overlaps {} in memory, expected separate output buffers", o.name,
                                 outputs[j].name));
  }

  bp.dout = dout.data;
  bp.dout_dtype = dout.dtype;
  bp.dq = dq.data;
  bp.dk = dk.data;
  bp.dv = dv.data;
  bp.dq_dtype = dq.dtype;
  bp.dk_dtype = dk.dtype;
  bp.dv_dtype = dv.dtype;
  for (std::size_t i = 0; i < 4; ++i) {
    bp.dout_stride[i] = dout.strides[i];
    bp.dq_stride[i] = dq.strides[i];
    bp.dk_stride[i] = dk.strides[i];
    bp.dv_stride[i] = dv.strides[i];
  }
  detail::run_flash_bwd(bp, detail::flash_bwd_kernel(active_isa()));
}

double attention_backward_flops(const Tensor& q, const Tensor& k, const Tensor& v,
                                const AttentionOptions& options) {
  return 2.5 * attention_flops(q, k, v, options);
}

void dropout_keep_mask(const AttentionOptions& options, std::int64_t batch, std::int64_t heads,
                       std::int64_t seqlen_q, std::int64_t seqlen_k, std::span<std::uint8_t> keep) {
  const auto bad = [](const char* arg, const std::string& msg) {
    throw InvalidArgument(arg, "dropout_keep_mask: " + msg);
  };
  const std::pair<const char*, std::int64_t> sizes[] = {
      {"batch", batch}, {"heads", heads}, {"seqlen_q", seqlen_q}, {"seqlen_k", seqlen_k}};
  std::int64_t total = 1;
  for (const auto& [name, n] : sizes) {
    if (n < 0) bad(name, fmt::format("{} = {}, expected >= 0", name, n));
    if (__builtin_mul_overflow(total, n, &total)) bad(name, fmt::format("{} = {} overflows the element count", name, n));
  }
  if (!(options.dropout_p >= 0.0f && options.dropout_p < 1.0f))
    bad("dropout_p", fmt::format("dropout_p = {}, expected a probability in [0, 1)", options.dropout_p));
  if (std::int64_t(keep.size()) != total)
    bad("keep", fmt::format("keep has {} entries, expected batch·heads·seqlen_q·seqlen_k = {}", keep.size(), total));
  const detail::DropoutKey key =
      detail::dropout_key(options.dropout_seed, options.dropout_offset, options.dropout_p);
  std::size_t n = 0;
  for (std::int64_t b = 0; b < batch; ++b)
    for (std::int64_t h = 0; h < heads; ++h)
      for (std::int64_t i = 0; i < seqlen_q; ++i)
        for (std::int64_t j = 0; j < seqlen_k; ++j)
          keep[n++] = detail::dropout_keep(key, std::uint32_t(i), std::uint32_t(b * heads + h), j) ? 1 : 0;
}

}  // namespace mha
