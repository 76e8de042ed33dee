// Shared pieces of the CLI's reports: accuracy rows and timing.
#pragma once

#include <CLI/CLI.hpp>

#include <chrono>
#include <functional>
#include <string>
#include <vector>

#include "check/case.h"
#include "table.h"

namespace mha::cli {

// Runs every case on every ISA against the float64 oracle, prints the accuracy table and
// "N passed, M failed"; returns M.
int run_accuracy(const std::vector<check::Case>& cases, const std::vector<Isa>& isas);
// The same for the backward: dq, dk, dv against the float64 oracle's gradients, with
// FlashAttention's bar for gradients (3 × naive + floor); returns the failures.
int run_backward_accuracy(const std::vector<check::Case>& cases, const std::vector<Isa>& isas);

// A benchmark shape: random data of the case, timed through mha::attention (and the naive path
// when with_naive).
struct BenchShape {
  std::string name;
  check::Case c;
  bool with_naive = false;
  bool backward = false;  // time mha::attention_backward (the forward runs once, untimed, for out and lse)
};

// Times each shape, measures the machine's ceiling in the same run, prints the markdown table and,
// when `json` is not empty, writes the JSON records there.
void run_bench(const std::vector<BenchShape>& shapes, double min_time, const std::string& json);

// Median milliseconds of fn over repeats, after one warm-up, spending about `budget_s` seconds.
double time_ms(const std::function<void()>& fn, double budget_s = 0.5);

// Writes `text` and a newline to `path`; IoError when it cannot.
void write_json_file(const std::string& path, const std::string& text);

// The interpreter that runs the Python package's modules for the CLI: MHA_PYTHON, else python3.
std::string python_interpreter();
// argv for exec/posix_spawn: pointers into `args` (which must outlive them), null-terminated.
std::vector<char*> c_argv(std::vector<std::string>& args);

// `--plot FILE.png` of the bench commands: adds the option, and draws the records of `json` (the
// --json file, or FILE.png.json when none was given) as a roofline through the Python package
// (`python -m mha.plot`, matplotlib; MHA_PYTHON picks the interpreter). IoError when that fails.
void add_plot_option(CLI::App& cmd, std::string& plot);
void plot_records(const std::string& json, const std::string& png);

}  // namespace mha::cli
