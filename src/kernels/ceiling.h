// The machine's arithmetic ceiling, measured: every pool thread runs a loop of independent FMAs
// (or AVX-512 BF16 dot products) at once. Benchmarks divide achieved FLOP/s by it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "mha/runtime.h"

namespace mha::detail {

// One thread's peak loop: `iters` iterations of independent multiply-adds; returns the flops done.
// And one thread's streaming read of n floats (returns their sum, to keep the loads): front to back
// (streams = 1), or as `streams` equal parts read side by side, each asking 4 KB ahead into L2.
namespace generic {
double peak_fma_loop(std::int64_t iters);
float read_loop(const float* p, std::int64_t n, int streams);
}  // namespace generic
namespace avx2 {
double peak_fma_loop(std::int64_t iters);
float read_loop(const float* p, std::int64_t n, int streams);
}  // namespace avx2
namespace avx512 {
double peak_fma_loop(std::int64_t iters);
float read_loop(const float* p, std::int64_t n, int streams);
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
// buffer of `bytes` (default 512 MiB, far beyond any L3 here) with the ISA's widest loads, front to
// back and as 8 prefetched streams; the best of `runs` passes of each. The ceiling of memory-bound
// kernels such as decoding. On a 2-core Zen 4, one stream read 35-48 GB/s and 8 streams 60-64 in
// the same runs, and both ~35 in the host's slow minutes.
double measure_read_bandwidth_gbps(Isa isa, std::size_t bytes = std::size_t(512) << 20, int runs = 5);

// The same read over given memory (each thread its share of every region, 64-byte aligned): a
// benchmark's ceiling on the very pages its kernel reads. A VM's memory need not be uniform: on a
// 2-core Zen 4 guest, fresh 512 MiB buffers read at 35 or at 65 GB/s from one process to the next.
struct ReadRegion {
  const void* p;
  std::size_t bytes;
};
double measure_read_bandwidth_gbps(Isa isa, const std::vector<ReadRegion>& regions, int runs = 3);

}  // namespace mha::detail
