// BertEncoder for Python: loaded from a model directory (config.json + model.safetensors).
// `_embed` and `_forward` write into arrays that mha/encoder.py allocates; ids arrive packed with
// their cu_seqlens, as the tokenizer's output is concatenated.
#include <cstdint>
#include <optional>
#include <string>

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include "arrays.h"
#include "bindings.h"
#include "mha/bert.h"

namespace mha::py {

namespace {

std::span<const std::int32_t> optional_int32(const std::optional<InArray>& a, std::string_view name) {
  return a ? int32_span(*a, name) : std::span<const std::int32_t>{};
}

}  // namespace

void bind_models(nb::module_& m) {
  nb::class_<BertEncoder>(m, "BertEncoder",
                          "A BERT encoder over packed (varlen) batches, loaded from a Hugging Face model "
                          "directory (config.json + model.safetensors).")
      .def("__init__", [](BertEncoder* self, const std::string& model_dir) { new (self) BertEncoder(BertEncoder::load(model_dir)); },
           nb::arg("model_dir"))
      .def_prop_ro("hidden", [](const BertEncoder& e) { return e.config().hidden; })
      .def_prop_ro("layers", [](const BertEncoder& e) { return e.config().layers; })
      .def_prop_ro("heads", [](const BertEncoder& e) { return e.config().heads; })
      .def_prop_ro("vocab_size", [](const BertEncoder& e) { return e.config().vocab_size; })
      .def_prop_ro("max_positions", [](const BertEncoder& e) { return e.config().max_positions; })
      .def(
          "_embed",
          [](BertEncoder& e, const InArray& ids, const InArray& cu_seqlens, const OutArray& out,
             const std::optional<InArray>& token_types, bool normalize) {
            const auto i = int32_span(ids, "ids"), cu = int32_span(cu_seqlens, "cu_seqlens");
            const auto tt = optional_int32(token_types, "token_types");
            const Tensor to = tensor_of(out, "out", "bh", "bh");
            nb::gil_scoped_release release;
            e.embed(i, cu, to, tt, normalize);
          },
          nb::arg("ids"), nb::arg("cu_seqlens"), nb::arg("out"), nb::arg("token_types").none() = nb::none(),
          nb::arg("normalize") = true)
      .def(
          "_forward",
          [](BertEncoder& e, const InArray& ids, const InArray& cu_seqlens, const OutArray& hidden,
             const std::optional<InArray>& token_types) {
            const auto i = int32_span(ids, "ids"), cu = int32_span(cu_seqlens, "cu_seqlens");
            const auto tt = optional_int32(token_types, "token_types");
            const Tensor th = tensor_of(hidden, "hidden", "th", "th");
            nb::gil_scoped_release release;
            e.forward(i, cu, th, tt);
          },
          nb::arg("ids"), nb::arg("cu_seqlens"), nb::arg("hidden"), nb::arg("token_types").none() = nb::none());
}

}  // namespace mha::py
