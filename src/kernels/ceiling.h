// The machine's arithmetic ceiling, measured: every pool thread runs a loop of independent FMAs
// (or AVX-512 BF16 dot products) at once. Benchmarks divide achieved FLOP/s by it.
#pragma once

#include <cstddef>
#include <cstdint>

#include "mha/runtime.h"

namespace mha::detail {

// One thread's peak loop: `iters` iterations of independent multiply-adds; returns the flops done.
// And one thread's streaming read of n floats (returns their sum, to keep the loads).
namespace generic {
double peak_fma_loop(std::int64_t iters);
float read_loop(const float* p, std::int64_t n);
}  // namespace generic
namespace avx2 {
double peak_fma_loop(std::int64_t iters);
float read_loop(const float* p, std::int64_t n);
}  // namespace avx2
namespace avx512 {
double peak_fma_loop(std::int64_t iters);
float read_loop(const float* p, std::int64_t n);
}  // namespace avx512
namespace avx512bf16 {
double peak_dot_loop(std::int64_t iters);
}

enum class PeakKind { fp32_fma, bf16_dot };

// GFLOP/s of the loop for `isa` on all pool threads together: the best of several runs of about
// `seconds` each (a ceiling is what the machine can do; interference from other tenants only
// lowers a run). bf16_dot needs an ISA with AVX-512 BF16.
double measure_ceiling_gflops(Isa isa, PeakKind kind, double seconds = 0.1);

// GB/s of main-memory reads on all pool threads together: each thread streams its share of a
// buffer of `bytes` (default 512 MiB, far beyond any L3 here) with the ISA's widest loads; the
// best of `runs` passes. The ceiling of memory-bound kernels such as decoding.
double measure_read_bandwidth_gbps(Isa isa, std::size_t bytes = std::size_t(512) << 20, int runs = 5);

}  // namespace mha::detail
