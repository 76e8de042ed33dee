// safetensors: round trips in every dtype, layer weights through a file, and each bad-file error.
#include "mha/safetensors.h"

#include <gtest/gtest.h>

#include <cstring>

#include "check/random.h"
#include "mha/errors.h"
#include "mha/layers.h"
#include "test_files.h"

namespace mha {
namespace {

using testing::TempDir;
using testing::write_bytes;

std::string with_header(const std::string& json, const std::string& data) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[std::size_t(i)] = char((std::uint64_t(json.size()) >> (8 * i)) & 0xff);
  return out + json + data;
}

TEST(SafeTensors, RoundTripsEveryDtypeAndMetadata) {
  TempDir dir;
  const std::vector<float> a = {1.5f, -2.25f, 3.f, 0.f, 7.f, -0.5f};
  const std::vector<std::uint16_t> h = {0x3c00, 0xc000, 0x7bff};  // f16 1, -2, 65504
  const std::vector<std::uint16_t> b = {0x3f80, 0xc040};          // bf16 1, -3
  const SafeTensorEntry entries[] = {{"a", DType::f32, {2, 3}, a.data()},
                                     {"h", DType::f16, {3}, h.data()},
                                     {"layer.b", DType::bf16, {1, 2}, b.data()}};
  save_safetensors(dir.file("t.safetensors"), entries, {{"format", "pt"}});
  const SafeTensors f = SafeTensors::load(dir.file("t.safetensors"));
  EXPECT_EQ(f.names(), (std::vector<std::string>{"a", "h", "layer.b"}));
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.info("h").dtype, "F16");
  const std::int64_t sa[] = {2, 3}, sh[] = {3}, sb[] = {1, 2};
  EXPECT_EQ(f.read_f32("a", sa), a);
  EXPECT_EQ(f.read_f32("h", sh), (std::vector<float>{1.f, -2.f, 65504.f}));
  EXPECT_EQ(f.read_f32("layer.b", sb), (std::vector<float>{1.f, -3.f}));
}

TEST(SafeTensors, LayerWeightsRoundTripThroughAFile) {
  TempDir dir;
  const MultiHeadAttentionConfig c{.hidden = 32, .heads = 4, .kv_heads = 2};
  const MultiHeadAttentionWeights w = MultiHeadAttentionWeights::random(c, 3);
  const auto entries = w.entries(c, "bert.encoder.layer.0.");
  save_safetensors(dir.file("w.safetensors"), entries);
  const SafeTensors f = SafeTensors::load(dir.file("w.safetensors"));
  EXPECT_TRUE(f.contains("bert.encoder.layer.0.attention.self.query.weight"));
  const MultiHeadAttentionWeights back = MultiHeadAttentionWeights::load(f, c, "bert.encoder.layer.0.");
  EXPECT_EQ(back.w_query, w.w_query);
  EXPECT_EQ(back.b_value, w.b_value);
  EXPECT_EQ(back.w_out, w.w_out);

  const SelfAttentionWeights s = SelfAttentionWeights::random(12, 5, 4);
  save_safetensors(dir.file("s.safetensors"), s.entries());
  const SelfAttentionWeights sb =
      SelfAttentionWeights::load(SafeTensors::load(dir.file("s.safetensors")), 12, 5);
  EXPECT_EQ(sb.w_key, s.w_key);
  // The same file read with the wrong layer size names the tensor.
  try {
    SelfAttentionWeights::load(SafeTensors::load(dir.file("s.safetensors")), 5, 12);
    ADD_FAILURE();
  } catch (const InvalidArgument& e) {
    EXPECT_EQ(e.argument(), "W_query.weight");
    EXPECT_NE(std::string(e.what()).find("shape [5, 12], expected [12, 5]"), std::string::npos) << e.what();
  }
}

TEST(SafeTensors, MissingNameAndUnsupportedDtype) {
  TempDir dir;
  write_bytes(
      dir.file("i.safetensors"),
      with_header(R"({"ids":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}})", std::string(8, '\1')));
  const SafeTensors f = SafeTensors::load(dir.file("i.safetensors"));
  const std::int64_t s1[] = {1};
  EXPECT_THROW(f.read_f32("ids", s1), Unsupported);
  try {
    f.read_f32("nope", s1);
    ADD_FAILURE();
  } catch (const InvalidArgument& e) {
    EXPECT_EQ(e.argument(), "nope");
  }
}

TEST(SafeTensors, EachBadFileIsAnIoErrorNamingThePath) {
  TempDir dir;
  const std::string ok_json = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"short", std::string(5, '\0')},
      {"header_past_end", with_header(ok_json, std::string(8, '\0')).substr(0, 20)},
      {"data_truncated", with_header(ok_json, std::string(4, '\0'))},
      {"bad_json", with_header("{\"a\": [", "")},
      {"not_object", with_header("[1, 2]", "")},
      {"no_dtype", with_header(R"({"a":{"shape":[2],"data_offsets":[0,8]}})", std::string(8, '\0'))},
      {"unknown_dtype",
       with_header(R"({"a":{"dtype":"Q7","shape":[2],"data_offsets":[0,8]}})", std::string(8, '\0'))},
      {"negative_shape",
       with_header(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", std::string(8, '\0'))},
      {"size_mismatch",
       with_header(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", std::string(12, '\0'))},
      {"backwards",
       with_header(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", std::string(8, '\0'))},
      {"no_offsets", with_header(R"({"a":{"dtype":"F32","shape":[2]}})", std::string(8, '\0'))},
      {"bad_metadata", with_header(R"({"__metadata__":{"k":1}})", "")},
      // From the issue-12 probe: an element count that wraps to 0, a number past a double's range,
      // overlapping data, a hole between tensors, bytes after the last tensor.
      {"numel_wraps",
       with_header(R"({"a":{"dtype":"F32","shape":[1099511627776,1099511627776],"data_offsets":[0,0]}})",
                   "")},
      {"huge_number", with_header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"x":1e999})",
                                  std::string(8, '\0'))},
      {"overlap", with_header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                              R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                              std::string(8, '\0'))},
      {"hole", with_header(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                           R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                           std::string(12, '\0'))},
      {"trailing", with_header(ok_json, std::string(12, '\0'))},
  };
  for (const auto& [name, bytes] : bad) {
    const std::string path = dir.file(name + ".safetensors");
    write_bytes(path, bytes);
    try {
      SafeTensors::load(path);
      ADD_FAILURE() << name << ": loaded";
    } catch (const IoError& e) {
      EXPECT_EQ(e.argument(), path) << name;
    }
  }
  EXPECT_THROW(SafeTensors::load(dir.file("absent.safetensors")), IoError);
  try {  // a directory is not a file (std::ios_base::failure escaped before)
    SafeTensors::load(dir.file(""));
    ADD_FAILURE() << "a directory loaded";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("directory"), std::string::npos) << e.what();
  }
  // A good file of the same layout loads, so the failures above are the defects, not the layout.
  write_bytes(dir.file("good.safetensors"), with_header(ok_json, std::string(8, '\0')));
  EXPECT_NO_THROW(SafeTensors::load(dir.file("good.safetensors")));
}

// Zero-element tensors are valid; reading one must not hand memcpy a null pointer (UBSan aborts).
TEST(SafeTensors, ZeroElementTensorsReadAsEmpty) {
  TempDir dir;
  const float one = 3.f;
  const SafeTensorEntry entries[] = {{"empty", DType::f32, {0, 4}, nullptr}, {"one", DType::f32, {1}, &one}};
  save_safetensors(dir.file("e.safetensors"), entries);
  const SafeTensors f = SafeTensors::load(dir.file("e.safetensors"));
  const std::int64_t s0[] = {0, 4}, s1[] = {1};
  EXPECT_TRUE(f.read_f32("empty", s0).empty());
  EXPECT_EQ(f.read_f32("one", s1), std::vector<float>{3.f});
}

}  // namespace
}  // namespace mha
