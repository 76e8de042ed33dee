#include <gtest/gtest.h>

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
  for (Isa isa : {Isa::generic, Isa::avx2, Isa::avx512, Isa::avx512bf16}) EXPECT_EQ(parse_isa(to_string(isa)), isa);
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

TEST(Isa, AnIsaWithoutKernelsIsRefused) {
  // avx512bf16 has no kernels of its own in this build.
  try {
    set_isa(Isa::avx512bf16);
    FAIL();
  } catch (const Unsupported& e) {
    EXPECT_EQ(e.argument(), "isa");
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
