// Row-wise steps between the products of a transformer layer: the exact-erf GELU (a per-ISA kernel,
// kernels/gelu_impl.h) and LayerNorm; both run inside product tiles or per row block, while the
// data is in cache.
#pragma once

#include <cstdint>

namespace mha::detail {

// x ← 0.5·x·(1 + erf(x/√2)) in place, through erfc so that the relative error stays within a few
// 1e-7 for every x, on the active ISA's kernel.
void gelu_erf(float* x, std::int64_t n);

// Each of `rows` rows of x (n values, leading dimension ld) ← (x − mean)/√(var + eps)·gamma + beta,
// mean and the biased variance accumulated in double. Runs on the global pool over fixed row blocks.
void layer_norm_rows(float* x, std::int64_t rows, std::int64_t n, std::int64_t ld, const float* gamma,
                     const float* beta, double eps);

}  // namespace mha::detail
