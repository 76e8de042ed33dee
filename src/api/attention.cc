#include "mha/attention.h"

#include "api/validate.h"
#include "decode/forward_as_decode.h"
#include "kernels/flash_fwd.h"

namespace mha {

void attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
               const AttentionOptions& options, const Tensor* lse) {
  const detail::AttentionParams p = detail::validate_attention("attention", q, k, v, &out, options, lse);
  if (detail::forward_as_decode(p, out, lse)) return;
  detail::run_flash_fwd(p, detail::flash_fwd_kernel(active_isa()));
}

double attention_flops(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& options) {
  const detail::AttentionParams p =
      detail::validate_attention("attention_flops", q, k, v, nullptr, options, nullptr);
  double pairs = 0;
  for (std::int64_t b = 0; b < p.batch; ++b) {
    const detail::SeqSpan s = detail::seq_span(p, b);
    for (std::int64_t i = 0; i < s.len_q; ++i) {
      const detail::KeyRange r = detail::visible_keys(p, s, i, i + 1);
      pairs += double(r.end - r.begin);
    }
  }
  return 2.0 * double(p.d + p.dv) * double(p.hq) * pairs;
}

}  // namespace mha
