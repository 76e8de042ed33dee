// The plain loops of the layers' naive paths: what a first port of the tutorials writes. Rows are
// spread over the pool (same thread count as the optimized path), nothing else is tuned.
#pragma once

#include <cstdint>

namespace mha::detail::naive {

// c[m, n] = a[m, k] · b[n, k]ᵀ (+ bias[n]): one dot product per element.
void matmul_nt(const float* a, const float* b, const float* bias, float* c, std::int64_t m, std::int64_t n,
               std::int64_t k);
// c[m, n] = a[m, k] · b[k, n].
void matmul_nn(const float* a, const float* b, float* c, std::int64_t m, std::int64_t n, std::int64_t k);
// Row-wise softmax of s[m, n] in place; a row of -inf becomes zeros.
void softmax_rows(float* s, std::int64_t m, std::int64_t n);

}  // namespace mha::detail::naive
