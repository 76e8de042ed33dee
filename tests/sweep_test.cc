// The accuracy sweep: every case of check::sweep_cases() (head dims 1..256, odd and tile-edge
// lengths, Nq != Nk, Nq = 1, GQA/MQA, masks, causal, windows, varlen, layouts, every dtype) on
// every ISA this CPU has, against the float64 oracle with FlashAttention's bar.
#include <gtest/gtest.h>

#include "check/case.h"

namespace mha::check {

void PrintTo(const Case& c, std::ostream* os) { *os << c.shape_string() << " " << c.options_string(); }

namespace {

class SweepTest : public ::testing::TestWithParam<Case> {};

TEST_P(SweepTest, MeetsTheBarOnEveryIsa) {
  const Case& c = GetParam();
  const CaseData data(c);
  const Baseline base = compute_baseline(c, data);
  for (Isa isa : supported_isas()) {
    const Accuracy a = evaluate(c, data, base, isa);
    EXPECT_TRUE(a.pass) << c.shape_string() << " " << c.options_string() << " isa=" << to_string(isa)
                        << ": max err " << a.max_err << " vs naive " << a.naive_max_err << " (floor "
                        << a.floor << "), lse err " << a.lse_err << " vs naive " << a.naive_lse_err
                        << ", finite " << a.finite;
    EXPECT_GT(a.pcc, c.dtype == DType::f32 ? 0.999999 : 0.999) << c.shape_string();
  }
}

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  return std::to_string(info.index) + "_" + std::string(to_string(info.param.dtype));
}

INSTANTIATE_TEST_SUITE_P(Fixed, SweepTest, ::testing::ValuesIn(sweep_cases()), case_name);
INSTANTIATE_TEST_SUITE_P(Random, SweepTest, ::testing::ValuesIn(random_cases(120, 2026)), case_name);

// The bar must be able to fail: a kernel error twice the naive error plus the floor is refused.
TEST(SweepBar, RejectsErrorsAboveTwiceNaive) {
  Accuracy a;
  a.naive_max_err = 1e-6;
  a.floor = 1e-7;
  a.max_err = 2.2e-6;
  EXPECT_FALSE(meets_bar(a));
  a.max_err = 2.0e-6;
  EXPECT_TRUE(meets_bar(a));
  a.finite = false;
  EXPECT_FALSE(meets_bar(a));
}

// `mha check --seed s` sweeps for nearby seeds are different cases: no case of one appears at the
// same index of the other (each case's own seed is a full 64-bit draw).
TEST(RandomCases, NearbySeedsGiveUnrelatedSweeps) {
  for (std::uint64_t other : {3u, 11u, 1002u}) {
    const std::vector<Case> a = random_cases(200, 2), b = random_cases(200, other);
    int same = 0;
    for (std::size_t i = 0; i < a.size(); ++i) same += a[i].seed == b[i].seed;
    EXPECT_EQ(same, 0) << "seeds 2 and " << other;
  }
}

}  // namespace
}  // namespace mha::check
