// MultiHeadAttention (the BERT-style layer) for Python: built with random weights from a seed or
// loaded from a safetensors checkpoint (Hugging Face BERT names under `prefix`). `_forward` writes
// into an `out` array; mha/layers.py allocates it in the caller's array type.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include "arrays.h"
#include "bindings.h"
#include "mha/layers.h"
#include "mha/safetensors.h"

namespace mha::py {

void bind_layers(nb::module_& m) {
  nb::class_<MultiHeadAttention>(m, "MultiHeadAttention",
                                 "BERT-style multi-head attention: fused QKV projection, flash attention, "
                                 "output projection (weights as nn.Linear: [out, in]).")
      .def(
          "__init__",
          [](MultiHeadAttention* self, std::int64_t hidden, std::int64_t heads, std::int64_t kv_heads,
             std::int64_t head_dim, bool bias, bool causal, const std::string& weight_dtype,
             const std::optional<std::string>& checkpoint, const std::string& prefix, std::uint64_t seed) {
            MultiHeadAttentionConfig config{.hidden = hidden, .heads = heads, .kv_heads = kv_heads,
                                            .head_dim = head_dim, .bias = bias, .causal = causal,
                                            .weight_dtype = parse_dtype(weight_dtype, "weight_dtype")};
            config = config.resolved();
            auto weights = checkpoint ? MultiHeadAttentionWeights::load(SafeTensors::load(*checkpoint), config, prefix)
                                      : MultiHeadAttentionWeights::random(config, seed);
            new (self) MultiHeadAttention(config, std::move(weights));
          },
          nb::kw_only(), nb::arg("hidden"), nb::arg("heads"), nb::arg("kv_heads") = 0, nb::arg("head_dim") = 0,
          nb::arg("bias") = true, nb::arg("causal") = false, nb::arg("weight_dtype") = "f32",
          nb::arg("checkpoint").none() = nb::none(), nb::arg("prefix") = "", nb::arg("seed") = 0)
      .def_prop_ro("hidden", [](const MultiHeadAttention& a) { return a.config().hidden; })
      .def_prop_ro("heads", [](const MultiHeadAttention& a) { return a.config().heads; })
      .def_prop_ro("kv_heads", [](const MultiHeadAttention& a) { return a.config().kv_heads; })
      .def_prop_ro("head_dim", [](const MultiHeadAttention& a) { return a.config().head_dim; })
      .def(
          "_forward",
          [](MultiHeadAttention& a, const InArray& x, const OutArray& out, const std::optional<InArray>& mask,
             bool naive) {
            const Tensor tx = tensor_of(x, "x", "bsh", "bsh"), to = tensor_of(out, "out", "bsh", "bsh");
            std::optional<Tensor> tm;
            if (mask) tm = tensor_of(*mask, "mask", "bhqk", "bhqk", /*pad=*/true);
            nb::gil_scoped_release release;
            if (naive)
              a.forward_naive(tx, to, tm ? &*tm : nullptr);
            else
              a.forward(tx, to, tm ? &*tm : nullptr);
          },
          nb::arg("x"), nb::arg("out"), nb::arg("mask").none() = nb::none(), nb::arg("naive") = false);
}

}  // namespace mha::py
