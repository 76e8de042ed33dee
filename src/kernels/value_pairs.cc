#include "kernels/value_pairs.h"

#include <cstring>

#include "runtime/thread_pool.h"

namespace mha::detail {

namespace {

// Pair rows [0, ceil(len / 2)) of one (sequence, KV head): dst[j][c] = v[2j][c] | v[2j+1][c] << 16,
// zero for c >= dv and for the missing partner of an odd last key.
void pair_head(const AttentionParams& p, std::int64_t b, std::int64_t h, std::uint32_t* dst) {
  const SeqSpan s = seq_span(p, b);
  const auto* v = static_cast<const std::uint16_t*>(p.v) + s.batch_index * p.v_stride[0] +
                  s.k_offset * p.v_stride[1] + h * p.v_stride[2];
  const std::int64_t pairs = (s.len_k + 1) / 2, cs = p.v_stride[3];
  for (std::int64_t j = 0; j < pairs; ++j) {
    const std::uint16_t* a = v + 2 * j * p.v_stride[1];
    std::uint32_t* row = dst + j * p.v_pair_ld;
    if (2 * j + 1 < s.len_k) {
      const std::uint16_t* c = a + p.v_stride[1];
      for (std::int64_t e = 0; e < p.dv; ++e) row[e] = std::uint32_t(a[e * cs]) | std::uint32_t(c[e * cs]) << 16;
    } else {
      for (std::int64_t e = 0; e < p.dv; ++e) row[e] = a[e * cs];
    }
    std::memset(row + p.dv, 0, std::size_t(p.v_pair_ld - p.dv) * sizeof(std::uint32_t));
  }
}

}  // namespace

void prepare_value_pairs(AttentionParams& p, std::int64_t ld, std::int64_t block_q, AlignedBuffer& buffer,
                         std::size_t max_bytes) {
  if (p.in_dtype != DType::bf16 || p.v == nullptr || p.nk == 0) return;
  // Items per KV head and sequence (query heads of the group times query blocks): with fewer than
  // 8 the pass over V costs what it saves (BERT, 6: 1 % slower; 8 at 512 tokens: 3 % faster).
  if ((p.hq / p.hkv) * ((p.nq + block_q - 1) / block_q) < 8) return;
  const std::int64_t rows = value_pair_base(p, p.batch);
  const std::size_t floats = std::size_t(p.hkv * rows * ld);
  if (floats * sizeof(float) > max_bytes) return;
  buffer.resize(floats);
  auto* pairs = reinterpret_cast<std::uint32_t*>(buffer.data());
  p.v_pair_ld = ld;
  p.v_pair_rows = rows;
  global_pool()->parallel_for(p.batch * p.hkv, [&](std::int64_t i) {
    const std::int64_t b = i / p.hkv, h = i % p.hkv;
    pair_head(p, b, h, pairs + (h * rows + value_pair_base(p, b)) * ld);
  });
  p.v_pairs = pairs;
}

}  // namespace mha::detail
