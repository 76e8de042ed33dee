// Option checks CLI11 does not make: integers that must not saturate, numbers that must be finite.
#pragma once

#include <CLI/CLI.hpp>
#include <string>

namespace mha::cli {

// On every INT/UINT option of `app` and its subcommands: the text must be a whole decimal integer
// within int64 (uint64) range. CLI11 2.1 parses with strtoll, which saturates
// 99999999999999999999 to INT64_MAX and accepts "-1" for an unsigned seed.
void require_exact_integers(CLI::App& app);

// A finite number in [lo, hi]: CLI::Range lets NaN through (every comparison with it is false).
CLI::Validator finite_range(double lo, double hi);

}  // namespace mha::cli
