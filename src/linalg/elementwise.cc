#include "linalg/elementwise.h"

#include <algorithm>
#include <cmath>
#include <initializer_list>

#include <immintrin.h>

#include "runtime/thread_pool.h"

namespace mha::detail {

namespace {

// SSE2 (the x86-64 baseline) by hand: the compiler will not if-convert the selects of a scalar
// version, so it would not vectorize at all.
using V = __m128;

V poly(V t, std::initializer_list<float> c) {  // Horner, highest coefficient first
  V p = _mm_set1_ps(*c.begin());
  for (auto it = c.begin() + 1; it != c.end(); ++it) p = _mm_add_ps(_mm_mul_ps(p, t), _mm_set1_ps(*it));
  return p;
}

// exp(x) by range reduction x = n·ln2 + r, a degree-7 Taylor polynomial of exp(r) and 2^n put in
// the exponent field (the kernels' vector exp): about 2 ulp, exactly 0 below −87, NaN kept.
V exp_approx(V x) {
  const V lo = _mm_set1_ps(-87.0f);
  const V xc = _mm_max_ps(lo, x);  // NaN x stays NaN: maxps returns its second operand then
  const V shifter = _mm_set1_ps(12582912.0f);  // 1.5·2^23: adding it rounds to an integer
  const V n = _mm_sub_ps(_mm_add_ps(_mm_mul_ps(xc, _mm_set1_ps(1.44269504088896341f)), shifter), shifter);
  V r = _mm_sub_ps(xc, _mm_mul_ps(n, _mm_set1_ps(0.693145751953125f)));  // n·ln2_hi is exact
  r = _mm_sub_ps(r, _mm_mul_ps(n, _mm_set1_ps(1.428606765330187045e-06f)));
  const V p = poly(r, {1.0f / 5040, 1.0f / 720, 1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f});
  const V scale = _mm_castsi128_ps(_mm_slli_epi32(_mm_add_epi32(_mm_cvtps_epi32(n), _mm_set1_epi32(127)), 23));
  return _mm_andnot_ps(_mm_cmplt_ps(x, lo), _mm_mul_ps(p, scale));
}

// 0.5·v·erfc(−v/√2) with erfc from Numerical Recipes' erfcc (Chebyshev-fitted, relative error
// < 1.2e-7): t = 1/(1 + |z|/2), erfc(|z|) = t·exp(−z² + P(t)), erfc(z) = 2 − erfc(|z|) for z < 0.
V gelu(V v) {
  const V a = _mm_mul_ps(_mm_andnot_ps(_mm_set1_ps(-0.0f), v), _mm_set1_ps(0.70710678118654752f));
  const V t = _mm_div_ps(_mm_set1_ps(1.0f), _mm_add_ps(_mm_set1_ps(1.0f), _mm_mul_ps(_mm_set1_ps(0.5f), a)));
  const V p = poly(t, {0.17087277f, -0.82215223f, 1.48851587f, -1.13520398f, 0.27886807f, -0.18628806f,
                       0.09678418f, 0.37409196f, 1.00002368f, -1.26551223f});
  const V y = _mm_mul_ps(t, exp_approx(_mm_sub_ps(p, _mm_mul_ps(a, a))));
  const V positive = _mm_cmpgt_ps(v, _mm_setzero_ps());
  const V erfc = _mm_or_ps(_mm_and_ps(positive, _mm_sub_ps(_mm_set1_ps(2.0f), y)), _mm_andnot_ps(positive, y));
  return _mm_mul_ps(_mm_mul_ps(_mm_set1_ps(0.5f), v), erfc);
}

}  // namespace

void gelu_erf(float* x, std::int64_t n) {
  std::int64_t i = 0;
  for (; i + 4 <= n; i += 4) _mm_storeu_ps(x + i, gelu(_mm_loadu_ps(x + i)));
  if (i < n) {  // the tail through a zero-padded vector
    alignas(16) float tail[4] = {0, 0, 0, 0};
    std::copy(x + i, x + n, tail);
    _mm_store_ps(tail, gelu(_mm_load_ps(tail)));
    std::copy(tail, tail + (n - i), x + i);
  }
}

void layer_norm_rows(float* x, std::int64_t rows, std::int64_t n, std::int64_t ld, const float* gamma,
                     const float* beta, double eps) {
  constexpr std::int64_t kBlock = 64;  // rows per task: fixed, so the split never depends on threads
  global_pool()->parallel_for((rows + kBlock - 1) / kBlock, [&](std::int64_t blk) {
    for (std::int64_t i = blk * kBlock; i < std::min(rows, (blk + 1) * kBlock); ++i) {
      float* r = x + i * ld;
      // Four partial sums: the loops vectorize and the order stays fixed.
      double s[4] = {0, 0, 0, 0}, q[4] = {0, 0, 0, 0};
      std::int64_t j = 0;
      for (; j + 4 <= n; j += 4)
        for (int u = 0; u < 4; ++u) s[u] += r[j + u];
      for (; j < n; ++j) s[0] += r[j];
      const double mean = ((s[0] + s[1]) + (s[2] + s[3])) / double(n);
      for (j = 0; j + 4 <= n; j += 4)
        for (int u = 0; u < 4; ++u) q[u] += (r[j + u] - mean) * (r[j + u] - mean);
      for (; j < n; ++j) q[0] += (r[j] - mean) * (r[j] - mean);
      const double sq = (q[0] + q[1]) + (q[2] + q[3]);
      const float m = float(mean), rstd = float(1.0 / std::sqrt(sq / double(n) + eps));
      for (j = 0; j < n; ++j) r[j] = (r[j] - m) * rstd * gamma[j] + beta[j];
    }
  });
}

}  // namespace mha::detail
