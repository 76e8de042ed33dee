// Dense products for the layers, through OpenBLAS (sgemm). mha writes no GEMM of its own.
//
// Determinism: OpenBLAS runs single-threaded inside mha, and a product is cut into a fixed grid of
// tiles that depends only on its shape, never on the thread count; the tiles run on mha's pool.
// Each output element is therefore computed by the same sgemm call with the same arguments
// whatever the thread count, so results are bitwise identical for 1 or N threads.
#pragma once

#include <cstdint>

namespace mha::detail {

// Row-major operands with leading dimensions in elements.
struct Matrix {
  const float* data;
  std::int64_t ld;
  bool transposed = false;  // read as the transpose of the stored [cols, rows] matrix
};

// What is folded into a product tile while it is in cache, in this order: c starts as the residual
// plus the bias (so sgemm adds the product in one pass), and GELU is applied after.
struct Epilogue {
  const float* bias = nullptr;      // [n], broadcast over rows
  const float* residual = nullptr;  // [m, n] with leading dimension ld_residual (may be c itself)
  std::int64_t ld_residual = 0;
  bool gelu = false;                // the exact-erf GELU of BERT
};

// c[m, n] = epilogue(a[m, k] · b[k, n]), overwriting c. Runs on the global pool; called from
// inside a pool task it runs inline on that thread.
void gemm(std::int64_t m, std::int64_t n, std::int64_t k, Matrix a, Matrix b, float* c, std::int64_t ldc,
          const Epilogue& epilogue = {});

// The same product on the calling thread only: c = alpha·a·b + beta·c.
void gemm_serial(std::int64_t m, std::int64_t n, std::int64_t k, float alpha, Matrix a, Matrix b, float beta,
                 float* c, std::int64_t ldc);

}  // namespace mha::detail
