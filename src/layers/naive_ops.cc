#include "layers/naive_ops.h"

#include <cmath>
#include <limits>

#include "runtime/thread_pool.h"

namespace mha::detail::naive {

void matmul_nt(const float* a, const float* b, const float* bias, float* c, std::int64_t m, std::int64_t n,
               std::int64_t k) {
  global_pool()->parallel_for(m, [&](std::int64_t i) {
    for (std::int64_t j = 0; j < n; ++j) {
      float dot = bias != nullptr ? bias[j] : 0.f;
      for (std::int64_t p = 0; p < k; ++p) dot += a[i * k + p] * b[j * k + p];
      c[i * n + j] = dot;
    }
  });
}

void matmul_nn(const float* a, const float* b, float* c, std::int64_t m, std::int64_t n, std::int64_t k) {
  global_pool()->parallel_for(m, [&](std::int64_t i) {
    float* row = c + i * n;
    for (std::int64_t j = 0; j < n; ++j) row[j] = 0;
    for (std::int64_t p = 0; p < k; ++p)
      for (std::int64_t j = 0; j < n; ++j) row[j] += a[i * k + p] * b[p * n + j];
  });
}

void softmax_rows(float* s, std::int64_t m, std::int64_t n) {
  global_pool()->parallel_for(m, [&](std::int64_t i) {
    float* row = s + i * n;
    float mx = -std::numeric_limits<float>::infinity();
    for (std::int64_t j = 0; j < n; ++j) mx = std::max(mx, row[j]);
    if (mx == -std::numeric_limits<float>::infinity()) {
      for (std::int64_t j = 0; j < n; ++j) row[j] = 0;
      return;
    }
    float sum = 0;
    for (std::int64_t j = 0; j < n; ++j) sum += row[j] = std::exp(row[j] - mx);
    for (std::int64_t j = 0; j < n; ++j) row[j] /= sum;
  });
}

}  // namespace mha::detail::naive
