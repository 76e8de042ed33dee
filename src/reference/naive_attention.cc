// The naive path: the attention of the textbook, step by step, in working precision.
#include <cmath>
#include <limits>
#include <vector>

#include "api/validate.h"
#include "kernels/philox.h"
#include "mha/reference.h"
#include "runtime/dtype_convert.h"
#include "runtime/thread_pool.h"

namespace mha::reference {

namespace {

using detail::AttentionParams;
using detail::load_f32;
using detail::round_to;
using detail::SeqSpan;

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Step 1: S = q·kᵀ, f32 accumulation, stored in the working dtype.
void scores(const AttentionParams& p, const SeqSpan& s, std::int64_t h, std::vector<float>& S) {
  const std::int64_t kvh = h / (p.hq / p.hkv);
  for (std::int64_t i = 0; i < s.len_q; ++i) {
    const std::int64_t qoff =
        s.batch_index * p.q_stride[0] + (s.q_offset + i) * p.q_stride[1] + h * p.q_stride[2];
    for (std::int64_t j = 0; j < s.len_k; ++j) {
      const std::int64_t koff =
          s.batch_index * p.k_stride[0] + (s.k_offset + j) * p.k_stride[1] + kvh * p.k_stride[2];
      float dot = 0;
      for (std::int64_t d = 0; d < p.d; ++d)
        dot += load_f32(p.q, p.in_dtype, qoff + d * p.q_stride[3]) *
               load_f32(p.k, p.in_dtype, koff + d * p.k_stride[3]);
      S[std::size_t(i * s.len_k + j)] = round_to(p.in_dtype, dot);
    }
  }
}

// Steps 2-4: scale, add the mask, mask out what causal/window hide. A row is poisoned (all NaN)
// when a visible key's q·k or scaled score is not finite, or its masked score is NaN or +inf
// (README, "NaN and inf"); a -inf mask entry only masks.
void scale_and_mask(const AttentionParams& p, const SeqSpan& s, std::int64_t b, std::int64_t h,
                    std::vector<float>& S, std::vector<char>& poisoned) {
  for (std::int64_t i = 0; i < s.len_q; ++i) {
    for (std::int64_t j = 0; j < s.len_k; ++j) {
      float& x = S[std::size_t(i * s.len_k + j)];
      const bool visible = detail::key_visible(p, s, i, j);
      if (visible && !std::isfinite(x)) poisoned[std::size_t(i)] = 1;
      x = round_to(p.in_dtype, x * p.scale);
      if (visible && !std::isfinite(x)) poisoned[std::size_t(i)] = 1;
      if (p.mask != nullptr)
        x = round_to(p.in_dtype, x + load_f32(p.mask, p.mask_dtype,
                                              b * p.mask_stride[0] + h * p.mask_stride[1] +
                                                  i * p.mask_stride[2] + j * p.mask_stride[3]));
      if (visible && (std::isnan(x) || x == -kNegInf)) poisoned[std::size_t(i)] = 1;
      if (!visible) x = kNegInf;
    }
  }
}

// Step 5: P = softmax(S) row by row, in f32, stored in the working dtype. A row with every key
// masked gets P = 0 and lse = -inf (a framework would give NaN; mha defines it as zeros).
void softmax(const AttentionParams& p, const SeqSpan& s, std::vector<float>& S, std::vector<float>& lse,
             const std::vector<char>& poisoned) {
  for (std::int64_t i = 0; i < s.len_q; ++i) {
    float* row = S.data() + i * s.len_k;
    if (poisoned[std::size_t(i)]) {
      for (std::int64_t j = 0; j < s.len_k; ++j) row[j] = std::numeric_limits<float>::quiet_NaN();
      lse[std::size_t(i)] = std::numeric_limits<float>::quiet_NaN();
      continue;
    }
    float mx = kNegInf;
    for (std::int64_t j = 0; j < s.len_k; ++j) mx = row[j] > mx ? row[j] : mx;
    if (mx == kNegInf) {
      for (std::int64_t j = 0; j < s.len_k; ++j) row[j] = 0;
      lse[std::size_t(i)] = kNegInf;
      continue;
    }
    float sum = 0;
    for (std::int64_t j = 0; j < s.len_k; ++j) {
      row[j] = std::exp(row[j] - mx);
      sum += row[j];
    }
    for (std::int64_t j = 0; j < s.len_k; ++j) row[j] = round_to(p.in_dtype, row[j] / sum);
    lse[std::size_t(i)] = mx + std::log(sum);
  }
}

// Step 5b (training): dropout, P *= keep mask / (1 - p), stored in the working dtype.
void dropout(const AttentionParams& p, const SeqSpan& s, std::int64_t b, std::int64_t h, std::vector<float>& P) {
  if (p.dropout_p == 0.0f) return;
  const detail::DropoutKey key = detail::dropout_key(p.dropout_seed, p.dropout_offset, p.dropout_p);
  for (std::int64_t i = 0; i < s.len_q; ++i)
    for (std::int64_t j = 0; j < s.len_k; ++j) {
      float& x = P[std::size_t(i * s.len_k + j)];
      const bool keep = detail::dropout_keep(key, std::uint32_t(i), std::uint32_t(b * p.hq + h), j);
      x = round_to(p.in_dtype, keep ? x * p.keep_scale : 0.0f * x);
    }
}

// Step 6: out = P·v, f32 accumulation, stored in out's dtype.
void weighted_sum(const AttentionParams& p, const SeqSpan& s, std::int64_t h, const std::vector<float>& P) {
  const std::int64_t kvh = h / (p.hq / p.hkv);
  for (std::int64_t i = 0; i < s.len_q; ++i) {
    const std::int64_t ooff =
        s.batch_index * p.out_stride[0] + (s.q_offset + i) * p.out_stride[1] + h * p.out_stride[2];
    for (std::int64_t d = 0; d < p.dv; ++d) {
      float acc = 0;
      for (std::int64_t j = 0; j < s.len_k; ++j) {
        const std::int64_t voff =
            s.batch_index * p.v_stride[0] + (s.k_offset + j) * p.v_stride[1] + kvh * p.v_stride[2];
        acc += P[std::size_t(i * s.len_k + j)] * load_f32(p.v, p.in_dtype, voff + d * p.v_stride[3]);
      }
      detail::store_f32(p.out, p.out_dtype, ooff + d * p.out_stride[3], acc);
    }
  }
}

}  // namespace

void attention_naive(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                     const AttentionOptions& options, const Tensor* lse) {
  const AttentionParams p =
      detail::validate_attention("reference::attention_naive", q, k, v, &out, options, lse);
  detail::global_pool()->parallel_for(p.batch * p.hq, [&](std::int64_t item) {
    const std::int64_t b = item / p.hq, h = item % p.hq;
    const SeqSpan s = detail::seq_span(p, b);
    std::vector<float> S(std::size_t(s.len_q * s.len_k));
    std::vector<float> row_lse(std::size_t(s.len_q));
    std::vector<char> poisoned(std::size_t(s.len_q), 0);
    scores(p, s, h, S);
    scale_and_mask(p, s, b, h, S, poisoned);
    softmax(p, s, S, row_lse, poisoned);
    dropout(p, s, b, h, S);
    weighted_sum(p, s, h, S);
    if (p.lse != nullptr)
      for (std::int64_t i = 0; i < s.len_q; ++i)
        p.lse[s.batch_index * p.lse_stride[0] + h * p.lse_stride[1] + (s.q_offset + i) * p.lse_stride[2]] =
            row_lse[std::size_t(i)];
  });
}

}  // namespace mha::reference
