// mha: exact multi-head attention from the command line.
#include <fmt/format.h>

#include <cstdio>

#include "commands.h"
#include "mha/errors.h"
#include "mha/runtime.h"
#include "mha/version.h"

int main(int argc, char** argv) {
  CLI::App app{"mha: exact multi-head attention (flash forward, float64 oracle, checks, benchmarks, demo)"};
  app.set_version_flag("--version", std::string("mha ") + mha::kVersion);
  app.require_subcommand(1);
  int threads = 0;
  std::string isa;
  app.add_option("--threads", threads, "Worker threads (default: all cores)")->check(CLI::Range(1, 1024));
  app.add_option("--isa", isa,
                 "Force a kernel ISA: generic, avx2, avx512 (default: best for this CPU, or MHA_ISA)");
  app.parse_complete_callback([&] {
    if (threads > 0) mha::set_num_threads(threads);
    if (!isa.empty()) mha::set_isa(mha::parse_isa(isa));
  });
  mha::cli::add_attend(app);
  mha::cli::add_bench(app);
  mha::cli::add_check(app);
  mha::cli::add_demo(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const mha::cli::Failed&) {
    return 1;
  } catch (const mha::Error& e) {
    std::fprintf(stderr, "mha: error: %s\n", e.what());
    return 2;
  }
  return 0;
}
