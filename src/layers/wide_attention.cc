#include "layers/wide_attention.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "api/validate.h"
#include "linalg/gemm.h"
#include "mha/attention.h"
#include "runtime/aligned_buffer.h"
#include "runtime/dtype_convert.h"
#include "runtime/thread_pool.h"

namespace mha::detail {

namespace {

// Query rows and keys per tile: the BLAS calls stay large enough to run near sgemm's speed while
// the score tile (128 KB) and the output block stay in L2.
constexpr std::int64_t kRows = 128;
constexpr std::int64_t kKeys = 256;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

float* thread_scratch(std::size_t floats) {
  thread_local AlignedBuffer buffer;
  buffer.resize(floats);  // grows once per thread, then steady
  return buffer.data();
}

// One task: query rows [i0, i1) of sequence b, head h, over the visible key tiles. The same online
// softmax as the flash kernels, with S = Q·Kᵀ and O += P·V as sgemm calls on the tile.
void wide_item(const AttentionParams& p, std::int64_t b, std::int64_t h, std::int64_t i0, std::int64_t i1) {
  const SeqSpan s = seq_span(p, b);
  const std::int64_t rows = i1 - i0, kvh = h / (p.hq / p.hkv);
  float* S = thread_scratch(std::size_t(kRows * kKeys + kRows * p.dv + 2 * kRows));
  float* O = S + kRows * kKeys;
  float* m = O + kRows * p.dv;
  float* l = m + kRows;
  std::fill(O, O + rows * p.dv, 0.f);
  std::fill(m, m + rows, kNegInf);
  std::fill(l, l + rows, 0.f);

  const float* q =
      static_cast<const float*>(p.q) + b * p.q_stride[0] + i0 * p.q_stride[1] + h * p.q_stride[2];
  const float* kb = static_cast<const float*>(p.k) + b * p.k_stride[0] + kvh * p.k_stride[2];
  const float* vb = static_cast<const float*>(p.v) + b * p.v_stride[0] + kvh * p.v_stride[2];
  const KeyRange r = visible_keys(p, s, i0, i1);
  for (std::int64_t j0 = r.begin; j0 < r.end; j0 += kKeys) {
    const std::int64_t keys = std::min(kKeys, r.end - j0);
    gemm_serial(rows, keys, p.d, p.scale, {q, p.q_stride[1]}, {kb + j0 * p.k_stride[1], p.k_stride[1], true},
                0.f, S, kKeys);
    for (std::int64_t i = 0; i < rows; ++i) {
      float* srow = S + i * kKeys;
      float mx = m[i];
      for (std::int64_t j = 0; j < keys; ++j) {
        float& x = srow[j];
        if (p.mask != nullptr)
          x += load_f32(p.mask, p.mask_dtype,
                        b * p.mask_stride[0] + h * p.mask_stride[1] + (i0 + i) * p.mask_stride[2] +
                            (j0 + j) * p.mask_stride[3]);
        if (!key_visible(p, s, i0 + i, j0 + j)) x = kNegInf;
        mx = std::max(mx, x);
      }
      // A row with nothing visible yet keeps m = -inf; exp against 0 then gives P = 0, not NaN.
      const float ref = mx == kNegInf ? 0.f : mx;
      const float alpha = std::exp(m[i] - ref);
      float sum = 0;
      for (std::int64_t j = 0; j < keys; ++j) sum += srow[j] = std::exp(srow[j] - ref);
      l[i] = l[i] * alpha + sum;
      m[i] = mx;
      if (alpha != 1.f)
        for (std::int64_t d = 0; d < p.dv; ++d) O[i * p.dv + d] *= alpha;
    }
    gemm_serial(rows, p.dv, keys, 1.f, {S, kKeys}, {vb + j0 * p.v_stride[1], p.v_stride[1]}, 1.f, O, p.dv);
  }
  float* out = static_cast<float*>(p.out) + b * p.out_stride[0] + i0 * p.out_stride[1] + h * p.out_stride[2];
  for (std::int64_t i = 0; i < rows; ++i) {
    const float inv = l[i] > 0 ? 1.f / l[i] : 0.f;
    for (std::int64_t d = 0; d < p.dv; ++d) out[i * p.out_stride[1] + d] = O[i * p.dv + d] * inv;
  }
}

}  // namespace

void layer_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, float scale,
                     bool causal, const Tensor* mask) {
  AttentionOptions options{.scale = scale, .causal = causal};
  if (mask != nullptr) options.mask = *mask;
  if (q.shape[3] <= kMaxHeadDim && v.shape[3] <= kMaxHeadDim) {
    attention(q, k, v, out, options);
    return;
  }
  const AttentionParams p = validate_attention("layer_attention", q, k, v, &out, options, nullptr,
                                               std::numeric_limits<std::int32_t>::max());
  const std::int64_t blocks = (p.nq + kRows - 1) / kRows;
  global_pool()->parallel_for(p.batch * p.hq * blocks, [&](std::int64_t t) {
    const std::int64_t i0 = (t % blocks) * kRows, bh = t / blocks;
    wide_item(p, bh / p.hq, bh % p.hq, i0, std::min(i0 + kRows, p.nq));
  });
}

}  // namespace mha::detail
