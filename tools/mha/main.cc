// mha: exact multi-head attention from the command line.
//
// Exit status: 0 success; 1 a check or test run found failures; 2 a bad argument, file or request
// (mha::Error, CLI11's parse errors are 105-109 as CLI11 numbers them); 3 out of memory; 4 any
// other error (a bug: the message says what escaped). Never a signal: SIGXFSZ is ignored, so a
// file-size limit is a write error like a full disk.
#include <fmt/format.h>

#include <csignal>
#include <cstdio>
#include <new>

#include "commands.h"
#include "mha/errors.h"
#include "mha/runtime.h"
#include "mha/version.h"
#include "options.h"

int main(int argc, char** argv) {
  std::signal(SIGXFSZ, SIG_IGN);
  try {
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
    mha::cli::add_embed(app);
#if defined(MHA_HAVE_DIST)
    mha::cli::add_dist(app);
#endif
    mha::cli::require_exact_integers(app);
    try {
      app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
      return app.exit(e);
    }
  } catch (const mha::cli::Failed&) {
    return 1;
  } catch (const mha::OutOfMemory& e) {
    std::fprintf(stderr, "mha: error: out of memory: %s\n", e.what());
    return 3;
  } catch (const mha::Error& e) {
    std::fprintf(stderr, "mha: error: %s\n", e.what());
    return 2;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr,
                 "mha: error: out of memory (the request needs more than this process can allocate)\n");
    return 3;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mha: internal error: %s\n", e.what());
    return 4;
  } catch (...) {
    std::fprintf(stderr, "mha: internal error: an unknown exception\n");
    return 4;
  }
  return 0;
}
