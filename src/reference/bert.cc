// The BERT encoder written from its definition with plain loops, for T = double (the oracle) and
// T = float (the naive same-precision yardstick of the accuracy bar). Each sequence is run on its
// own with its full score matrix: no packing, no fused products, no shared code with BertEncoder.
#include <algorithm>
#include <cmath>

#include "mha/reference.h"
#include "runtime/thread_pool.h"

namespace mha::reference {

namespace {

template <class T>
using Rows = std::vector<T>;  // row-major [rows, cols]

// y[m, n] = x[m, k] · W[n, k]ᵀ + b[n]
template <class T>
Rows<T> linear(const Rows<T>& x, const std::vector<float>& w, const std::vector<float>& b, std::int64_t m,
               std::int64_t n, std::int64_t k) {
  Rows<T> y(std::size_t(m * n));
  detail::global_pool()->parallel_for(m, [&](std::int64_t i) {
    for (std::int64_t j = 0; j < n; ++j) {
      T s = T(b[std::size_t(j)]);
      for (std::int64_t p = 0; p < k; ++p) s += x[std::size_t(i * k + p)] * T(w[std::size_t(j * k + p)]);
      y[std::size_t(i * n + j)] = s;
    }
  });
  return y;
}

template <class T>
void layer_norm(Rows<T>& x, std::int64_t m, std::int64_t n, const std::vector<float>& g,
                const std::vector<float>& b, double eps) {
  for (std::int64_t i = 0; i < m; ++i) {
    T* r = x.data() + i * n;
    T mean = 0, var = 0;
    for (std::int64_t j = 0; j < n; ++j) mean += r[j];
    mean /= T(n);
    for (std::int64_t j = 0; j < n; ++j) var += (r[j] - mean) * (r[j] - mean);
    var /= T(n);
    const T rstd = T(1) / std::sqrt(var + T(eps));
    for (std::int64_t j = 0; j < n; ++j) r[j] = (r[j] - mean) * rstd * T(g[std::size_t(j)]) + T(b[std::size_t(j)]);
  }
}

// One sequence of `len` tokens through the encoder: [len, hidden].
template <class T>
Rows<T> encode_one(const BertConfig& c, const BertWeights& w, const std::int32_t* ids, const std::int32_t* types,
                   std::int64_t len) {
  const std::int64_t h = c.hidden, heads = c.heads, dh = h / heads;
  Rows<T> x(std::size_t(len * h));
  for (std::int64_t t = 0; t < len; ++t)
    for (std::int64_t j = 0; j < h; ++j)
      x[std::size_t(t * h + j)] = T(w.word[std::size_t(ids[t] * h + j)]) +
                                  T(w.token_type[std::size_t((types ? types[t] : 0) * h + j)]) +
                                  T(w.position[std::size_t(t * h + j)]);
  layer_norm(x, len, h, w.ln_gamma, w.ln_beta, c.layer_norm_eps);
  for (const BertLayerWeights& l : w.layers) {
    const MultiHeadAttentionWeights& a = l.attention;
    const Rows<T> q = linear(x, a.w_query, a.b_query, len, h, h), k = linear(x, a.w_key, a.b_key, len, h, h),
                  v = linear(x, a.w_value, a.b_value, len, h, h);
    Rows<T> ctx(static_cast<std::size_t>(len * h)), s(static_cast<std::size_t>(len));
    const T scale = T(1) / std::sqrt(T(dh));
    for (std::int64_t hd = 0; hd < heads; ++hd)
      for (std::int64_t i = 0; i < len; ++i) {
        T mx = -INFINITY, sum = 0;
        for (std::int64_t j = 0; j < len; ++j) {
          T dot = 0;
          for (std::int64_t d = 0; d < dh; ++d) dot += q[std::size_t(i * h + hd * dh + d)] * k[std::size_t(j * h + hd * dh + d)];
          s[std::size_t(j)] = dot * scale;
          mx = std::max(mx, s[std::size_t(j)]);
        }
        for (T& e : s) sum += e = std::exp(e - mx);
        for (std::int64_t j = 0; j < len; ++j)
          for (std::int64_t d = 0; d < dh; ++d)
            ctx[std::size_t(i * h + hd * dh + d)] += s[std::size_t(j)] / sum * v[std::size_t(j * h + hd * dh + d)];
      }
    Rows<T> h1 = linear(ctx, a.w_out, a.b_out, len, h, h);
    for (std::size_t i = 0; i < h1.size(); ++i) h1[i] += x[i];
    layer_norm(h1, len, h, l.ln1_gamma, l.ln1_beta, c.layer_norm_eps);
    Rows<T> f = linear(h1, l.w_in, l.b_in, len, c.intermediate, h);
    for (T& e : f) e = T(0.5) * e * (T(1) + std::erf(e / std::sqrt(T(2))));
    x = linear(f, l.w_out, l.b_out, len, h, c.intermediate);
    for (std::size_t i = 0; i < x.size(); ++i) x[i] += h1[i];
    layer_norm(x, len, h, l.ln2_gamma, l.ln2_beta, c.layer_norm_eps);
  }
  return x;
}

template <class T>
std::vector<T> bert(const BertConfig& c, const BertWeights& w, std::span<const std::int32_t> ids,
                    std::span<const std::int32_t> cu, std::span<const std::int32_t> types, bool pooled) {
  const std::int64_t h = c.hidden, batch = std::int64_t(cu.size()) - 1;
  std::vector<T> out(std::size_t(pooled ? batch * h : std::int64_t(ids.size()) * h));
  for (std::int64_t b = 0; b < batch; ++b) {
    const std::int64_t begin = cu[std::size_t(b)], len = cu[std::size_t(b) + 1] - begin;
    const Rows<T> x = encode_one<T>(c, w, ids.data() + begin, types.empty() ? nullptr : types.data() + begin, len);
    if (!pooled) {
      std::copy(x.begin(), x.end(), out.begin() + begin * h);
      continue;
    }
    T* e = out.data() + b * h;
    for (std::int64_t t = 0; t < len; ++t)
      for (std::int64_t j = 0; j < h; ++j) e[j] += x[std::size_t(t * h + j)] / T(len);
    T norm = 0;
    for (std::int64_t j = 0; j < h; ++j) norm += e[j] * e[j];
    norm = std::max(std::sqrt(norm), T(1e-12));
    for (std::int64_t j = 0; j < h; ++j) e[j] /= norm;
  }
  return out;
}

}  // namespace

std::vector<double> bert_f64(const BertConfig& config, const BertWeights& weights, std::span<const std::int32_t> ids,
                             std::span<const std::int32_t> cu_seqlens, bool pooled,
                             std::span<const std::int32_t> token_types) {
  return bert<double>(config, weights, ids, cu_seqlens, token_types, pooled);
}

std::vector<float> bert_naive(const BertConfig& config, const BertWeights& weights, std::span<const std::int32_t> ids,
                              std::span<const std::int32_t> cu_seqlens, bool pooled,
                              std::span<const std::int32_t> token_types) {
  return bert<float>(config, weights, ids, cu_seqlens, token_types, pooled);
}

}  // namespace mha::reference
