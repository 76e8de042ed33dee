// f16 / bf16 conversions: exhaustive over the 16-bit values, round-to-nearest-even on the way down.
#include "runtime/dtype_convert.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "check/random.h"

namespace mha::detail {
namespace {

TEST(DtypeConvert, F16RoundTripsEveryValue) {
  for (std::uint32_t h = 0; h < 65536; ++h) {
    const float f = f16_to_f32(std::uint16_t(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(f))));
      continue;
    }
    EXPECT_EQ(f32_to_f16(f), h) << std::hex << h;
  }
}

TEST(DtypeConvert, F16MatchesTheCompilersConversion) {
  // _Float16 conversions in GCC round to nearest even (soft-float or F16C): an independent oracle.
  check::Random rng(5);
  for (int i = 0; i < 200000; ++i) {
    const float f = float(rng.normal()) * std::ldexp(1.0f, int(rng.range(-30, 18)));
    const _Float16 ref = static_cast<_Float16>(f);
    std::uint16_t ref_bits;
    std::memcpy(&ref_bits, &ref, 2);
    ASSERT_EQ(f32_to_f16(f), ref_bits) << f;
    ASSERT_EQ(f16_to_f32(ref_bits), static_cast<float>(ref)) << f;
  }
}

TEST(DtypeConvert, F16EdgeCases) {
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7bff);  // max finite
  EXPECT_EQ(f32_to_f16(65519.0f), 0x7bff);  // rounds down
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);  // ties to even: inf
  EXPECT_EQ(f32_to_f16(1e9f), 0x7c00);
  EXPECT_EQ(f32_to_f16(-INFINITY), 0xfc00);
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -24)), 0x0001);  // smallest subnormal
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -25)), 0x0000);  // tie to even: zero
  EXPECT_EQ(f32_to_f16(-0.0f), 0x8000);
  EXPECT_EQ(f32_to_f16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);      // tie: to even (1.0)
  EXPECT_EQ(f32_to_f16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);  // tie: to even (up)
}

TEST(DtypeConvert, Bf16RoundsToNearestEven) {
  for (std::uint32_t h = 0; h < 65536; ++h) {
    const float f = bf16_to_f32(std::uint16_t(h));
    if (std::isnan(f)) continue;
    EXPECT_EQ(f32_to_bf16(f), h);
  }
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(f32_to_bf16(bits_f32(0x3f808000u)), 0x3f80);  // tie: even stays
  EXPECT_EQ(f32_to_bf16(bits_f32(0x3f818000u)), 0x3f82);  // tie: odd rounds up
  EXPECT_EQ(f32_to_bf16(bits_f32(0x3f808001u)), 0x3f81);  // above the tie
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
  EXPECT_EQ(f32_to_bf16(bits_f32(0x7f7fffffu)), 0x7f80);  // max float rounds to inf
}

TEST(DtypeConvert, RoundToIsIdempotent) {
  check::Random rng(9);
  for (int i = 0; i < 10000; ++i) {
    const float f = float(rng.normal()) * 100;
    for (DType t : {DType::f32, DType::f16, DType::bf16})
      EXPECT_EQ(round_to(t, round_to(t, f)), round_to(t, f));
  }
}

}  // namespace
}  // namespace mha::detail
