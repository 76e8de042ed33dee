// mha check: a sweep of shapes, options and dtypes against the float64 oracle, on every ISA.
#include <fmt/format.h>

#include "check/case.h"
#include "commands.h"
#include "report.h"

namespace mha::cli {

namespace {

struct CheckArgs {
  int count = 40;
  std::uint64_t seed = 1;
  bool sweep = false;
  bool backward = false;
  std::string isa = "all";
};

void run(const CheckArgs& args) {
  std::vector<check::Case> cases = args.sweep ? check::sweep_cases() : check::random_cases(args.count, args.seed);
  const std::vector<Isa> isas = args.isa == "all" ? supported_isas() : std::vector<Isa>{parse_isa(args.isa)};
  if (args.backward) {
    // Every other case trains with dropout, so the regenerated keep mask is checked too.
    for (std::size_t i = 0; i < cases.size(); ++i)
      if (i % 2 == 1) cases[i].dropout_p = 0.17f;
  }
  fmt::print("mha check{}: {} cases × {} ISA(s), {} thread(s); bar: max err <= {} × naive err + floor\n\n",
             args.backward ? " --backward (dq, dk, dv)" : "", cases.size(), isas.size(), num_threads(),
             args.backward ? 3 : 2);
  if ((args.backward ? run_backward_accuracy(cases, isas) : run_accuracy(cases, isas)) > 0) throw Failed{};
}

}  // namespace

void add_check(CLI::App& app) {
  auto args = std::make_shared<CheckArgs>();
  CLI::App* cmd =
      app.add_subcommand("check", "Random sweep against the float64 reference; non-zero exit on any failure");
  cmd->add_option("--count", args->count, "Random cases")->check(CLI::Range(1, 100000));
  cmd->add_option("--seed", args->seed, "Seed of the random sweep");
  cmd->add_flag("--sweep", args->sweep, "Run the test suite's fixed sweep instead of random cases");
  cmd->add_flag("--backward", args->backward,
                "Check the backward's gradients instead (every other case with dropout 0.17)");
  cmd->add_option("--check-isa", args->isa, "ISA to check: all (every one this CPU has) or one name");
  cmd->callback([args] { run(*args); });
}

}  // namespace mha::cli
