// Arrays from Python as mha::Tensor views of the same memory: NumPy arrays through the buffer
// protocol, anything with __dlpack__ (PyTorch tensors included) through DLPack. Nothing is copied.
#pragma once
#include <cstdint>
#include <span>
#include <string_view>

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include "mha/tensor.h"

namespace mha::py {

namespace nb = nanobind;

using InArray = nb::ndarray<nb::ro>;  // read-only inputs are fine
using OutArray = nb::ndarray<>;       // outputs must be writable

// A view of `a` in mha's logical order. `axes` names the array's axes with the letters of the
// logical order `logical` (e.g. logical "bshd", axes "bhsd" for PyTorch's layout); a logical axis
// missing from `axes` has extent 1. An array of lower rank than `axes` is padded with leading
// extent-1 axes when `pad` is set (broadcast masks). dtypes: float32, float16, bfloat16 (uint16
// arrays are read as bfloat16 bits: how the Python layer passes ml_dtypes.bfloat16 arrays).
// InvalidArgument naming `name` for a non-CPU array, another dtype or a wrong rank.
Tensor tensor_of(const InArray& a, std::string_view name, std::string_view logical, std::string_view axes,
                 bool pad = false);
// The same for an output (writable; mha refuses one whose elements overlap).
Tensor tensor_of(const OutArray& a, std::string_view name, std::string_view logical, std::string_view axes);

// A 1-D contiguous int32 array (cu_seqlens, sequence lengths, block tables' rows).
std::span<const std::int32_t> int32_span(const InArray& a, std::string_view name);

// A contiguous uint8 array of exactly `count` elements, written by mha.
std::span<std::uint8_t> uint8_span(const OutArray& a, std::string_view name, std::int64_t count);

}  // namespace mha::py
