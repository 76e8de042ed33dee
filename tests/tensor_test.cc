#include "mha/tensor.h"

#include <gtest/gtest.h>

#include "mha/errors.h"

namespace mha {
namespace {

TEST(Tensor, BshdAndBhsdAreStrides) {
  const Tensor a = Tensor::bshd(nullptr, DType::f16, 2, 10, 4, 8);
  EXPECT_EQ(a.rank, 4);
  EXPECT_EQ(a.strides, (std::array<std::int64_t, 4>{320, 32, 8, 1}));
  const Tensor b = Tensor::bhsd(nullptr, DType::f16, 2, 10, 4, 8);
  EXPECT_EQ(b.shape, (std::array<std::int64_t, 4>{2, 10, 4, 8}));
  EXPECT_EQ(b.strides, (std::array<std::int64_t, 4>{320, 8, 80, 1}));
  EXPECT_EQ(b.numel(), 640);
  EXPECT_EQ(b.describe(), "[2, 10, 4, 8] f16 strides [320, 8, 80, 1]");
}

TEST(Tensor, Contiguous) {
  const Tensor t = Tensor::contiguous(nullptr, DType::f32, {3, 5});
  EXPECT_EQ(t.rank, 2);
  EXPECT_EQ(t.strides[0], 5);
  EXPECT_EQ(t.strides[1], 1);
  EXPECT_THROW(Tensor::contiguous(nullptr, DType::f32, {1, 2, 3, 4, 5}), InvalidArgument);
}

TEST(Tensor, Dtypes) {
  EXPECT_EQ(parse_dtype("bf16"), DType::bf16);
  EXPECT_EQ(parse_dtype("float16"), DType::f16);
  EXPECT_EQ(to_string(DType::f32), "f32");
  EXPECT_EQ(size_of(DType::bf16), 2u);
  try {
    parse_dtype("f64", "--dtype");
    FAIL();
  } catch (const InvalidArgument& e) {
    EXPECT_EQ(e.argument(), "--dtype");
    EXPECT_NE(std::string(e.what()).find("'f64', expected f32, f16 or bf16"), std::string::npos);
  }
}

}  // namespace
}  // namespace mha
