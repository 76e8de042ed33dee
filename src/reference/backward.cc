// The backward's references: one textbook body over the whole [Nq, Nk] matrices, run in double
// (the oracle) or in f32 with the working dtype's rounding between steps (the naive path). It
// differentiates, step by step, the forward of naive_attention.cc:
//   S = q·kᵀ · scale + mask  ->  P = softmax(S)  ->  Pd = P ∘ Z / (1 − p)  ->  out = Pd·v
// backwards:
//   dv = Pdᵀ·dout,  dP = (dout·vᵀ) ∘ Z / (1 − p),  dS = P ∘ (dP − rowsum(P ∘ dP)),
//   dq = scale · dS·k,  dk = scale · dSᵀ·q
#include <cmath>
#include <limits>
#include <vector>

#include <fmt/format.h>

#include "api/validate.h"
#include "kernels/philox.h"
#include "mha/errors.h"
#include "mha/reference.h"
#include "runtime/dtype_convert.h"
#include "runtime/thread_pool.h"

namespace mha::reference {

namespace {

using detail::AttentionParams;
using detail::load_f32;
using detail::SeqSpan;

struct Grads {
  const void* dout;
  DType dout_dtype;
  std::int64_t dout_stride[4];
};

// T = double: exact steps. T = float: every stored matrix rounded to the working dtype.
template <class T>
struct Steps {
  DType dtype;
  T round(T x) const {
    if constexpr (std::is_same_v<T, float>) return detail::round_to(dtype, x);
    return x;
  }
};

// Writes the gradients, row-major in the shapes of q, k, v, into dq, dk, dv.
template <class T>
void backward(const AttentionParams& p, const Grads& g, std::int64_t rows_q, std::int64_t rows_k,
              std::int64_t batch_entries, std::vector<T>& dq, std::vector<T>& dk, std::vector<T>& dv) {
  const Steps<T> st{p.in_dtype};
  const std::int64_t group = p.hq / p.hkv;
  dq.assign(std::size_t(batch_entries * rows_q * p.hq * p.d), T(0));
  dk.assign(std::size_t(batch_entries * rows_k * p.hkv * p.d), T(0));
  dv.assign(std::size_t(batch_entries * rows_k * p.hkv * p.dv), T(0));
  const detail::DropoutKey key = detail::dropout_key(p.dropout_seed, p.dropout_offset, p.dropout_p);
  const T keep_scale = std::is_same_v<T, float> ? T(p.keep_scale) : T(1.0 / (1.0 - double(p.dropout_p)));
  const T scale = T(p.scale);
  constexpr T kNegInf = -std::numeric_limits<T>::infinity();

  detail::global_pool()->parallel_for(p.batch * p.hkv, [&](std::int64_t item) {
    const std::int64_t b = item / p.hkv, kvh = item % p.hkv;
    const SeqSpan s = detail::seq_span(p, b);
    const std::int64_t nq = s.len_q, nk = s.len_k;
    std::vector<T> P(std::size_t(nq * nk)), Z(std::size_t(nq * nk)), dS(std::size_t(nq * nk));
    const auto q_at = [&](std::int64_t i, std::int64_t h, std::int64_t d) {
      return T(load_f32(p.q, p.in_dtype,
                        s.batch_index * p.q_stride[0] + (s.q_offset + i) * p.q_stride[1] + h * p.q_stride[2] +
                            d * p.q_stride[3]));
    };
    const auto kv_at = [&](const void* base, const std::int64_t* sd, std::int64_t j, std::int64_t d) {
      return T(load_f32(base, p.in_dtype,
                        s.batch_index * sd[0] + (s.k_offset + j) * sd[1] + kvh * sd[2] + d * sd[3]));
    };
    const auto g_at = [&](std::int64_t i, std::int64_t h, std::int64_t d) {
      return T(load_f32(g.dout, g.dout_dtype,
                        s.batch_index * g.dout_stride[0] + (s.q_offset + i) * g.dout_stride[1] +
                            h * g.dout_stride[2] + d * g.dout_stride[3]));
    };
    const auto kidx = [&](std::int64_t j, std::int64_t d, std::int64_t width) {
      return std::size_t(((s.batch_index * rows_k + s.k_offset + j) * p.hkv + kvh) * width + d);
    };
    for (std::int64_t h = kvh * group; h < (kvh + 1) * group; ++h) {
      // forward: S, P, Z
      for (std::int64_t i = 0; i < nq; ++i) {
        T* row = P.data() + i * nk;
        T mx = kNegInf;
        for (std::int64_t j = 0; j < nk; ++j) {
          T dot = 0;
          for (std::int64_t d = 0; d < p.d; ++d) dot += q_at(i, h, d) * kv_at(p.k, p.k_stride, j, d);
          T x = st.round(st.round(dot) * scale);
          if (p.mask != nullptr)
            x = st.round(x + T(load_f32(p.mask, p.mask_dtype,
                                        b * p.mask_stride[0] + h * p.mask_stride[1] + i * p.mask_stride[2] +
                                            j * p.mask_stride[3])));
          if (!detail::key_visible(p, s, i, j)) x = kNegInf;
          row[j] = x;
          mx = x > mx ? x : mx;
          Z[std::size_t(i * nk + j)] =
              p.dropout_p == 0.0f || detail::dropout_keep(key, std::uint32_t(i), std::uint32_t(b * p.hq + h), j)
                  ? keep_scale
                  : T(0);
        }
        if (mx == kNegInf) {
          for (std::int64_t j = 0; j < nk; ++j) row[j] = 0;
          continue;
        }
        T sum = 0;
        for (std::int64_t j = 0; j < nk; ++j) sum += (row[j] = std::exp(row[j] - mx));
        for (std::int64_t j = 0; j < nk; ++j) row[j] = st.round(row[j] / sum);
      }
      // dv += Pdᵀ·dout
      for (std::int64_t j = 0; j < nk; ++j)
        for (std::int64_t d = 0; d < p.dv; ++d) {
          T acc = 0;
          for (std::int64_t i = 0; i < nq; ++i)
            acc += st.round(P[std::size_t(i * nk + j)] * Z[std::size_t(i * nk + j)]) * g_at(i, h, d);
          dv[kidx(j, d, p.dv)] += acc;
        }
      // dP = (dout·vᵀ) ∘ Z/(1-p); dS = P ∘ (dP − rowsum(P ∘ dP))
      for (std::int64_t i = 0; i < nq; ++i) {
        T* dsr = dS.data() + i * nk;
        T rowdot = 0;
        for (std::int64_t j = 0; j < nk; ++j) {
          T acc = 0;
          for (std::int64_t d = 0; d < p.dv; ++d) acc += g_at(i, h, d) * kv_at(p.v, p.v_stride, j, d);
          dsr[j] = st.round(st.round(acc) * Z[std::size_t(i * nk + j)]);
          rowdot += P[std::size_t(i * nk + j)] * dsr[j];
        }
        for (std::int64_t j = 0; j < nk; ++j) dsr[j] = st.round(P[std::size_t(i * nk + j)] * (dsr[j] - rowdot));
      }
      // dq = scale · dS·k; dk += scale · dSᵀ·q
      for (std::int64_t i = 0; i < nq; ++i)
        for (std::int64_t d = 0; d < p.d; ++d) {
          T acc = 0;
          for (std::int64_t j = 0; j < nk; ++j) acc += dS[std::size_t(i * nk + j)] * kv_at(p.k, p.k_stride, j, d);
          dq[std::size_t(((s.batch_index * rows_q + s.q_offset + i) * p.hq + h) * p.d + d)] = scale * acc;
        }
      for (std::int64_t j = 0; j < nk; ++j)
        for (std::int64_t d = 0; d < p.d; ++d) {
          T acc = 0;
          for (std::int64_t i = 0; i < nq; ++i) acc += dS[std::size_t(i * nk + j)] * q_at(i, h, d);
          dk[kidx(j, d, p.d)] += scale * acc;
        }
    }
  });
}

Grads check_dout(const char* func, const Tensor& q, const Tensor& v, const Tensor& dout) {
  detail::check_view(func, "dout", dout, 4, 4);
  if (dout.dtype != DType::f32 && dout.dtype != q.dtype)
    throw Unsupported("dout", fmt::format("{}: dout.dtype = {}, expected f32 or {}", func, to_string(dout.dtype),
                                          to_string(q.dtype)));
  const std::int64_t want[4] = {q.shape[0], q.shape[1], q.shape[2], v.shape[3]};
  for (std::size_t i = 0; i < 4; ++i)
    if (dout.shape[i] != want[i])
      throw InvalidArgument("dout", fmt::format("{}: dout.shape = {}, expected [{}, {}, {}, {}]", func,
                                                dout.describe(), want[0], want[1], want[2], want[3]));
  Grads g{dout.data, dout.dtype, {}};
  for (std::size_t i = 0; i < 4; ++i) g.dout_stride[i] = dout.strides[i];
  return g;
}

}  // namespace

Gradients attention_backward_f64(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dout,
                                 const AttentionOptions& options) {
  const char* func = "reference::attention_backward_f64";
  const AttentionParams p = detail::validate_attention(func, q, k, v, nullptr, options, nullptr);
  const Grads g = check_dout(func, q, v, dout);
  Gradients r;
  backward<double>(p, g, q.shape[1], k.shape[1], q.shape[0], r.dq, r.dk, r.dv);
  return r;
}

void attention_backward_naive(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dout,
                              const Tensor& dq, const Tensor& dk, const Tensor& dv, const AttentionOptions& options) {
  const char* func = "reference::attention_backward_naive";
  const AttentionParams p = detail::validate_attention(func, q, k, v, nullptr, options, nullptr);
  const Grads g = check_dout(func, q, v, dout);
  const std::pair<const Tensor*, const Tensor*> pairs[] = {{&dq, &q}, {&dk, &k}, {&dv, &v}};
  const char* names[] = {"dq", "dk", "dv"};
  for (int t = 0; t < 3; ++t) {
    const Tensor& out = *pairs[t].first;
    detail::check_view(func, names[t], out, 4, 4);
    for (std::size_t i = 0; i < 4; ++i)
      if (out.shape[i] != pairs[t].second->shape[i])
        throw InvalidArgument(names[t], fmt::format("{}: {}.shape = {}, expected the shape of its input {}", func,
                                                    names[t], out.describe(), pairs[t].second->describe()));
  }
  std::vector<float> gq, gk, gv;
  backward<float>(p, g, q.shape[1], k.shape[1], q.shape[0], gq, gk, gv);
  const std::vector<float>* src[] = {&gq, &gk, &gv};
  for (int t = 0; t < 3; ++t) {
    const Tensor& out = *pairs[t].first;
    std::size_t n = 0;
    for (std::int64_t a = 0; a < out.shape[0]; ++a)
      for (std::int64_t b = 0; b < out.shape[1]; ++b)
        for (std::int64_t c = 0; c < out.shape[2]; ++c)
          for (std::int64_t d = 0; d < out.shape[3]; ++d)
            detail::store_f32(out.data, out.dtype,
                              a * out.strides[0] + b * out.strides[1] + c * out.strides[2] + d * out.strides[3],
                              (*src[t])[n++]);
  }
}

}  // namespace mha::reference
