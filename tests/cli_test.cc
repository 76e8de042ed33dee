// The `mha` binary end to end: attend over .npy files against the float64 oracle (same bar as the
// sweep), varlen, layouts, dtypes, error exits, check and version.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <vector>

#include "check/backward_case.h"
#include "check/case.h"
#include "mha/layers.h"
#include "mha/npy.h"
#include "mha/safetensors.h"
#include "runtime/dtype_convert.h"
#include "test_files.h"

namespace mha {
namespace {

using testing::TempDir;

struct Result {
  int status;
  std::string output;
};

Result run_cli(const std::string& args) {
  const std::string cmd = std::string(MHA_CLI_PATH) + " " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  while (std::size_t n = fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  const int rc = pclose(p);
  return {WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, out};
}

// Saves a case's input (bf16 as the f32 values it holds: exact, and --dtype bf16 restores them).
void save_input(const std::string& path, const Tensor& t, const std::vector<std::int64_t>& file_shape) {
  std::vector<float> f32;
  const void* data = t.data;
  DType dt = t.dtype;
  if (dt == DType::bf16) {
    f32.resize(std::size_t(t.numel()));
    for (std::size_t i = 0; i < f32.size(); ++i) f32[i] = detail::load_f32(t.data, dt, std::int64_t(i));
    data = f32.data();
    dt = DType::f32;
  }
  save_npy(path, dt, file_shape, data);
}

// The file shape of a case's [B, S, H, D] view: in its layout, [total, H, D] for varlen.
std::vector<std::int64_t> case_file_shape(const check::Case& c, const Tensor& t) {
  std::vector<std::int64_t> s(t.shape.begin(), t.shape.begin() + 4);
  if (c.bhsd) std::swap(s[1], s[2]);
  if (c.varlen()) s.erase(s.begin());
  return s;
}

// A file read back as the case's logical [B, S, H, D] view.
Tensor case_view(const check::Case& c, NpyArray& a) {
  const std::vector<std::int64_t>& s = a.shape;
  if (c.varlen()) return Tensor::bshd(a.bytes.data(), a.dtype, 1, s[0], s[1], s[2]);
  if (c.bhsd) return Tensor::bhsd(a.bytes.data(), a.dtype, s[0], s[2], s[1], s[3]);
  return a.view();
}

// Writes the case's inputs into dir and returns the `mha attend` arguments for them and its
// options, writing out to o.npy and lse to lse.npy.
std::string attend_args(const check::Case& c, const check::CaseData& data, const TempDir& dir) {
  save_input(dir.file("q.npy"), data.tq, case_file_shape(c, data.tq));
  save_input(dir.file("k.npy"), data.tk, case_file_shape(c, data.tk));
  save_input(dir.file("v.npy"), data.tv, case_file_shape(c, data.tv));
  std::string args = "attend --q " + dir.file("q.npy") + " --k " + dir.file("k.npy") + " --v " +
                     dir.file("v.npy") + " --out " + dir.file("o.npy") + " --lse " + dir.file("lse.npy") +
                     " --dtype " + std::string(to_string(c.dtype)) + (c.bhsd ? " --layout bhsd" : "") +
                     (c.causal ? " --causal" : "");
  if (c.window_left >= 0 || c.window_right >= 0)
    args += " --window " + std::to_string(c.window_left) + " " + std::to_string(c.window_right);
  if (c.scale) args += " --scale " + std::to_string(*c.scale);
  if (c.dropout_p > 0)
    args += fmt::format(" --dropout {} --seed {} --offset {}", c.dropout_p, data.options.dropout_seed,
                        data.options.dropout_offset);
  if (data.options.mask) {
    const Tensor& m = *data.options.mask;
    save_input(dir.file("m.npy"), m, std::vector<std::int64_t>(m.shape.begin(), m.shape.begin() + m.rank));
    args += " --mask " + dir.file("m.npy");
  }
  auto join = [](const std::vector<std::int32_t>& v) {
    std::string s;
    for (auto x : v) {
      if (!s.empty()) s += ',';
      s += std::to_string(x);
    }
    return s;
  };
  if (c.varlen()) args += " --cu-seqlens-q " + join(data.cu_q) + " --cu-seqlens-k " + join(data.cu_k);
  return args;
}

// Writes the case's inputs, runs `mha attend`, and measures its output against the oracle.
check::Accuracy attend_case(check::Case c, const std::string& extra = "") {
  TempDir dir;
  c.out_f32 = c.dtype != DType::f16;  // the CLI writes f16 for f16 inputs, f32 otherwise
  const check::CaseData data(c);
  const check::Baseline base = check::compute_baseline(c, data);
  const Result r = run_cli(attend_args(c, data, dir) + " " + extra);
  EXPECT_EQ(r.status, 0) << r.output;
  NpyArray out = load_npy(dir.file("o.npy"));
  NpyArray lse = load_npy(dir.file("lse.npy"));
  const Tensor tout = case_view(c, out);
  const Tensor tlse = lse.view();
  return check::measure(base, tout, &tlse);
}

// The same with --dout: dq, dk, dv against the oracle's gradients (3 × naive + floor).
check::GradAccuracy attend_backward_case(check::Case c) {
  TempDir dir;
  c.out_f32 = c.dtype != DType::f16;
  const check::CaseData data(c);
  const check::BackwardBaseline base = check::compute_backward_baseline(c, data);
  save_input(dir.file("do.npy"), base.dout, case_file_shape(c, base.dout));
  const Result r = run_cli(attend_args(c, data, dir) + " --dout " + dir.file("do.npy") + " --dq " +
                           dir.file("dq.npy") + " --dk " + dir.file("dk.npy") + " --dv " + dir.file("dv.npy"));
  EXPECT_EQ(r.status, 0) << r.output;
  check::GradRun run;
  const char* names[] = {"dq.npy", "dk.npy", "dv.npy"};
  for (std::size_t i = 0; i < 3; ++i) {
    NpyArray g = load_npy(dir.file(names[i]));
    run.grads[i] = check::to_double(case_view(c, g));
  }
  return check::measure_backward(base, run, check::grad_dtype(c));
}

TEST(Cli, AttendBackwardMatchesTheOracle) {
  using check::Case;
  using check::MaskKind;
  for (DType dt : {DType::f32, DType::f16, DType::bf16}) {
    const Case cases[] = {
        {.b = 2, .nq = 70, .nk = 90, .hq = 4, .hkv = 2, .d = 64, .dv = 40, .dtype = dt, .causal = true},
        {.b = 1, .nq = 50, .nk = 50, .hq = 2, .hkv = 2, .d = 16, .dtype = dt, .mask = MaskKind::bias,
         .bhsd = true, .dropout_p = 0.2f},
        {.hq = 2, .hkv = 1, .d = 32, .dtype = dt, .seqlens_q = {10, 1, 70}, .seqlens_k = {10, 30, 90},
         .dropout_p = 0.1f},
    };
    for (const Case& c : cases) {
      const check::GradAccuracy a = attend_backward_case(c);
      EXPECT_TRUE(a.pass) << c.shape_string() << " " << c.options_string() << " dq " << a.max_err[0] << " / "
                          << a.naive_err[0] << " dk " << a.max_err[1] << " / " << a.naive_err[1] << " dv "
                          << a.max_err[2] << " / " << a.naive_err[2];
    }
  }
}

TEST(Cli, AttendBackwardRefusesBadArguments) {
  TempDir dir;
  const check::Case c{.b = 1, .nq = 5, .nk = 6, .hq = 2, .hkv = 1, .d = 8};
  const check::CaseData data(c);
  const std::string args = attend_args(c, data, dir);
  save_input(dir.file("do.npy"), data.tq, case_file_shape(c, data.tq));  // right shape (D = Dv)
  save_input(dir.file("bad.npy"), data.tk, case_file_shape(c, data.tk));  // k's shape, not out's
  const std::string grads = " --dq " + dir.file("dq.npy") + " --dk " + dir.file("dk.npy") + " --dv ";
  Result r = run_cli(args + " --dout " + dir.file("do.npy") + " --dq " + dir.file("dq.npy"));
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("requires --dk"), std::string::npos) << r.output;
  r = run_cli(args + " --dout " + dir.file("do.npy") + grads + dir.file("dq.npy"));
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.output.find("are the same file"), std::string::npos) << r.output;
  r = run_cli(args + " --dout " + dir.file("bad.npy") + grads + dir.file("dv.npy"));
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.output.find("dout.shape"), std::string::npos) << r.output;
  r = run_cli(args + " --dout " + dir.file("do.npy") + grads + dir.file("dv.npy") + " --dropout 1");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.output.find("dropout_p = 1"), std::string::npos) << r.output;
  // Nothing was written by the failed calls.
  for (const char* f : {"o.npy", "lse.npy", "dq.npy", "dk.npy", "dv.npy"})
    EXPECT_FALSE(std::filesystem::exists(dir.file(f))) << f;
  r = run_cli(args + " --dout " + dir.file("do.npy") + grads + dir.file("dv.npy"));
  EXPECT_EQ(r.status, 0) << r.output;
  for (const char* f : {"o.npy", "lse.npy", "dq.npy", "dk.npy", "dv.npy"})
    EXPECT_TRUE(std::filesystem::exists(dir.file(f))) << f;
}

TEST(Cli, Version) {
  const Result r = run_cli("--version");
  EXPECT_EQ(r.status, 0);
  EXPECT_NE(r.output.find("mha 0.1.0"), std::string::npos);
}

TEST(Cli, AttendMatchesTheOracleForEveryOptionAndDtype) {
  using check::Case;
  using check::MaskKind;
  for (DType dt : {DType::f32, DType::f16, DType::bf16}) {
    const Case cases[] = {
        {.b = 2, .nq = 70, .nk = 90, .hq = 4, .hkv = 2, .d = 64, .dtype = dt},
        {.b = 1, .nq = 100, .nk = 60, .hq = 2, .hkv = 1, .d = 40, .dtype = dt, .causal = true},
        {.b = 2, .nq = 33, .nk = 80, .hq = 2, .hkv = 2, .d = 32, .dtype = dt, .mask = MaskKind::padding},
        {.b = 1, .nq = 50, .nk = 50, .hq = 2, .hkv = 2, .d = 16, .dtype = dt, .mask = MaskKind::bias},
        {.b = 1,
         .nq = 80,
         .nk = 80,
         .hq = 3,
         .hkv = 1,
         .d = 24,
         .dtype = dt,
         .window_left = 9,
         .window_right = 4},
        {.b = 2, .nq = 41, .nk = 67, .hq = 4, .hkv = 1, .d = 128, .dtype = dt, .causal = true, .bhsd = true},
        {.hq = 2,
         .hkv = 1,
         .d = 64,
         .dtype = dt,
         .causal = true,
         .seqlens_q = {10, 1, 70},
         .seqlens_k = {10, 30, 90}},
        {.b = 1, .nq = 20, .nk = 30, .hq = 1, .hkv = 1, .d = 8, .dtype = dt, .scale = 0.25f},
    };
    for (const Case& c : cases) {
      const check::Accuracy a = attend_case(c);
      EXPECT_TRUE(a.pass) << c.shape_string() << " " << c.options_string() << ": err " << a.max_err
                          << " naive " << a.naive_max_err << " lse err " << a.lse_err << " naive "
                          << a.naive_lse_err;
    }
  }
}

TEST(Cli, AttendUnderEveryIsaAndThreadCount) {
  const check::Case c{.b = 1, .nq = 130, .nk = 130, .hq = 2, .hkv = 1, .d = 64, .causal = true};
  for (Isa isa : supported_isas()) {
    const check::Accuracy a = attend_case(c, "");  // default ISA
    EXPECT_TRUE(a.pass);
    const Result r = run_cli(std::string("--isa ") + std::string(to_string(isa)) +
                             " --threads 1 check --count 3 --check-isa " + std::string(to_string(isa)));
    EXPECT_EQ(r.status, 0) << r.output;
  }
}

TEST(Cli, AttendErrorsExitNonZeroWithAMessage) {
  TempDir dir;
  std::vector<float> q(2 * 5 * 4 * 8, 0.5f), k(2 * 7 * 3 * 8, 0.5f);
  save_npy(dir.file("q.npy"), DType::f32, {2, 5, 4, 8}, q.data());
  save_npy(dir.file("k.npy"), DType::f32, {2, 7, 3, 8}, k.data());
  const std::string base =
      "attend --q " + dir.file("q.npy") + " --v " + dir.file("k.npy") + " --out " + dir.file("o.npy");
  Result r = run_cli(base + " --k " + dir.file("k.npy"));
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.output.find("(kv heads) = 3 does not divide q.shape[2] (heads) = 4"), std::string::npos)
      << r.output;
  EXPECT_FALSE(std::filesystem::exists(dir.file("o.npy")));

  testing::write_bytes(dir.file("cut.npy"), testing::read_bytes(dir.file("k.npy")).substr(0, 100));
  r = run_cli(base + " --k " + dir.file("cut.npy"));
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.output.find("truncated"), std::string::npos) << r.output;

  r = run_cli(base + " --k " + dir.file("k.npy") + " --dtype f64");
  EXPECT_NE(r.status, 0);
  r = run_cli("attend --q " + dir.file("q.npy"));
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("required"), std::string::npos) << r.output;
  r = run_cli("--isa sse9 check --count 1");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.output.find("isa = 'sse9'"), std::string::npos) << r.output;
}

TEST(Cli, BenchWritesRecordsAgainstTheSameRunCeiling) {
  TempDir dir;
  const Result r = run_cli(
      "--threads 2 bench --shape 1,2,1,70,90,32 --shape 2,4,4,33,33,16 --causal --dtype bf16 "
      "--mask padding --naive --min-time 0.01 --json " +
      dir.file("b.json"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(
      r.output.find("Ceiling measured in this run (best of runs before and after the shapes) on 2 threads"),
      std::string::npos)
      << r.output;
  std::ifstream in(dir.file("b.json"));
  const nlohmann::json records = nlohmann::json::parse(in);
  ASSERT_EQ(records.size(), 2u);
  const nlohmann::json& a = records[0];
  for (const char* key :
       {"name", "b", "hq", "hkv", "nq", "nk", "d", "causal", "dtype", "isa", "threads", "ms", "gflops",
        "ceiling_gflops", "fraction_of_ceiling", "naive_ms", "speedup_vs_naive"})
    EXPECT_TRUE(a.contains(key)) << key;
  EXPECT_EQ(a["b"], 1);
  EXPECT_EQ(a["hq"], 2);
  EXPECT_EQ(a["hkv"], 1);
  EXPECT_EQ(a["nq"], 70);
  EXPECT_EQ(a["nk"], 90);
  EXPECT_EQ(a["d"], 32);
  EXPECT_EQ(a["causal"], true);
  EXPECT_EQ(a["mask"], "padding");
  EXPECT_EQ(a["dtype"], "bf16");
  EXPECT_EQ(a["threads"], 2);
  EXPECT_GT(a["ceiling_gflops"].get<double>(), 0);
  EXPECT_NEAR(a["fraction_of_ceiling"].get<double>(),
              a["gflops"].get<double>() / a["ceiling_gflops"].get<double>(), 1e-9);
  // gflops is the causal flop count over the median time: 2·(D+Dv)·Hq·B·visible pairs.
  const double pairs = 70 * 71 / 2 + 70 * 20;  // bottom-right causal, Nk - Nq = 20
  EXPECT_NEAR(a["gflops"].get<double>() * a["ms"].get<double>() * 1e6, 4.0 * 32 * 2 * pairs, 1.0);
  EXPECT_EQ(records[1]["b"], 2);
}

TEST(Cli, BenchBackwardCountsTwoAndAHalfForwards) {
  TempDir dir;
  const Result r = run_cli("--threads 2 bench --backward --shape 1,2,1,70,90,32 --causal --min-time 0.01 --json " +
                           dir.file("b.json"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("flash backward"), std::string::npos) << r.output;
  std::ifstream in(dir.file("b.json"));
  const nlohmann::json records = nlohmann::json::parse(in);
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0]["pass"], "backward");
  const double pairs = 70 * 71 / 2 + 70 * 20;
  EXPECT_NEAR(records[0]["gflops"].get<double>() * records[0]["ms"].get<double>() * 1e6,
              2.5 * 4.0 * 32 * 2 * pairs, 1.0);
}

TEST(Cli, BenchRejectsABadShape) {
  Result r = run_cli("bench --shape 1,2,3");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.output.find("has 3 values, expected 6: B,Hq,Hkv,Nq,Nk,D"), std::string::npos) << r.output;
  r = run_cli("bench --shape 1,2,x,4,5,6");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.output.find("'x' is not an integer"), std::string::npos) << r.output;
  r = run_cli("bench --shape 1,3,2,4,5,6 --min-time 0.01");  // 3 heads over 2 kv heads
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.output.find("does not divide"), std::string::npos) << r.output;
}

TEST(Cli, CheckPassesAndReportsCounts) {
  const Result r = run_cli("--threads 2 check --count 6 --seed 3");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find(" passed, 0 failed"), std::string::npos) << r.output;
}

TEST(Cli, CheckBackwardCoversGradientsAndDropout) {
  const Result r = run_cli("--threads 2 check --backward --count 8 --seed 3");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("dq err / naive"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("dropout=0.17"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find(" passed, 0 failed"), std::string::npos) << r.output;
}

TEST(Cli, LayerDemosPrintTablesAndJson) {
  TempDir dir;
  Result r = run_cli(
      "--threads 2 demo bert --batch 2 --seq 40 --hidden 64 --heads 4 --kv-heads 2 --iters 2 --json " +
      dir.file("bert.json"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("optimized: steady state"), std::string::npos) << r.output;
  nlohmann::json j = nlohmann::json::parse(std::ifstream(dir.file("bert.json")));
  for (const char* key :
       {"naive_ms", "first_call_ms", "steady_ms", "first_over_steady", "speedup", "pcc", "max_err"})
    EXPECT_TRUE(j.contains(key)) << key;
  EXPECT_GT(j["speedup"].get<double>(), 0);
  EXPECT_GE(j["pcc"].get<double>(), 0.9999);
  EXPECT_EQ(j["kv_heads"].get<int>(), 2);

  r = run_cli("demo self-attention --count 2 --d-in 40 --d-out 300 --rows 70 --causal --json " +
              dir.file("sa.json"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("optimized, steady state"), std::string::npos) << r.output;
  j = nlohmann::json::parse(std::ifstream(dir.file("sa.json")));
  EXPECT_GE(j["pcc"].get<double>(), 0.9999);
  EXPECT_GE(j["optimized_vs_naive"]["pcc"].get<double>(), 0.9999);
  EXPECT_GT(j["speedup"].get<double>(), 0);

  // Weights from a safetensors file written by the library, and the error for a missing file.
  const SelfAttentionWeights w = SelfAttentionWeights::random(16, 8, 9);
  save_safetensors(dir.file("w.safetensors"), w.entries());
  r = run_cli("demo self-attention --count 1 --d-in 16 --d-out 8 --rows 10 --weights " +
              dir.file("w.safetensors"));
  EXPECT_EQ(r.status, 0) << r.output;
  r = run_cli("demo self-attention --count 1 --d-in 16 --d-out 9 --rows 10 --weights " +
              dir.file("w.safetensors"));
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_NE(r.output.find("shape [8, 16], expected [9, 16]"), std::string::npos) << r.output;
  r = run_cli("demo bert --weights " + dir.file("absent.safetensors"));
  EXPECT_EQ(r.status, 2) << r.output;
}

TEST(Cli, BenchDecodeWritesRecordsAgainstTheSameRunCeiling) {
  TempDir dir;
  const Result r = run_cli(
      "--threads 2 bench decode --context 300 --heads 8/2 --heads 8/8 --batch 2 --kv-dtype bf16 --kv-dtype "
      "int8 "
      "--layout contiguous --layout paged --head-dim 64 --working-set 4 --min-time 0.01 --json " +
      dir.file("d.json"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("GQA 8/2 vs 8/8"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("paged vs contiguous"), std::string::npos) << r.output;
  const nlohmann::json records = nlohmann::json::parse(std::ifstream(dir.file("d.json")));
  ASSERT_EQ(records.size(), 8u);
  for (const nlohmann::json& rec : records) {
    for (const char* key : {"name", "b", "hq", "hkv", "context", "d", "kv_dtype", "layout", "isa", "threads",
                            "us", "gbps", "ceiling_gbps", "buffer_read_gbps", "cache_read_gbps",
                            "fraction_of_ceiling"})
      EXPECT_TRUE(rec.contains(key)) << key;
    EXPECT_GT(rec["us"].get<double>(), 0);
    EXPECT_GT(rec["cache_read_gbps"].get<double>(), 0);
    // The row's ceiling is the better of the 512 MiB buffer's read and its own caches'.
    EXPECT_DOUBLE_EQ(rec["ceiling_gbps"].get<double>(),
                     std::max(rec["buffer_read_gbps"].get<double>(), rec["cache_read_gbps"].get<double>()));
    EXPECT_NEAR(rec["fraction_of_ceiling"].get<double>(),
                rec["gbps"].get<double>() / rec["ceiling_gbps"].get<double>(), 1e-9);
  }
  EXPECT_EQ(records[0]["context"], 300);
  EXPECT_EQ(records[0]["hkv"], 2);
}

TEST(Cli, DemoServeRetiresEveryRequest) {
  TempDir dir;
  const Result r = run_cli(
      "demo serve --requests 12 --max-batch 4 --heads 8 --kv-heads 2 --head-dim 32 --prompt-min 5 "
      "--prompt-max 60 "
      "--gen-min 3 --gen-max 20 --chunk 16 --block-size 8 --json " +
      dir.file("s.json"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("decode attention tokens/s"), std::string::npos) << r.output;
  const nlohmann::json j = nlohmann::json::parse(std::ifstream(dir.file("s.json")));
  EXPECT_EQ(j["finished"], 12);
  EXPECT_LE(j["peak_occupancy"].get<double>(), 1.0);
  EXPECT_GT(j["blocks_handed_out"].get<std::int64_t>(),
            j["num_blocks"].get<std::int64_t>());  // blocks were reused
  EXPECT_GT(j["decode_tokens_per_s"].get<double>(), 0);
  EXPECT_EQ(run_cli("demo serve --prompt-min 50 --prompt-max 10").status, 2);
}

}  // namespace
}  // namespace mha
