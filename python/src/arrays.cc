#include "arrays.h"

#include <fmt/format.h>

#include "mha/errors.h"

namespace mha::py {

namespace {

// A DLPack dtype as NumPy names it (int32, float64, complex64, bool), for messages.
std::string dlpack_name(const nb::dlpack::dtype& t) {
  using Code = nb::dlpack::dtype_code;
  const char* kind = t.code == std::uint8_t(Code::Int)       ? "int"
                     : t.code == std::uint8_t(Code::UInt)    ? "uint"
                     : t.code == std::uint8_t(Code::Float)   ? "float"
                     : t.code == std::uint8_t(Code::Bfloat)  ? "bfloat"
                     : t.code == std::uint8_t(Code::Complex) ? "complex"
                     : t.code == std::uint8_t(Code::Bool)    ? "bool"
                                                             : nullptr;
  if (kind == nullptr) return fmt::format("with DLPack code {} and {} bits", int(t.code), int(t.bits));
  if (t.code == std::uint8_t(Code::Bool)) return "bool";
  return fmt::format("{}{}{}", kind, int(t.bits), t.lanes == 1 ? "" : fmt::format("x{}", int(t.lanes)));
}

DType dtype_of(const nb::dlpack::dtype& t, std::string_view name) {
  using Code = nb::dlpack::dtype_code;
  if (t.lanes == 1 && t.code == std::uint8_t(Code::Float) && t.bits == 32) return DType::f32;
  if (t.lanes == 1 && t.code == std::uint8_t(Code::Float) && t.bits == 16) return DType::f16;
  if (t.lanes == 1 && t.code == std::uint8_t(Code::Bfloat) && t.bits == 16) return DType::bf16;
  if (t.lanes == 1 && t.code == std::uint8_t(Code::UInt) && t.bits == 16) return DType::bf16;
  throw InvalidArgument(std::string(name), fmt::format("{}: dtype {}, expected float32, float16 or bfloat16",
                                                       name, dlpack_name(t)));
}

void require_cpu(int device_type, std::string_view name) {
  if (device_type != nb::device::cpu::value)
    throw InvalidArgument(std::string(name),
                          fmt::format("{}: an array on device type {}, expected a CPU array", name, device_type));
}

template <class Array>
Tensor view_of(const Array& a, std::string_view name, std::string_view logical, std::string_view axes, bool pad) {
  require_cpu(a.device_type(), name);
  const auto rank = std::int64_t(a.ndim());
  const auto want = std::int64_t(axes.size());
  if (rank > want || (rank < want && !pad))
    throw InvalidArgument(std::string(name), fmt::format("{}: {} dimensions, expected {}{} ({})", name, rank,
                                                         pad ? "at most " : "", want, axes));
  Tensor t;
  t.data = const_cast<void*>(a.data());  // mha never writes an input
  t.dtype = dtype_of(a.dtype(), name);
  t.rank = int(logical.size());
  const std::int64_t lead = want - rank;  // padded leading axes
  for (std::size_t l = 0; l < logical.size(); ++l) {
    const auto at = axes.find(logical[l]);
    const auto axis = at == std::string_view::npos ? -1 : std::int64_t(at) - lead;
    t.shape[l] = axis < 0 ? 1 : std::int64_t(a.shape(std::size_t(axis)));
    t.strides[l] = axis < 0 ? 0 : std::int64_t(a.stride(std::size_t(axis)));
  }
  return t;
}

}  // namespace

Tensor tensor_of(const InArray& a, std::string_view name, std::string_view logical, std::string_view axes,
                 bool pad) {
  return view_of(a, name, logical, axes, pad);
}

Tensor tensor_of(const OutArray& a, std::string_view name, std::string_view logical, std::string_view axes) {
  return view_of(a, name, logical, axes, false);
}

std::span<const std::int32_t> int32_span(const InArray& a, std::string_view name) {
  require_cpu(a.device_type(), name);
  if (a.dtype() != nb::dtype<std::int32_t>() || a.ndim() != 1 || (a.shape(0) > 1 && a.stride(0) != 1))
    throw InvalidArgument(std::string(name), fmt::format("{}: expected a contiguous 1-D int32 array", name));
  return {static_cast<const std::int32_t*>(a.data()), a.shape(0)};
}

std::span<std::uint8_t> uint8_span(const OutArray& a, std::string_view name, std::int64_t count) {
  require_cpu(a.device_type(), name);
  bool contiguous = true;
  for (std::size_t i = 0, expect = 1; i < a.ndim(); ++i) {
    const auto axis = a.ndim() - 1 - i;
    if (a.shape(axis) > 1 && a.stride(axis) != std::int64_t(expect)) contiguous = false;
    expect *= a.shape(axis);
  }
  const bool byte = a.dtype() == nb::dtype<std::uint8_t>() || a.dtype() == nb::dtype<bool>();
  if (!byte || !contiguous || std::int64_t(a.size()) != count)
    throw InvalidArgument(std::string(name),
                          fmt::format("{}: expected a contiguous uint8 or bool array of {} elements", name, count));
  return {static_cast<std::uint8_t*>(a.data()), a.size()};
}

}  // namespace mha::py
