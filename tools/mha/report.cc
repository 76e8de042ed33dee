#include "report.h"

#include <fmt/format.h>
#include <spawn.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <vector>

#include "check/backward_case.h"
#include "io/file.h"
#include "mha/errors.h"

namespace mha::cli {

namespace {

Table accuracy_table() {
  return Table({"#", "shape", "options", "isa", "max err", "naive err", "err / naive", "PCC", "result"});
}

std::vector<std::string> accuracy_row(const std::string& id, const check::Case& c, Isa isa,
                                      const check::Accuracy& a) {
  return {id,
          c.shape_string(),
          c.options_string(),
          std::string(to_string(isa)),
          fmt::format("{:.2e}", a.max_err),
          fmt::format("{:.2e}", a.naive_max_err),
          a.naive_max_err > 0 ? fmt::format("{:.2f}", a.max_err / a.naive_max_err) : "-",
          fmt::format("{:.7f}", a.pcc),
          a.pass ? "pass" : "FAIL"};
}

}  // namespace

int run_accuracy(const std::vector<check::Case>& cases, const std::vector<Isa>& isas) {
  Table table = accuracy_table();
  int passed = 0, failed = 0;
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const check::Case& c = cases[i];
    const check::CaseData data(c);
    const check::Baseline base = check::compute_baseline(c, data);
    for (Isa isa : isas) {
      const check::Accuracy a = check::evaluate(c, data, base, isa);
      (a.pass ? passed : failed) += 1;
      table.add(accuracy_row(std::to_string(i), c, isa, a));
    }
  }
  table.print();
  fmt::print("\n{} passed, {} failed\n", passed, failed);
  return failed;
}

int run_backward_accuracy(const std::vector<check::Case>& cases, const std::vector<Isa>& isas) {
  Table table({"#", "shape", "options", "isa", "dq err / naive", "dk err / naive", "dv err / naive", "result"});
  const auto ratio = [](const check::GradAccuracy& a, std::size_t i) {
    return fmt::format("{:.2e} / {:.2e}", a.max_err[i], a.naive_err[i]);
  };
  int passed = 0, failed = 0;
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const check::Case& c = cases[i];
    const check::CaseData data(c);
    const check::BackwardBaseline base = check::compute_backward_baseline(c, data);
    for (Isa isa : isas) {
      const check::GradAccuracy a =
          check::measure_backward(base, check::run_backward(c, data, base, isa), check::grad_dtype(c));
      (a.pass ? passed : failed) += 1;
      table.add({std::to_string(i), c.shape_string(), c.options_string(), std::string(to_string(isa)), ratio(a, 0),
                 ratio(a, 1), ratio(a, 2), a.pass ? "pass" : "FAIL"});
    }
  }
  table.print();
  fmt::print("\n{} passed, {} failed\n", passed, failed);
  return failed;
}

double time_ms(const std::function<void()>& fn, double budget_s) {
  using clock = std::chrono::steady_clock;
  fn();  // warm-up: caches, page faults, thread start
  std::vector<double> ms;
  const auto start = clock::now();
  do {
    const auto t0 = clock::now();
    fn();
    ms.push_back(std::chrono::duration<double, std::milli>(clock::now() - t0).count());
  } while (ms.size() < 3 ||
           (std::chrono::duration<double>(clock::now() - start).count() < budget_s && ms.size() < 1000));
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

void write_json_file(const std::string& path, const std::string& text) {
  detail::FileWriter f(path, "json");
  f.write(text.data(), text.size());
  f.write("\n", 1);
  f.commit();
  fmt::print("JSON written to {}\n", path);
}

void add_plot_option(CLI::App& cmd, std::string& plot) {
  cmd.add_option("--plot", plot,
                 "Also draw the records as a roofline PNG (python -m mha.plot: the Python package with matplotlib)");
}

std::string python_interpreter() {
  const char* env = std::getenv("MHA_PYTHON");
  return env != nullptr && *env != '\0' ? env : "python3";
}

std::vector<char*> c_argv(std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  return argv;
}

void plot_records(const std::string& json, const std::string& png) {
  std::vector<std::string> args = {python_interpreter(), "-m", "mha.plot", json, "-o", png};
  const std::vector<char*> argv = c_argv(args);
  std::fflush(stdout);
  pid_t pid = 0;
  int status = 0;
  if (posix_spawnp(&pid, argv[0], nullptr, nullptr, argv.data(), environ) != 0 || waitpid(pid, &status, 0) < 0 ||
      !WIFEXITED(status) || WEXITSTATUS(status) != 0)
    throw IoError(png, fmt::format("--plot: `{} -m mha.plot {} -o {}` failed; it needs the Python package mha "
                                   "with matplotlib (MHA_PYTHON picks the interpreter)",
                                   args[0], json, png));
}

}  // namespace mha::cli
