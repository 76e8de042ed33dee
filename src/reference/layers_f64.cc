// Float64 references of the layers, written from the definitions (no shared code with the paths
// under test beyond mask broadcasting).
#include <cmath>
#include <limits>

#include "api/validate.h"
#include "mha/reference.h"
#include "runtime/dtype_convert.h"
#include "runtime/thread_pool.h"

namespace mha::reference {

namespace {

using Vec = std::vector<double>;

// y[m, n] = x[m, k] · W[n, k]ᵀ + b[n], in double.
Vec linear(const Vec& x, const std::vector<float>& w, const std::vector<float>& b, std::int64_t m,
           std::int64_t n, std::int64_t k) {
  Vec y(std::size_t(m * n));
  detail::global_pool()->parallel_for(m, [&](std::int64_t i) {
    for (std::int64_t j = 0; j < n; ++j) {
      double s[4] = {0, 0, 0, 0};  // four partial sums so the loop vectorizes
      std::int64_t p = 0;
      for (; p + 4 <= k; p += 4)
        for (int u = 0; u < 4; ++u)
          s[u] += x[std::size_t(i * k + p + u)] * double(w[std::size_t(j * k + p + u)]);
      for (; p < k; ++p) s[0] += x[std::size_t(i * k + p)] * double(w[std::size_t(j * k + p)]);
      y[std::size_t(i * n + j)] =
          (s[0] + s[1]) + (s[2] + s[3]) + (b.empty() ? 0.0 : double(b[std::size_t(j)]));
    }
  });
  return y;
}

Vec widen(const float* x, std::int64_t n) { return Vec(x, x + n); }

// Rotates heads [batch, seq, heads, dim] of `t` by the direct formula.
void rope(Vec& t, const RopeConfig& r, std::int64_t batch, std::int64_t seq, std::int64_t heads,
          std::int64_t dim, std::span<const std::int32_t> positions) {
  const std::int64_t half = r.rotary_dim / 2;
  for (std::int64_t b = 0; b < batch; ++b)
    for (std::int64_t s = 0; s < seq; ++s) {
      const double pos = double(s + (positions.empty() ? 0 : positions[std::size_t(b)]));
      for (std::int64_t h = 0; h < heads; ++h) {
        double* x = t.data() + ((b * seq + s) * heads + h) * dim;
        for (std::int64_t i = 0; i < half; ++i) {
          const double angle = pos * std::pow(r.theta, -2.0 * double(i) / double(r.rotary_dim));
          const std::int64_t a = r.style == RopeStyle::interleaved ? 2 * i : i;
          const std::int64_t c = r.style == RopeStyle::interleaved ? 2 * i + 1 : i + half;
          const double xa = x[a], xc = x[c];
          x[a] = xa * std::cos(angle) - xc * std::sin(angle);
          x[c] = xa * std::sin(angle) + xc * std::cos(angle);
        }
      }
    }
}

// Attention over row-major [batch, seq, heads, dim] q and [batch, seq, kv_heads, dim] k, v.
Vec attend(const Vec& q, const Vec& k, const Vec& v, std::int64_t batch, std::int64_t seq, std::int64_t hq,
           std::int64_t hkv, std::int64_t dim, bool causal, const Tensor* mask) {
  std::array<std::int64_t, 4> ms{};
  if (mask != nullptr) ms = detail::check_mask("reference", *mask, batch, hq, seq, seq).strides;
  Vec out(std::size_t(batch * seq * hq * dim));
  const double scale = 1.0 / std::sqrt(double(dim));
  detail::global_pool()->parallel_for(batch * hq, [&](std::int64_t item) {
    const std::int64_t b = item / hq, h = item % hq, kvh = h / (hq / hkv);
    Vec s(static_cast<std::size_t>(seq));
    for (std::int64_t i = 0; i < seq; ++i) {
      const double* qi = q.data() + ((b * seq + i) * hq + h) * dim;
      double mx = -std::numeric_limits<double>::infinity();
      for (std::int64_t j = 0; j < seq; ++j) {
        const double* kj = k.data() + ((b * seq + j) * hkv + kvh) * dim;
        double dot = 0;
        for (std::int64_t d = 0; d < dim; ++d) dot += qi[d] * kj[d];
        double x = dot * scale;
        if (mask != nullptr)
          x += double(
              detail::load_f32(mask->data, mask->dtype, b * ms[0] + h * ms[1] + i * ms[2] + j * ms[3]));
        if (causal && j > i) x = -std::numeric_limits<double>::infinity();
        s[std::size_t(j)] = x;
        mx = std::max(mx, x);
      }
      double* o = out.data() + ((b * seq + i) * hq + h) * dim;
      if (mx == -std::numeric_limits<double>::infinity()) continue;  // every key masked: zeros
      double sum = 0;
      for (double& x : s) sum += x = std::exp(x - mx);
      for (std::int64_t j = 0; j < seq; ++j) {
        const double pj = s[std::size_t(j)] / sum;
        const double* vj = v.data() + ((b * seq + j) * hkv + kvh) * dim;
        for (std::int64_t d = 0; d < dim; ++d) o[d] += pj * vj[d];
      }
    }
  });
  return out;
}

}  // namespace

std::vector<double> self_attention_f64(const SelfAttentionWeights& w, bool causal, const float* x,
                                       std::int64_t batch, std::int64_t n) {
  const Vec xd = widen(x, batch * n * w.d_in);
  const Vec q = linear(xd, w.w_query, {}, batch * n, w.d_out, w.d_in);
  const Vec k = linear(xd, w.w_key, {}, batch * n, w.d_out, w.d_in);
  const Vec v = linear(xd, w.w_value, {}, batch * n, w.d_out, w.d_in);
  return attend(q, k, v, batch, n, 1, 1, w.d_out, causal, nullptr);
}

std::vector<double> multi_head_attention_f64(const MultiHeadAttentionConfig& config,
                                             const MultiHeadAttentionWeights& w, const float* x,
                                             std::int64_t batch, std::int64_t seq, const Tensor* mask,
                                             std::span<const std::int32_t> positions) {
  const MultiHeadAttentionConfig c = config.resolved();
  const std::int64_t rows = batch * seq, dh = c.head_dim;
  const Vec xd = widen(x, rows * c.hidden);
  Vec q = linear(xd, w.w_query, w.b_query, rows, c.heads * dh, c.hidden);
  Vec k = linear(xd, w.w_key, w.b_key, rows, c.kv_heads * dh, c.hidden);
  const Vec v = linear(xd, w.w_value, w.b_value, rows, c.kv_heads * dh, c.hidden);
  if (c.rope) {
    rope(q, *c.rope, batch, seq, c.heads, dh, positions);
    rope(k, *c.rope, batch, seq, c.kv_heads, dh, positions);
  }
  const Vec ctx = attend(q, k, v, batch, seq, c.heads, c.kv_heads, dh, c.causal, mask);
  return linear(ctx, w.w_out, w.b_out, rows, c.hidden, c.heads * dh);
}

}  // namespace mha::reference
