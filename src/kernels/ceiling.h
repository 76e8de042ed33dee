// The machine's arithmetic ceiling, measured: every pool thread runs a loop of independent FMAs
// (or AVX-512 BF16 dot products) at once. Benchmarks divide achieved FLOP/s by it.
#pragma once

#include <cstdint>

#include "mha/runtime.h"

namespace mha::detail {

// One thread's peak loop: `iters` iterations of independent multiply-adds; returns the flops done.
namespace generic {
double peak_fma_loop(std::int64_t iters);
}
namespace avx2 {
double peak_fma_loop(std::int64_t iters);
}
namespace avx512 {
double peak_fma_loop(std::int64_t iters);
}
namespace avx512bf16 {
double peak_dot_loop(std::int64_t iters);
}

enum class PeakKind { fp32_fma, bf16_dot };

// GFLOP/s of the loop for `isa` on all pool threads together: the best of several runs of about
// `seconds` each (a ceiling is what the machine can do; interference from other tenants only
// lowers a run). bf16_dot needs an ISA with AVX-512 BF16.
double measure_ceiling_gflops(Isa isa, PeakKind kind, double seconds = 0.1);

}  // namespace mha::detail
