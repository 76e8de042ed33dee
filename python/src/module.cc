// mha._mha: thin bindings over mha's public C++ API. Arrays arrive as views (arrays.h) and outputs
// are allocated by the Python layer in the caller's array type, so nothing is copied here; every
// compute call releases the GIL.
#include <cstdint>
#include <string>
#include <vector>

#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "arrays.h"
#include "bindings.h"
#include "mha/runtime.h"
#include "mha/version.h"

namespace mha::py {

void bind_runtime(nb::module_& m) {
  m.def("set_num_threads", &set_num_threads, nb::arg("n"),
        "Threads used by every call (default: all cores). Results do not depend on it.");
  m.def("num_threads", &num_threads);
  m.def(
      "set_isa", [](const std::string& name) { set_isa(parse_isa(name)); }, nb::arg("isa"),
      "Forces a kernel family: 'generic', 'avx2', 'avx512' or 'avx512bf16' (NotImplementedError if "
      "this CPU lacks it).");
  m.def("active_isa", [] { return std::string(to_string(active_isa())); });
  // The address mha reads an array at: the tests compare it with the array's own pointer to
  // prove that arrays are viewed, not copied.
  m.def("_data_pointer", [](const InArray& a) { return reinterpret_cast<std::uintptr_t>(a.data()); });
  m.def("supported_isas", [] {
    std::vector<std::string> names;
    for (Isa isa : supported_isas()) names.emplace_back(to_string(isa));
    return names;
  });
}

}  // namespace mha::py

NB_MODULE(_mha, m) {
  m.attr("__version__") = mha::kVersion;
  mha::py::bind_errors(m);
  mha::py::bind_runtime(m);
  mha::py::bind_attention(m);
  mha::py::bind_decode(m);
  mha::py::bind_layers(m);
  mha::py::bind_models(m);
}
