// The parts of the module mha._mha, one function per concern.
#pragma once
#include <nanobind/nanobind.h>

namespace mha::py {

namespace nb = nanobind;

void bind_errors(nb::module_& m);
void bind_runtime(nb::module_& m);
void bind_attention(nb::module_& m);
void bind_decode(nb::module_& m);
void bind_layers(nb::module_& m);
void bind_models(nb::module_& m);

}  // namespace mha::py
