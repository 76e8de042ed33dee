// The .npy reader and writer: round trips, and a clear IoError / Unsupported for each bad file.
#include "mha/npy.h"

#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <filesystem>
#include <vector>

#include "mha/errors.h"
#include "test_files.h"

namespace mha {
namespace {

using testing::read_bytes;
using testing::TempDir;
using testing::write_bytes;

TEST(Npy, RoundTripF32AndF16) {
  TempDir dir;
  std::vector<float> data(2 * 3 * 4 * 5);
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = float(i) * 0.5f - 7;
  save_npy(dir.file("a.npy"), DType::f32, {2, 3, 4, 5}, data.data());
  NpyArray a = load_npy(dir.file("a.npy"));
  EXPECT_EQ(a.dtype, DType::f32);
  EXPECT_EQ(a.shape, (std::vector<std::int64_t>{2, 3, 4, 5}));
  ASSERT_EQ(a.bytes.size(), data.size() * 4);
  EXPECT_EQ(0, std::memcmp(a.bytes.data(), data.data(), a.bytes.size()));
  const std::string raw = read_bytes(dir.file("a.npy"));
  EXPECT_EQ((raw.size() - data.size() * 4) % 64, 0u) << "data must start 64-byte aligned";
  EXPECT_NE(raw.find("'shape': (2, 3, 4, 5)"), std::string::npos);

  std::vector<std::uint16_t> h = {0x3c00, 0xc000, 0x7bff};
  save_npy(dir.file("h.npy"), DType::f16, {3}, h.data());
  NpyArray b = load_npy(dir.file("h.npy"));
  EXPECT_EQ(b.dtype, DType::f16);
  EXPECT_EQ(b.shape, (std::vector<std::int64_t>{3}));
  EXPECT_NE(read_bytes(dir.file("h.npy")).find("(3,)"), std::string::npos);
  const Tensor t = b.view();
  EXPECT_EQ(t.rank, 1);
  EXPECT_EQ(t.strides[0], 1);
}

// A hand-made file: version, dict text, data bytes.
std::string npy_file(const std::string& dict, std::size_t data_bytes, int major = 1) {
  std::string header = dict;
  const std::size_t prefix = major == 1 ? 10 : 12;
  while ((prefix + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::string s = "\x93NUMPY";
  s += char(major);
  s += char(0);
  s += char(header.size() & 0xff);
  s += char((header.size() >> 8) & 0xff);
  if (major != 1) s += std::string(2, '\0');
  return s + header + std::string(data_bytes, '\0');
}

TEST(Npy, ReadsVersionTwoAndDoubleQuotes) {
  TempDir dir;
  write_bytes(dir.file("v2.npy"),
              npy_file("{\"descr\": \"<f4\", \"fortran_order\": False, \"shape\": (2, 2)}", 16, 2));
  const NpyArray a = load_npy(dir.file("v2.npy"));
  EXPECT_EQ(a.shape, (std::vector<std::int64_t>{2, 2}));
}

struct BadFile {
  std::string name, contents, fragment;
  bool unsupported;
};

TEST(Npy, BadFilesGetClearErrors) {
  TempDir dir;
  const std::string ok_dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
  const std::string good = npy_file(ok_dict, 24);
  const std::vector<BadFile> cases = {
      {"empty", "", "too short", false},
      {"magic", "PK\x03\x04 not numpy at all", "bad magic", false},
      {"version", std::string("\x93NUMPY\x07\x00\x10\x00", 10) + std::string(16, ' '), "version 7.0", false},
      {"header_cut", good.substr(0, 30), "truncated: header", false},
      {"data_cut", good.substr(0, good.size() - 5), "truncated: shape needs 24 data bytes, the file has 19",
       false},
      {"trailing", good + "xyz", "3 bytes of trailing data", false},
      {"f8", npy_file("{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }", 16), "dtype '<f8'", true},
      {"big_endian", npy_file("{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", 8), "dtype '>f4'",
       true},
      {"fortran", npy_file("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", 24), "fortran_order",
       true},
      {"rank5", npy_file("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1, 1, 1, 2), }", 8), "rank 5",
       true},
      {"no_shape", npy_file("{'descr': '<f4', 'fortran_order': False, }", 0), "lacks one of", false},
      {"garbage_dict", npy_file("{'descr': '<f4', 'fortran_order': maybe, 'shape': (2,), }", 8),
       "expected True or False", false},
      {"unknown_key", npy_file("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}", 8),
       "unexpected header key 'x'", false},
      {"bad_dim", npy_file("{'descr': '<f4', 'fortran_order': False, 'shape': (2, -3), }", 8),
       "expected a dimension", false},
  };
  for (const BadFile& c : cases) {
    const std::string path = dir.file(c.name + ".npy");
    write_bytes(path, c.contents);
    try {
      load_npy(path);
      ADD_FAILURE() << c.name << ": no error";
    } catch (const IoError& e) {
      EXPECT_FALSE(c.unsupported) << c.name << ": " << e.what();
      EXPECT_EQ(e.argument(), path);
      EXPECT_NE(std::string(e.what()).find(c.fragment), std::string::npos) << c.name << ": " << e.what();
    } catch (const Unsupported& e) {
      EXPECT_TRUE(c.unsupported) << c.name << ": " << e.what();
      EXPECT_NE(std::string(e.what()).find(c.fragment), std::string::npos) << c.name << ": " << e.what();
    }
  }
  EXPECT_THROW(load_npy(dir.file("missing.npy")), IoError);
  float x = 0;
  EXPECT_THROW(save_npy(dir.file("b.npy"), DType::bf16, {1}, &x), Unsupported);
  EXPECT_THROW(save_npy(dir.file("no/such/dir/x.npy"), DType::f32, {1}, &x), IoError);
  EXPECT_THROW(load_npy(dir.file("")), IoError);                       // a directory
  EXPECT_THROW(save_npy(dir.file(""), DType::f32, {1}, &x), IoError);  // a directory
}

// A write that fails midway (here a file-size limit, as a full disk would) leaves the file that was
// there untouched and no temporary beside it. Run in a child: the limit is per process.
TEST(Npy, AFailedWriteLeavesTheOldFileAndNoTemporary) {
  TempDir dir;
  const std::string path = dir.file("out.npy");
  const std::vector<float> old_data = {1, 2, 3};
  save_npy(path, DType::f32, {3}, old_data.data());
  const std::string before = read_bytes(path);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    std::signal(SIGXFSZ, SIG_IGN);
    const rlimit limit{4096, 4096};
    setrlimit(RLIMIT_FSIZE, &limit);
    std::vector<float> big(1 << 16, 5.f);
    try {
      save_npy(path, DType::f32, {std::int64_t(big.size())}, big.data());
    } catch (const IoError&) {
      _exit(42);
    }
    _exit(0);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status)) << "the child died of a signal";
  EXPECT_EQ(WEXITSTATUS(status), 42);
  EXPECT_EQ(read_bytes(path), before);
  int files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir.file(""))) files += e.is_regular_file();
  EXPECT_EQ(files, 1);
}

}  // namespace
}  // namespace mha
