// The bf16 dot-product peak loop: vdpbf16ps, 32 bf16 products (64 flops) per instruction.
#include <immintrin.h>

#include "kernels/ceiling.h"

namespace mha::detail::avx512bf16 {

double peak_dot_loop(std::int64_t iters) {
  constexpr int ACC = 24;
  __m512 acc[ACC];
#pragma GCC unroll 32
  for (int i = 0; i < ACC; ++i) acc[i] = _mm512_set1_ps(float(i));
  const __m512bh a = (__m512bh)_mm512_set1_epi32(0x3f803f80);  // (1.0, 1.0) in bf16
  const __m512bh b = (__m512bh)_mm512_set1_epi32(0x33d633d6);  // (1e-7, 1e-7) in bf16
  for (std::int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 32
    for (int i = 0; i < ACC; ++i) acc[i] = _mm512_dpbf16_ps(acc[i], a, b);
    __asm__ volatile("" : "+v"(acc[0]));
  }
  __m512 sum = acc[0];
#pragma GCC unroll 32
  for (int i = 1; i < ACC; ++i) sum = _mm512_add_ps(sum, acc[i]);
  float lanes[16];
  _mm512_storeu_ps(lanes, sum);
  volatile float sink = lanes[0];
  (void)sink;
  return double(iters) * ACC * 16 * 4;
}

}  // namespace mha::detail::avx512bf16
