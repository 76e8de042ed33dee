// The fp32 multiply-add peak loop over simd.h's vector type: ACC independent accumulator chains,
// enough to cover FMA latency × throughput on the ISA, and nothing else in the loop. Every loop
// over the accumulators is unrolled so they live in registers, never on the stack.
#ifndef MHA_KERNEL_NS
#error "define MHA_KERNEL_NS before including peak_impl.h"
#endif

#include "kernels/ceiling.h"
#include "kernels/simd.h"

namespace mha::detail::MHA_KERNEL_NS {

double peak_fma_loop(std::int64_t iters) {
#if defined(__AVX512F__)
  constexpr int ACC = 24;
#else
  constexpr int ACC = 12;
#endif
  Vec::T acc[ACC];
#pragma GCC unroll 32
  for (int i = 0; i < ACC; ++i) acc[i] = Vec::set1(float(i));
  const Vec::T a = Vec::set1(0.999999f), b = Vec::set1(1e-7f);
  for (std::int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 32
    for (int i = 0; i < ACC; ++i) acc[i] = Vec::fmadd(acc[i], a, b);
    __asm__ volatile("" : "+v"(acc[0]));  // keep the loop from being collapsed
  }
  Vec::T sum = acc[0];
#pragma GCC unroll 32
  for (int i = 1; i < ACC; ++i) sum = Vec::add(sum, acc[i]);
  float lanes[Vec::N];
  Vec::store(lanes, sum);
  volatile float sink = lanes[0];
  (void)sink;
  return double(iters) * ACC * Vec::N * 2;
}

// Streams n floats (n a multiple of 4·Vec::N·streams) through vector loads with four independent
// sums, the way a memory-bound kernel reads: returns the sum so the loads cannot be dropped. Several
// streams read their parts a 64-byte line at a time each, in turn, and ask for the line 4 KB ahead.
float read_loop(const float* p, std::int64_t n, int streams) {
  Vec::T a0 = Vec::zero(), a1 = Vec::zero(), a2 = Vec::zero(), a3 = Vec::zero();
  if (streams == 1) {
    for (std::int64_t i = 0; i < n; i += 4 * Vec::N) {
      a0 = Vec::add(a0, Vec::load(p + i));
      a1 = Vec::add(a1, Vec::load(p + i + Vec::N));
      a2 = Vec::add(a2, Vec::load(p + i + 2 * Vec::N));
      a3 = Vec::add(a3, Vec::load(p + i + 3 * Vec::N));
    }
  } else {
    constexpr std::int64_t line = 64 / sizeof(float), ahead = 4096 / sizeof(float);
    const std::int64_t part = n / streams;
    for (std::int64_t i = 0; i < part; i += 2 * line)
      for (int s = 0; s < streams; ++s) {
        const float* q = p + s * part + i;
        __builtin_prefetch(q + ahead, 0, 2);
        __builtin_prefetch(q + ahead + line, 0, 2);
        for (std::int64_t j = 0; j < 2 * line; j += 2 * Vec::N) {
          a0 = Vec::add(a0, Vec::load(q + j));
          a1 = Vec::add(a1, Vec::load(q + j + Vec::N));
        }
      }
  }
  float lanes[Vec::N];
  Vec::store(lanes, Vec::add(Vec::add(a0, a1), Vec::add(a2, a3)));
  return lanes[0];
}

}  // namespace mha::detail::MHA_KERNEL_NS
