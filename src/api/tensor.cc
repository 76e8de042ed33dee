#include "mha/tensor.h"

#include <fmt/format.h>

#include "mha/errors.h"

namespace mha {

std::string_view to_string(DType t) {
  switch (t) {
    case DType::f32: return "f32";
    case DType::f16: return "f16";
    case DType::bf16: return "bf16";
  }
  return "invalid";
}

DType parse_dtype(std::string_view name, std::string_view argument) {
  if (name == "f32" || name == "float32") return DType::f32;
  if (name == "f16" || name == "float16") return DType::f16;
  if (name == "bf16" || name == "bfloat16") return DType::bf16;
  throw InvalidArgument(std::string(argument),
                        fmt::format("{} = '{}', expected f32, f16 or bf16", argument, name));
}

namespace {
[[noreturn]] void overflow(const Tensor& t) {
  throw InvalidArgument("shape", fmt::format("Tensor: shape {} has more elements than an int64 counts, "
                                             "expected an addressable size",
                                             t.describe()));
}
}  // namespace

Tensor Tensor::contiguous(void* data, DType dtype, std::initializer_list<std::int64_t> shape) {
  if (shape.size() < 1 || shape.size() > std::size_t(kMaxRank)) {
    throw InvalidArgument(
        "shape", fmt::format("Tensor::contiguous: rank {} , expected 1 to {}", shape.size(), kMaxRank));
  }
  Tensor t;
  t.data = data;
  t.dtype = dtype;
  t.rank = int(shape.size());
  int i = 0;
  for (std::int64_t s : shape) t.shape[std::size_t(i++)] = s;
  std::int64_t stride = 1;
  for (int d = t.rank - 1; d >= 0; --d) {
    t.strides[std::size_t(d)] = stride;
    if (__builtin_mul_overflow(stride, t.shape[std::size_t(d)], &stride)) overflow(t);  // last: numel
  }
  return t;
}

Tensor Tensor::bshd(void* data, DType dtype, std::int64_t b, std::int64_t s, std::int64_t h, std::int64_t d) {
  return contiguous(data, dtype, {b, s, h, d});
}

Tensor Tensor::bhsd(void* data, DType dtype, std::int64_t b, std::int64_t s, std::int64_t h, std::int64_t d) {
  Tensor t;
  t.data = data;
  t.dtype = dtype;
  t.rank = 4;
  t.shape = {b, s, h, d};
  std::int64_t sd = 0, hsd = 0, n = 0;
  if (__builtin_mul_overflow(s, d, &sd) || __builtin_mul_overflow(h, sd, &hsd) ||
      __builtin_mul_overflow(b, hsd, &n))
    overflow(t);
  t.strides = {hsd, d, sd, 1};
  return t;
}

std::int64_t Tensor::numel() const {
  std::int64_t n = 1;
  for (int i = 0; i < rank; ++i)
    if (__builtin_mul_overflow(n, shape[std::size_t(i)], &n)) overflow(*this);
  return n;
}

std::string Tensor::describe() const {
  std::string s = "[";
  for (int i = 0; i < rank; ++i) s += fmt::format("{}{}", i ? ", " : "", shape[std::size_t(i)]);
  s += fmt::format("] {} strides [", to_string(dtype));
  for (int i = 0; i < rank; ++i) s += fmt::format("{}{}", i ? ", " : "", strides[std::size_t(i)]);
  return s + "]";
}

}  // namespace mha
