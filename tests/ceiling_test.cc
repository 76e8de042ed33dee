// The ceiling probes: exact flop counts, a measurable rate on every ISA, and the bf16 requirement.
// (No timing is asserted: only that a rate is measured.)
#include "kernels/ceiling.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "mha/errors.h"
#include "mha/runtime.h"
#include "runtime/aligned_buffer.h"

namespace mha::detail {
namespace {

TEST(Ceiling, LoopsCountTheirFlops) {
  // 24 (AVX-512) or 12 accumulators × lanes × 2 flops per multiply-add, per iteration.
  EXPECT_DOUBLE_EQ(generic::peak_fma_loop(1000), 1000.0 * 12 * 4 * 2);
  if (cpu_supports(Isa::avx2)) {
    EXPECT_DOUBLE_EQ(avx2::peak_fma_loop(1000), 1000.0 * 12 * 8 * 2);
  }
  if (cpu_supports(Isa::avx512)) {
    EXPECT_DOUBLE_EQ(avx512::peak_fma_loop(1000), 1000.0 * 24 * 16 * 2);
  }
  if (cpu_supports(Isa::avx512bf16)) {
    EXPECT_DOUBLE_EQ(avx512bf16::peak_dot_loop(1000), 1000.0 * 24 * 16 * 4);
  }
}

TEST(Ceiling, MeasuresARateOnEveryIsa) {
  for (Isa isa : supported_isas()) {
    const double g = measure_ceiling_gflops(isa, PeakKind::fp32_fma, 0.01);
    EXPECT_TRUE(std::isfinite(g) && g > 0) << to_string(isa) << ": " << g;
  }
  if (cpu_supports(Isa::avx512bf16)) {
    const double g = measure_ceiling_gflops(Isa::avx512bf16, PeakKind::bf16_dot, 0.01);
    EXPECT_TRUE(std::isfinite(g) && g > 0) << g;
  }
}

TEST(Ceiling, ReadsTheMemoryItIsGiven) {
  AlignedBuffer buffer(std::size_t(1) << 20);  // 4 MiB, two regions of 2
  std::fill(buffer.data(), buffer.data() + buffer.size(), 1.f);
  const std::vector<ReadRegion> regions = {{buffer.data(), std::size_t(2) << 20},
                                           {buffer.data() + (std::size_t(1) << 19), std::size_t(2) << 20}};
  for (Isa isa : supported_isas()) {
    const double g = measure_read_bandwidth_gbps(isa, regions, 1);
    EXPECT_TRUE(std::isfinite(g) && g > 0) << to_string(isa) << ": " << g;
  }
  // Shares under 512 floats are not read, and count no bytes.
  EXPECT_EQ(measure_read_bandwidth_gbps(Isa::generic, {{buffer.data(), 64}}, 1), 0.0);
}

TEST(Ceiling, Bf16DotNeedsItsIsa) {
  EXPECT_THROW(measure_ceiling_gflops(Isa::generic, PeakKind::bf16_dot, 0.01), Unsupported);
}

}  // namespace
}  // namespace mha::detail
