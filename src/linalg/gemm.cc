#include "linalg/gemm.h"

#include <cblas.h>

#include <algorithm>
#include <mutex>

#include "linalg/elementwise.h"
#include "runtime/thread_pool.h"

namespace mha::detail {

namespace {

// Tile sizes of the fixed grid: large enough that OpenBLAS's packing is amortized (measured on
// Zen 4: 256 × 1024 tiles reach ~90% of OpenBLAS's own two-thread sgemm), small enough to give
// both threads work on BERT-size projections.
constexpr std::int64_t kTileRows = 256;
constexpr std::int64_t kTileCols = 1024;
// Up to this many rows, a product runs as matrix-vector products.
constexpr std::int64_t kGemvRows = 2;

// OpenBLAS's own threads would race mha's pool for the cores and make results depend on the
// thread count; mha gives each tile to exactly one thread instead.
void blas_single_threaded() {
  static std::once_flag once;
  std::call_once(once, [] { openblas_set_num_threads(1); });
}

}  // namespace

void gemm_serial(std::int64_t m, std::int64_t n, std::int64_t k, float alpha, Matrix a, Matrix b, float beta,
                 float* c, std::int64_t ldc) {
  if (m == 0 || n == 0) return;
  blas_single_threaded();
  if (k == 0) {  // BLAS leaves c untouched for k = 0 only when beta = 1
    for (std::int64_t i = 0; i < m; ++i)
      for (std::int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == 0 ? 0.f : beta * c[i * ldc + j];
    return;
  }
  if (m <= kGemvRows) {
    // A row or two (a decode step's projections): one matrix-vector product per row reads b once
    // from memory, where sgemm would first pack all of b (three passes over the weights).
    for (std::int64_t i = 0; i < m; ++i) {
      const float* x = a.transposed ? a.data + i : a.data + i * a.ld;
      const int incx = a.transposed ? int(a.ld) : 1;
      if (b.transposed)  // b stored [n, k]: c_i = b_stored · x
        cblas_sgemv(CblasRowMajor, CblasNoTrans, int(n), int(k), alpha, b.data, int(b.ld), x, incx, beta,
                    c + i * ldc, 1);
      else  // b stored [k, n]: c_i = b_storedᵀ · x
        cblas_sgemv(CblasRowMajor, CblasTrans, int(k), int(n), alpha, b.data, int(b.ld), x, incx, beta,
                    c + i * ldc, 1);
    }
    return;
  }
  cblas_sgemm(CblasRowMajor, a.transposed ? CblasTrans : CblasNoTrans,
              b.transposed ? CblasTrans : CblasNoTrans, int(m), int(n), int(k), alpha, a.data, int(a.ld),
              b.data, int(b.ld), beta, c, int(ldc));
}

void gemm(std::int64_t m, std::int64_t n, std::int64_t k, Matrix a, Matrix b, float* c, std::int64_t ldc,
          const Epilogue& e) {
  // Columns split evenly (1152 = 2 × 576, not 1024 + a thin 128), in multiples of 64.
  const std::int64_t tiles_n = (n + kTileCols - 1) / kTileCols;
  const std::int64_t tile_cols = std::min(n, ((n + tiles_n - 1) / tiles_n + 63) / 64 * 64);
  const std::int64_t tiles_m = (m + kTileRows - 1) / kTileRows;
  global_pool()->parallel_for(tiles_m * tiles_n, [&](std::int64_t t) {
    const std::int64_t i0 = (t / tiles_n) * kTileRows, j0 = (t % tiles_n) * tile_cols;
    const std::int64_t rows = std::min(kTileRows, m - i0), cols = std::min(tile_cols, n - j0);
    float* ct = c + i0 * ldc + j0;
    float beta = 0;
    if (e.residual != nullptr || e.bias != nullptr) {  // c starts as residual + bias, sgemm adds to it
      for (std::int64_t i = 0; i < rows; ++i) {
        float* ci = ct + i * ldc;
        const float* ri = e.residual != nullptr ? e.residual + (i0 + i) * e.ld_residual + j0 : nullptr;
        for (std::int64_t j = 0; j < cols; ++j)
          ci[j] = (ri != nullptr ? ri[j] : 0.f) + (e.bias != nullptr ? e.bias[j0 + j] : 0.f);
      }
      beta = 1;
    }
    const Matrix at{a.transposed ? a.data + i0 : a.data + i0 * a.ld, a.ld, a.transposed};
    const Matrix bt{b.transposed ? b.data + j0 * b.ld : b.data + j0, b.ld, b.transposed};
    gemm_serial(rows, cols, k, 1.f, at, bt, beta, ct, ldc);
    if (e.gelu)
      for (std::int64_t i = 0; i < rows; ++i) gelu_erf(ct + i * ldc, cols);
  });
}

}  // namespace mha::detail
