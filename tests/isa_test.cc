#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>

#include "mha/errors.h"
#include "mha/runtime.h"

namespace mha {
namespace {

TEST(Isa, GenericIsAlwaysSupportedAndFirst) {
  const auto isas = supported_isas();
  ASSERT_FALSE(isas.empty());
  EXPECT_EQ(isas.front(), Isa::generic);
}

TEST(Isa, ParseAndName) {
  for (Isa isa : {Isa::generic, Isa::avx2, Isa::avx512, Isa::avx512bf16})
    EXPECT_EQ(parse_isa(to_string(isa)), isa);
  EXPECT_THROW(parse_isa("sse9"), InvalidArgument);
}

TEST(Isa, SetAndRestore) {
  const Isa before = active_isa();
  for (Isa isa : supported_isas()) {
    set_isa(isa);
    EXPECT_EQ(active_isa(), isa);
  }
  set_isa(before);
}

TEST(Isa, AnIsaTheCpuLacksIsRefused) {
  const Isa before = active_isa();
  for (Isa isa : {Isa::generic, Isa::avx2, Isa::avx512, Isa::avx512bf16}) {
    if (cpu_supports(isa)) {
      EXPECT_NO_THROW(set_isa(isa));
      continue;
    }
    try {
      set_isa(isa);
      ADD_FAILURE() << to_string(isa) << " accepted on a CPU without it";
    } catch (const Unsupported& e) {
      EXPECT_EQ(e.argument(), "isa");
      EXPECT_NE(std::string(e.what()).find("does not support"), std::string::npos);
    }
  }
  set_isa(before);
}

TEST(Isa, EveryIsaTheCpuHasIsBuilt) {
  for (Isa isa : {Isa::generic, Isa::avx2, Isa::avx512, Isa::avx512bf16}) {
    const auto s = supported_isas();
    EXPECT_EQ(cpu_supports(isa), std::find(s.begin(), s.end(), isa) != s.end()) << to_string(isa);
  }
}

TEST(Isa, EnvironmentOverride) {
  setenv("MHA_ISA", "generic", 1);
  EXPECT_EQ(default_isa(), Isa::generic);
  setenv("MHA_ISA", "bogus", 1);
  EXPECT_THROW(default_isa(), InvalidArgument);
  unsetenv("MHA_ISA");
  EXPECT_EQ(default_isa(), supported_isas().back());
}

}  // namespace
}  // namespace mha
