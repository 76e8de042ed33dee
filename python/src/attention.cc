// mha.attention / attention_backward / dropout_keep_mask for the Python layer. `layout` tells how
// the arrays' axes map to mha's logical [batch, seq, heads, head_dim]: "bshd" (FlashAttention),
// "bhsd" (PyTorch), "shd" (varlen packed rows, FlashAttention's [total, heads, dim]) or "hsd"
// (PyTorch without a batch axis). lse follows: [B, H, N] with a batch axis, else [H, N].
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include "arrays.h"
#include "bindings.h"
#include "mha/attention.h"
#include "mha/backward.h"
#include "mha/errors.h"

namespace mha::py {

namespace {

constexpr std::string_view kLogical = "bshd";

std::string_view checked_layout(const std::string& layout) {
  for (std::string_view known : {"bshd", "bhsd", "shd", "hsd"})
    if (layout == known) return known;
  throw InvalidArgument("layout", fmt::format("layout = '{}', expected 'bshd', 'bhsd', 'shd' or 'hsd'", layout));
}

std::string_view lse_axes(std::string_view layout) {
  return layout.find('b') == std::string_view::npos ? "hs" : "bhs";
}

// The options shared by the forward and the backward; the spans point into the argument arrays,
// which outlive the call.
struct Options {
  AttentionOptions options;
  Tensor mask;
};

Options options_of(std::optional<float> scale, bool causal, std::int64_t window_left, std::int64_t window_right,
                   const std::optional<InArray>& mask, const std::optional<InArray>& cu_seqlens_q,
                   const std::optional<InArray>& cu_seqlens_k, float dropout_p, std::uint64_t dropout_seed,
                   std::uint64_t dropout_offset) {
  Options o;
  o.options.scale = scale;
  o.options.causal = causal;
  o.options.window_left = window_left;
  o.options.window_right = window_right;
  if (mask) {
    o.mask = tensor_of(*mask, "mask", "bhqk", "bhqk", /*pad=*/true);
    o.options.mask = o.mask;
  }
  if (cu_seqlens_q.has_value() != cu_seqlens_k.has_value())
    throw InvalidArgument(cu_seqlens_q ? "cu_seqlens_k" : "cu_seqlens_q",
                          "cu_seqlens_q and cu_seqlens_k: expected both or neither");
  if (cu_seqlens_q) {
    o.options.cu_seqlens_q = int32_span(*cu_seqlens_q, "cu_seqlens_q");
    o.options.cu_seqlens_k = int32_span(*cu_seqlens_k, "cu_seqlens_k");
  }
  o.options.dropout_p = dropout_p;
  o.options.dropout_seed = dropout_seed;
  o.options.dropout_offset = dropout_offset;
  return o;
}

#define MHA_OPTION_ARGS                                                                                     \
  nb::arg("layout") = "bshd", nb::arg("scale").none() = nb::none(), nb::arg("causal") = false, \
      nb::arg("window_left") = -1, nb::arg("window_right") = -1, nb::arg("mask").none() = nb::none(),        \
      nb::arg("cu_seqlens_q").none() = nb::none(), nb::arg("cu_seqlens_k").none() = nb::none(),              \
      nb::arg("dropout_p") = 0.0f, nb::arg("dropout_seed") = 0, nb::arg("dropout_offset") = 0

void forward(const InArray& q, const InArray& k, const InArray& v, const OutArray& out,
             const std::optional<OutArray>& lse, const std::string& layout_name, std::optional<float> scale,
             bool causal, std::int64_t window_left, std::int64_t window_right, const std::optional<InArray>& mask,
             const std::optional<InArray>& cu_seqlens_q, const std::optional<InArray>& cu_seqlens_k,
             float dropout_p, std::uint64_t dropout_seed, std::uint64_t dropout_offset) {
  const auto layout = checked_layout(layout_name);
  const Options o = options_of(scale, causal, window_left, window_right, mask, cu_seqlens_q, cu_seqlens_k,
                               dropout_p, dropout_seed, dropout_offset);
  const auto op = [layout](const auto& a, const char* name) { return tensor_of(a, name, kLogical, layout); };
  const Tensor tq = op(q, "q"), tk = op(k, "k"), tv = op(v, "v"), to = op(out, "out");
  std::optional<Tensor> tl;
  if (lse) tl = tensor_of(*lse, "lse", "bhs", lse_axes(layout));
  nb::gil_scoped_release release;
  attention(tq, tk, tv, to, o.options, tl ? &*tl : nullptr);
}

void backward(const InArray& q, const InArray& k, const InArray& v, const InArray& out, const InArray& dout,
              const InArray& lse, const OutArray& dq, const OutArray& dk, const OutArray& dv,
              const std::string& layout_name, std::optional<float> scale, bool causal, std::int64_t window_left,
              std::int64_t window_right, const std::optional<InArray>& mask,
              const std::optional<InArray>& cu_seqlens_q, const std::optional<InArray>& cu_seqlens_k,
              float dropout_p, std::uint64_t dropout_seed, std::uint64_t dropout_offset) {
  const auto layout = checked_layout(layout_name);
  const Options o = options_of(scale, causal, window_left, window_right, mask, cu_seqlens_q, cu_seqlens_k,
                               dropout_p, dropout_seed, dropout_offset);
  const auto op = [layout](const auto& a, const char* name) { return tensor_of(a, name, kLogical, layout); };
  const Tensor tq = op(q, "q"), tk = op(k, "k"), tv = op(v, "v"), to = op(out, "out"), tdo = op(dout, "dout"),
               tl = tensor_of(lse, "lse", "bhs", lse_axes(layout)), tdq = op(dq, "dq"), tdk = op(dk, "dk"),
               tdv = op(dv, "dv");
  nb::gil_scoped_release release;
  attention_backward(tq, tk, tv, to, tdo, tl, tdq, tdk, tdv, o.options);
}

void keep_mask(const OutArray& keep, std::int64_t batch, std::int64_t heads, std::int64_t seqlen_q,
               std::int64_t seqlen_k, float dropout_p, std::uint64_t dropout_seed, std::uint64_t dropout_offset) {
  AttentionOptions o;
  o.dropout_p = dropout_p;
  o.dropout_seed = dropout_seed;
  o.dropout_offset = dropout_offset;
  for (auto [name, n] : {std::pair{"batch", batch}, {"heads", heads}, {"seqlen_q", seqlen_q}, {"seqlen_k", seqlen_k}})
    if (n < 0) throw InvalidArgument(name, fmt::format("{} = {}, expected >= 0", name, n));
  const auto span = uint8_span(keep, "keep", batch * heads * seqlen_q * seqlen_k);
  nb::gil_scoped_release release;
  dropout_keep_mask(o, batch, heads, seqlen_q, seqlen_k, span);
}

}  // namespace

void bind_attention(nb::module_& m) {
  m.def("attention", &forward, nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("out"),
        nb::arg("lse").none() = nb::none(), MHA_OPTION_ARGS,
        "mha::attention on array views: writes out (and lse when given).");
  m.def("attention_backward", &backward, nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("out"),
        nb::arg("dout"), nb::arg("lse"), nb::arg("dq"), nb::arg("dk"), nb::arg("dv"), MHA_OPTION_ARGS,
        "mha::attention_backward on array views: writes dq, dk, dv.");
  m.def("dropout_keep_mask", &keep_mask, nb::arg("keep"), nb::arg("batch"), nb::arg("heads"),
        nb::arg("seqlen_q"), nb::arg("seqlen_k"), nb::kw_only(), nb::arg("dropout_p"), nb::arg("dropout_seed"),
        nb::arg("dropout_offset") = 0,
        "mha::dropout_keep_mask into a contiguous uint8/bool array [batch, heads, seqlen_q, seqlen_k].");
}

}  // namespace mha::py
