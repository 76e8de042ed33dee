// Scalar conversions between f32 and the 16-bit float types, rounding to nearest even.
// Every function here has internal linkage (static): the per-ISA kernel translation units include
// this header with different -m flags, and an inline function with external linkage could let the
// linker keep an AVX-512 copy for the whole program.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "mha/tensor.h"

namespace mha::detail {

static inline std::uint32_t f32_bits(float f) { return __builtin_bit_cast(std::uint32_t, f); }
static inline float bits_f32(std::uint32_t u) { return __builtin_bit_cast(float, u); }

static inline float bf16_to_f32(std::uint16_t h) { return bits_f32(std::uint32_t(h) << 16); }

static inline std::uint16_t f32_to_bf16(float f) {
  std::uint32_t x = f32_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return std::uint16_t((x >> 16) | 0x40);  // quiet NaN
  x += 0x7fffu + ((x >> 16) & 1u);
  return std::uint16_t(x >> 16);
}

static inline float f16_to_f32(std::uint16_t h) {
  const std::uint32_t sign = std::uint32_t(h & 0x8000u) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1fu;
  const std::uint32_t mant = h & 0x3ffu;
  if (exp == 0) {  // zero or subnormal: mant * 2^-24 is exact in f32
    const float mag = float(mant) * 5.9604644775390625e-8f;
    return bits_f32(f32_bits(mag) | sign);
  }
  if (exp == 31) return bits_f32(sign | 0x7f800000u | (mant << 13));
  return bits_f32(sign | ((exp + 112u) << 23) | (mant << 13));
}

static inline std::uint16_t f32_to_f16(float f) {
  std::uint32_t x = f32_bits(f);
  const std::uint32_t sign = (x >> 16) & 0x8000u;
  x &= 0x7fffffffu;
  std::uint32_t o;
  if (x >= 0x47800000u) {  // >= 65536 (rounds to inf), inf or NaN
    o = x > 0x7f800000u ? 0x7e00u : 0x7c00u;
  } else if (x < 0x38800000u) {  // below 2^-14: subnormal or zero. Adding 0.5 lets the FPU round.
    const float magic = bits_f32(126u << 23);  // 0.5
    o = f32_bits(bits_f32(x) + magic) - (126u << 23);
  } else {  // normal: rebias, then round to nearest even on the 13 dropped bits
    const std::uint32_t odd = (x >> 13) & 1u;
    x += (std::uint32_t(15 - 127) << 23) + 0xfffu + odd;
    o = x >> 13;
  }
  return std::uint16_t(o | sign);
}

static inline std::size_t elem_size(DType t) { return t == DType::f32 ? 4 : 2; }

// Rounds an f32 value to the precision of `t` (identity for f32).
static inline float round_to(DType t, float x) {
  switch (t) {
    case DType::f16: return f16_to_f32(f32_to_f16(x));
    case DType::bf16: return bf16_to_f32(f32_to_bf16(x));
    default: return x;
  }
}

// Element `index` of a buffer of dtype `t`, as f32.
static inline float load_f32(const void* base, DType t, std::int64_t index) {
  switch (t) {
    case DType::f16: return f16_to_f32(static_cast<const std::uint16_t*>(base)[index]);
    case DType::bf16: return bf16_to_f32(static_cast<const std::uint16_t*>(base)[index]);
    default: return static_cast<const float*>(base)[index];
  }
}

// n elements from `index`, `stride` apart, as f32 (rows of f32 and unit stride copied whole).
static inline void load_row_f32(const void* base, DType t, std::int64_t index, std::int64_t stride,
                                std::int64_t n, float* out) {
  if (t == DType::f32 && stride == 1) {
    std::memcpy(out, static_cast<const float*>(base) + index, std::size_t(n) * sizeof(float));
    return;
  }
  for (std::int64_t e = 0; e < n; ++e) out[e] = load_f32(base, t, index + e * stride);
}

// The 4-D view at `base` (shape and element strides) as contiguous f32 rows in `out`.
static inline void load_view_f32(const void* base, DType t, const std::int64_t* shape,
                                 const std::int64_t* stride, float* out) {
  for (std::int64_t a = 0; a < shape[0]; ++a)
    for (std::int64_t b = 0; b < shape[1]; ++b)
      for (std::int64_t c = 0; c < shape[2]; ++c, out += shape[3])
        load_row_f32(base, t, a * stride[0] + b * stride[1] + c * stride[2], stride[3], shape[3], out);
}

static inline void store_f32(void* base, DType t, std::int64_t index, float x) {
  switch (t) {
    case DType::f16: static_cast<std::uint16_t*>(base)[index] = f32_to_f16(x); break;
    case DType::bf16: static_cast<std::uint16_t*>(base)[index] = f32_to_bf16(x); break;
    default: static_cast<float*>(base)[index] = x; break;
  }
}

}  // namespace mha::detail
