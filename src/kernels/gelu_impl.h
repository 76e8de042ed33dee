// The exact-erf GELU of BERT's FFN over simd.h's vector type, applied to product tiles in cache.
// It is the one transcendental per FFN element (intermediate = 4·hidden of them per token and
// layer), so at MiniLM's size it is worth the widest vectors: an SSE2-only version cost 12 % of
// the encoder's time, this one (AVX-512, FMAs) about a sixth of that.
//
// GELU(v) = 0.5·v·erfc(−v/√2) = max(v, 0) − 0.5·|v|·erfc(|v|/√2), written so that both signs share
// one expression (no select) and the subtracted term is always the small one. erfc is Numerical
// Recipes' erfcc (Chebyshev-fitted, relative error < 1.2e-7): t = 1/(1 + z/2),
// erfc(z) = t·exp(P(t) − z²). |v| is clamped at 16, beyond which the term is below exp's floor
// anyway: that keeps it 0 rather than inf·0 at v = ±inf. NaN propagates through max(0, v).
#ifndef MHA_KERNEL_NS
#error "define MHA_KERNEL_NS before including gelu_impl.h"
#endif

#include "kernels/elementwise.h"
#include "kernels/simd.h"

namespace mha::detail::MHA_KERNEL_NS {

namespace {

Vec::T gelu(Vec::T v) {
  const Vec::T zero = Vec::zero();
  const Vec::T a = Vec::min(Vec::max(Vec::sub(zero, v), v), Vec::set1(16.0f));  // |v| clamped
  const Vec::T z = Vec::mul(a, Vec::set1(0.70710678118654752f));
  const Vec::T t = Vec::div(Vec::set1(1.0f), Vec::fmadd(z, Vec::set1(0.5f), Vec::set1(1.0f)));
  Vec::T p = Vec::set1(0.17087277f);
  p = Vec::fmadd(p, t, Vec::set1(-0.82215223f));
  p = Vec::fmadd(p, t, Vec::set1(1.48851587f));
  p = Vec::fmadd(p, t, Vec::set1(-1.13520398f));
  p = Vec::fmadd(p, t, Vec::set1(0.27886807f));
  p = Vec::fmadd(p, t, Vec::set1(-0.18628806f));
  p = Vec::fmadd(p, t, Vec::set1(0.09678418f));
  p = Vec::fmadd(p, t, Vec::set1(0.37409196f));
  p = Vec::fmadd(p, t, Vec::set1(1.00002368f));
  p = Vec::fmadd(p, t, Vec::set1(-1.26551223f));
  const Vec::T y = Vec::mul(t, exp(Vec::fnmadd(z, z, p)));
  return Vec::fnmadd(Vec::mul(Vec::set1(0.5f), a), y, Vec::max(zero, v));
}

}  // namespace

void gelu_erf(float* x, std::int64_t n) {
  std::int64_t i = 0;
  for (; i + Vec::N <= n; i += Vec::N) Vec::store(x + i, gelu(Vec::load(x + i)));
  if (i < n) {  // the tail through a zero-padded vector
    float tail[Vec::N] = {};
    for (std::int64_t j = i; j < n; ++j) tail[j - i] = x[j];
    Vec::store(tail, gelu(Vec::load(tail)));
    for (std::int64_t j = i; j < n; ++j) x[j] = tail[j - i];
  }
}

}  // namespace mha::detail::MHA_KERNEL_NS
