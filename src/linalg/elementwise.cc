#include "linalg/elementwise.h"

#include <algorithm>
#include <cmath>

#include "kernels/elementwise.h"
#include "runtime/thread_pool.h"

namespace mha::detail {

GeluKernel gelu_kernel(Isa isa) {
  switch (isa) {
    case Isa::avx512bf16:
    case Isa::avx512: return &avx512::gelu_erf;
    case Isa::avx2: return &avx2::gelu_erf;
    case Isa::generic: break;
  }
  return &generic::gelu_erf;
}

void gelu_erf(float* x, std::int64_t n) { gelu_kernel(active_isa())(x, n); }

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
