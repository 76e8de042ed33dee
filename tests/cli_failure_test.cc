// The `mha` binary when things go wrong (issue 12): bad numbers, impossible requests, outputs that
// collide, a full disk, a file-size limit, a memory limit, paths that cannot be written. Each case
// asserts the exit status (never a signal, never 128+), the message, and that files that existed
// are unchanged and no temporary is left behind.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "check/random.h"
#include "mha/npy.h"
#include "test_files.h"

namespace mha {
namespace {

using testing::read_bytes;
using testing::TempDir;
using testing::write_bytes;

struct Result {
  int status;  // exit status; -1 when killed by a signal
  std::string output;
};

// Runs a shell command line in which MHA stands for the binary.
Result run_sh(std::string line) {
  for (std::size_t at; (at = line.find("MHA")) != std::string::npos;) line.replace(at, 3, MHA_CLI_PATH);
  FILE* p = popen(("(" + line + ") 2>&1").c_str(), "r");
  std::string out;
  char buf[4096];
  while (std::size_t n = fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  const int rc = pclose(p);
  return {WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, out};
}

void expect_failure(const Result& r, int status, const std::string& fragment) {
  EXPECT_EQ(r.status, status) << r.output;
  EXPECT_NE(r.output.find(fragment), std::string::npos) << "missing '" << fragment << "' in: " << r.output;
}

// Files in a directory other than those named: temporaries left behind.
std::vector<std::string> files_in(const TempDir& dir) {
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(dir.file("")))
    names.push_back(e.path().filename());
  std::sort(names.begin(), names.end());
  return names;
}

// q [1, nq, 2, 4], k and v [1, 6, 2, 4] in dir; returns the attend arguments without --out.
std::string small_inputs(const TempDir& dir, std::int64_t nq = 5) {
  const std::vector<float> q = check::normal_vector(std::size_t(nq * 8), 1), k = check::normal_vector(48, 2),
                           v = check::normal_vector(48, 3);
  save_npy(dir.file("q.npy"), DType::f32, {1, nq, 2, 4}, q.data());
  save_npy(dir.file("k.npy"), DType::f32, {1, 6, 2, 4}, k.data());
  save_npy(dir.file("v.npy"), DType::f32, {1, 6, 2, 4}, v.data());
  return "MHA attend --q " + dir.file("q.npy") + " --k " + dir.file("k.npy") + " --v " + dir.file("v.npy");
}

TEST(CliFailure, NumbersOutOfRangeAreRefusedNotSaturated) {
  TempDir dir;
  const std::string attend = small_inputs(dir) + " --out " + dir.file("o.npy");
  expect_failure(run_sh(attend + " --window -1 99999999999999999999"), 105, "out of range");
  expect_failure(run_sh("MHA check --count 1 --seed 99999999999999999999"), 105, "out of range");
  expect_failure(run_sh("MHA check --count 1 --seed -1"), 105, "non-negative");
  expect_failure(run_sh("MHA bench --min-time nan --shape 1,1,1,1,1,1"), 105, "finite");
  expect_failure(run_sh("MHA bench decode --min-time inf --context 16"), 105, "finite");
  expect_failure(run_sh("MHA bench --shape -1,1,1,64,64,64"), 2, "is not a size");
  EXPECT_FALSE(std::filesystem::exists(dir.file("o.npy")));
  // A window at INT64_MAX is valid: unbounded.
  EXPECT_EQ(run_sh(attend + " --window -1 9223372036854775807").status, 0);
}

TEST(CliFailure, ARequestThatCanNeverBeAdmittedIsAnErrorNotASpin) {
  expect_failure(run_sh("timeout 60 MHA demo serve --num-blocks 1 --requests 2"), 2, "needs");
}

TEST(CliFailure, DemosTooLargeForTheMachineAreOutOfMemoryBeforeAllocating) {
  expect_failure(run_sh("MHA demo bert --hidden 65536 --heads 1"), 3, "out of memory");
  expect_failure(run_sh("MHA demo self-attention --d-in 65536 --d-out 65536"), 3, "out of memory");
}

TEST(CliFailure, TheSameFileForTwoOutputsIsRefusedBeforeAnythingRuns) {
  TempDir dir;
  write_bytes(dir.file("x.npy"), "precious");
  const std::string attend = small_inputs(dir);
  expect_failure(run_sh(attend + " --out " + dir.file("x.npy") + " --lse " + dir.file("./x.npy")), 2,
                 "same file");
  EXPECT_EQ(read_bytes(dir.file("x.npy")), "precious");
}

TEST(CliFailure, OutputsAppearTogetherOrNotAtAll) {
  TempDir dir;
  write_bytes(dir.file("o.npy"), "old out");
  const std::string attend = small_inputs(dir);
  // --lse cannot be created: --out must keep its old contents.
  expect_failure(run_sh(attend + " --out " + dir.file("o.npy") + " --lse " + dir.file("no/such/dir/l.npy")),
                 2, "l.npy");
  EXPECT_EQ(read_bytes(dir.file("o.npy")), "old out");
  // A parent that is a file: the same.
  write_bytes(dir.file("file"), "");
  expect_failure(run_sh(attend + " --out " + dir.file("o.npy") + " --lse " + dir.file("file/l.npy")), 2,
                 "l.npy");
  EXPECT_EQ(read_bytes(dir.file("o.npy")), "old out");
  // A directory as an output.
  expect_failure(run_sh(attend + " --out " + dir.file("")), 2, "directory");
  EXPECT_EQ(files_in(dir), (std::vector<std::string>{"file", "k.npy", "o.npy", "q.npy", "v.npy"}));
  // And both written when all is well.
  EXPECT_EQ(run_sh(attend + " --out " + dir.file("o.npy") + " --lse " + dir.file("l.npy")).status, 0);
  EXPECT_EQ(load_npy(dir.file("o.npy")).shape, (std::vector<std::int64_t>{1, 5, 2, 4}));
  EXPECT_EQ(load_npy(dir.file("l.npy")).shape, (std::vector<std::int64_t>{1, 2, 5}));
}

// A full disk (/dev/full) and a file-size limit (ulimit -f: SIGXFSZ is ignored, so the write fails
// with EFBIG instead of killing the process): exit 2, old files kept, no temporary left.
TEST(CliFailure, AFullDiskOrASizeLimitKeepsTheOldFiles) {
  TempDir dir;
  const std::string attend = small_inputs(dir, 4096);  // 128 KiB of output
  expect_failure(run_sh(attend + " --out /dev/full"), 2, "No space left");
  write_bytes(dir.file("o.npy"), "old out");
  write_bytes(dir.file("l.npy"), "old lse");
  const Result r =
      run_sh("ulimit -f 64; " + attend + " --out " + dir.file("o.npy") + " --lse " + dir.file("l.npy"));
  expect_failure(r, 2, "File too large");
  EXPECT_EQ(read_bytes(dir.file("o.npy")), "old out");
  EXPECT_EQ(read_bytes(dir.file("l.npy")), "old lse");
  EXPECT_EQ(files_in(dir), (std::vector<std::string>{"k.npy", "l.npy", "o.npy", "q.npy", "v.npy"}));
}

// Under an address-space limit a request larger than it is a clean exit 3, and nothing is written.
// The output ([1, 65536, 16, 256] f32, 1 GiB) is 256 times q: the inputs fit, the output does not.
TEST(CliFailure, OutOfMemoryIsExitThreeWithAMessage) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "sanitizer runtimes reserve terabytes of address space: ulimit -v stops them at start";
#endif
  TempDir dir;
  std::vector<float> q(65536 * 16, 0.5f), k(16 * 16, 0.25f), v(16 * 16 * 256, 1.f);
  save_npy(dir.file("q.npy"), DType::f32, {1, 65536, 16, 1}, q.data());
  save_npy(dir.file("k.npy"), DType::f32, {1, 16, 16, 1}, k.data());
  save_npy(dir.file("v.npy"), DType::f32, {1, 16, 16, 256}, v.data());
  const std::string line = "ulimit -v 600000; MHA attend --q " + dir.file("q.npy") + " --k " +
                           dir.file("k.npy") + " --v " + dir.file("v.npy") + " --out " + dir.file("o.npy");
  expect_failure(run_sh(line), 3, "out of memory");
  EXPECT_FALSE(std::filesystem::exists(dir.file("o.npy")));
}

// A v of shape [1, 0, 1, 2^40] holds no bytes; the output it implies (4 TiB) must not be allocated
// before validation says the head dim is out of range.
TEST(CliFailure, ValidationComesBeforeTheOutputIsSized) {
  TempDir dir;
  float x = 0;
  save_npy(dir.file("q.npy"), DType::f32, {1, 1, 1, 1}, &x);
  save_npy(dir.file("k.npy"), DType::f32, {1, 0, 1, 1}, &x);
  save_npy(dir.file("v.npy"), DType::f32, {1, 0, 1, std::int64_t(1) << 40}, &x);
  expect_failure(run_sh("MHA attend --q " + dir.file("q.npy") + " --k " + dir.file("k.npy") + " --v " +
                        dir.file("v.npy") + " --out " + dir.file("o.npy")),
                 2, "head dim");
}

TEST(CliFailure, ValidEmptyInputsSucceed) {
  TempDir dir;
  const std::string attend = small_inputs(dir, 0);
  EXPECT_EQ(run_sh(attend + " --out " + dir.file("o.npy") + " --lse " + dir.file("l.npy")).status, 0);
  EXPECT_EQ(load_npy(dir.file("l.npy")).shape, (std::vector<std::int64_t>{1, 2, 0}));
  float z = 0;
  std::vector<float> kv(48, 1.f);
  save_npy(dir.file("bq.npy"), DType::f32, {1, 2, 0, 4}, &z);  // [B, H, S, D]
  save_npy(dir.file("bk.npy"), DType::f32, {1, 2, 6, 4}, kv.data());
  const Result bhsd =
      run_sh("MHA attend --layout bhsd --q " + dir.file("bq.npy") + " --k " + dir.file("bk.npy") + " --v " +
             dir.file("bk.npy") + " --out " + dir.file("o.npy") + " --lse " + dir.file("l.npy"));
  EXPECT_EQ(bhsd.status, 0) << bhsd.output;
  float x = 0;
  save_npy(dir.file("e.npy"), DType::f32, {0, 2, 4}, &x);
  const std::string e = dir.file("e.npy");
  const Result varlen =
      run_sh("MHA attend --q " + e + " --k " + e + " --v " + e + " --out " + dir.file("o.npy") + " --lse " +
             dir.file("l.npy") + " --cu-seqlens-q 0,0 --cu-seqlens-k 0,0");
  EXPECT_EQ(varlen.status, 0) << varlen.output;
}

TEST(CliFailure, BadWeightFilesAreErrorsNotAborts) {
  TempDir dir;
  expect_failure(run_sh("MHA demo bert --batch 1 --seq 8 --hidden 16 --heads 2 --weights " + dir.file("")), 2,
                 "directory");
  const std::string json = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"n":1e999})";
  std::string file(8, '\0');
  for (int i = 0; i < 8; ++i) file[std::size_t(i)] = char((json.size() >> (8 * i)) & 0xff);
  write_bytes(dir.file("w.safetensors"), file + json + std::string(8, '\0'));
  expect_failure(
      run_sh("MHA demo bert --batch 1 --seq 8 --hidden 16 --heads 2 --weights " + dir.file("w.safetensors")),
      2, "malformed JSON");
}

}  // namespace
}  // namespace mha
