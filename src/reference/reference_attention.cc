// The float64 oracle. Deliberately plain: one query row at a time, every score kept in double.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "api/validate.h"
#include "kernels/philox.h"
#include "mha/reference.h"
#include "runtime/dtype_convert.h"
#include "runtime/thread_pool.h"

namespace mha::reference {

using detail::load_f32;

Result attention_f64(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& options) {
  const detail::AttentionParams p =
      detail::validate_attention("reference::attention_f64", q, k, v, nullptr, options, nullptr);
  const std::int64_t rows_total = q.shape[1];  // packed rows per batch entry
  const std::int64_t B = q.shape[0];
  Result r;
  r.out.assign(std::size_t(B * rows_total * p.hq * p.dv), 0.0);
  r.lse.assign(std::size_t(B * p.hq * rows_total), -std::numeric_limits<double>::infinity());
  const double scale = p.scale;
  const std::int64_t group = p.hq / p.hkv;
  const detail::DropoutKey dkey = detail::dropout_key(p.dropout_seed, p.dropout_offset, p.dropout_p);
  const double keep_scale = 1.0 / (1.0 - double(p.dropout_p));

  detail::global_pool()->parallel_for(p.batch * p.hq, [&](std::int64_t item) {
    const std::int64_t b = item / p.hq, h = item % p.hq, kvh = h / group;
    const detail::SeqSpan s = detail::seq_span(p, b);
    std::vector<double> scores(std::size_t(s.len_k));
    for (std::int64_t i = 0; i < s.len_q; ++i) {
      const std::int64_t qrow = s.q_offset + i;
      const std::int64_t qoff = s.batch_index * p.q_stride[0] + qrow * p.q_stride[1] + h * p.q_stride[2];
      double mx = -std::numeric_limits<double>::infinity();
      bool poisoned = false;  // README, "NaN and inf": the rule every path follows
      constexpr double kF32Max = std::numeric_limits<float>::max();
      for (std::int64_t j = 0; j < s.len_k; ++j) {
        if (!detail::key_visible(p, s, i, j)) {
          scores[std::size_t(j)] = -std::numeric_limits<double>::infinity();
          continue;
        }
        const std::int64_t koff =
            s.batch_index * p.k_stride[0] + (s.k_offset + j) * p.k_stride[1] + kvh * p.k_stride[2];
        double dot = 0;
        for (std::int64_t d = 0; d < p.d; ++d)
          dot += double(load_f32(p.q, p.in_dtype, qoff + d * p.q_stride[3])) *
                 double(load_f32(p.k, p.in_dtype, koff + d * p.k_stride[3]));
        double sc = dot * scale;
        // q·k and the scaled score are f32 values in every other path: beyond f32's range they are
        // inf there, so the oracle poisons the row as they do.
        if (!(std::fabs(dot) <= kF32Max) || !(std::fabs(sc) <= kF32Max)) poisoned = true;
        if (p.mask != nullptr)
          sc += double(load_f32(
              p.mask, p.mask_dtype,
              b * p.mask_stride[0] + h * p.mask_stride[1] + i * p.mask_stride[2] + j * p.mask_stride[3]));
        if (std::isnan(sc) || sc > kF32Max) poisoned = true;
        scores[std::size_t(j)] = sc;
        if (sc > mx) mx = sc;
      }
      const std::size_t orow = std::size_t(((s.batch_index * rows_total + qrow) * p.hq + h) * p.dv);
      const std::size_t lrow = std::size_t((s.batch_index * p.hq + h) * rows_total + qrow);
      if (poisoned) {
        std::fill_n(r.out.begin() + std::ptrdiff_t(orow), p.dv, std::numeric_limits<double>::quiet_NaN());
        r.lse[lrow] = std::numeric_limits<double>::quiet_NaN();
        continue;
      }
      if (mx == -std::numeric_limits<double>::infinity()) continue;  // all masked: zeros, -inf
      double sum = 0;
      for (std::int64_t j = 0; j < s.len_k; ++j) {
        const double e = std::exp(scores[std::size_t(j)] - mx);
        scores[std::size_t(j)] = e;
        sum += e;
      }
      for (std::int64_t j = 0; j < s.len_k; ++j) {
        double w = scores[std::size_t(j)] / sum;
        if (p.dropout_p > 0)
          w *= detail::dropout_keep(dkey, std::uint32_t(i), std::uint32_t(b * p.hq + h), j) ? keep_scale : 0.0;
        if (w == 0) continue;
        const std::int64_t voff =
            s.batch_index * p.v_stride[0] + (s.k_offset + j) * p.v_stride[1] + kvh * p.v_stride[2];
        for (std::int64_t d = 0; d < p.dv; ++d)
          r.out[orow + std::size_t(d)] += w * double(load_f32(p.v, p.in_dtype, voff + d * p.v_stride[3]));
      }
      r.lse[lrow] = mx + std::log(sum);
    }
  });
  return r;
}

}  // namespace mha::reference
