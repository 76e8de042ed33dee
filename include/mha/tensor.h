// Tensor views: a data pointer, a dtype, a shape and strides in elements. mha never owns tensor data.
//
// Attention inputs are always addressed in the logical order [batch, seq, heads, head_dim]; the
// memory layout is only the strides, so FlashAttention's BSHD and PyTorch's BHSD are both views:
//   Tensor::bshd(p, dt, B, S, H, D)  memory [B][S][H][D]
//   Tensor::bhsd(p, dt, B, S, H, D)  memory [B][H][S][D], same logical order
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>

namespace mha {

enum class DType : std::uint8_t { f32, f16, bf16 };

constexpr std::size_t size_of(DType t) { return t == DType::f32 ? 4 : 2; }
std::string_view to_string(DType t);
// Parses "f32" | "f16" | "bf16" (also "float32", "float16", "bfloat16"); throws InvalidArgument.
DType parse_dtype(std::string_view name, std::string_view argument = "dtype");

struct Tensor {
  static constexpr int kMaxRank = 4;

  void* data = nullptr;
  DType dtype = DType::f32;
  int rank = 0;
  std::array<std::int64_t, kMaxRank> shape{};
  std::array<std::int64_t, kMaxRank> strides{};  // in elements, not bytes

  // Row-major (C-contiguous) view of the given shape (rank 1 to 4). These factories and numel()
  // throw InvalidArgument("shape") when the element count overflows int64.
  static Tensor contiguous(void* data, DType dtype, std::initializer_list<std::int64_t> shape);
  static Tensor bshd(void* data, DType dtype, std::int64_t b, std::int64_t s, std::int64_t h, std::int64_t d);
  static Tensor bhsd(void* data, DType dtype, std::int64_t b, std::int64_t s, std::int64_t h, std::int64_t d);

  std::int64_t numel() const;
  // "[2, 128, 8, 64] f16 strides [..]" for error messages and logs.
  std::string describe() const;
};

}  // namespace mha
