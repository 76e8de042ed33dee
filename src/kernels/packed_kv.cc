#include "kernels/packed_kv.h"

#include <cstring>

#include "runtime/dtype_convert.h"
#include "runtime/thread_pool.h"

namespace mha::detail {

namespace {

// Key 0 of one (sequence, KV head) in p.k or p.v (`t`, with its strides), as elements of p.in_dtype.
const char* head_start(const AttentionParams& p, const void* t, const std::int64_t* stride, const SeqSpan& s,
                       std::int64_t h) {
  return static_cast<const char*>(t) +
         elem_size(p.in_dtype) *
             std::size_t(s.batch_index * stride[0] + s.k_offset * stride[1] + h * stride[2]);
}

// Pair rows [0, ceil(len / 2)) of one (sequence, KV head): dst[j][c] = v[2j][c] | v[2j+1][c] << 16,
// zero for c >= dv and for the missing partner of an odd last key.
void pair_head(const AttentionParams& p, std::int64_t b, std::int64_t h, std::uint32_t* dst) {
  const SeqSpan s = seq_span(p, b);
  const auto* v = reinterpret_cast<const std::uint16_t*>(head_start(p, p.v, p.v_stride, s, h));
  const std::int64_t pairs = (s.len_k + 1) / 2, cs = p.v_stride[3];
  for (std::int64_t j = 0; j < pairs; ++j) {
    const std::uint16_t* a = v + 2 * j * p.v_stride[1];
    std::uint32_t* row = dst + j * p.v_pair_ld;
    if (2 * j + 1 < s.len_k) {
      const std::uint16_t* c = a + p.v_stride[1];
      for (std::int64_t e = 0; e < p.dv; ++e)
        row[e] = std::uint32_t(a[e * cs]) | std::uint32_t(c[e * cs]) << 16;
    } else {
      for (std::int64_t e = 0; e < p.dv; ++e) row[e] = a[e * cs];
    }
    std::memset(row + p.dv, 0, std::size_t(p.v_pair_ld - p.dv) * sizeof(std::uint32_t));
  }
}

// Sequence b's keys into the panels of KV head h (`dst`: the head's first panel), a key at a time
// so V is read in order.
void panel_head(const AttentionParams& p, std::int64_t b, std::int64_t h, float* dst) {
  const SeqSpan s = seq_span(p, b);
  const char* v = head_start(p, p.v, p.v_stride, s, h);
  const std::size_t esz = elem_size(p.in_dtype);
  const std::int64_t rows = p.v_panel_rows, ld = p.v_panel_ld, row0 = key_row_base(p, b);
  const bool in_place = p.in_dtype == DType::f32 && p.v_stride[3] == 1;
  for (std::int64_t j = 0; j < s.len_k; ++j) {
    const char* src = v + esz * std::size_t(j * p.v_stride[1]);
    for (std::int64_t c = 0; c < ld; c += p.v_panel_width) {
      const std::int64_t w = ld - c < p.v_panel_width ? ld - c : p.v_panel_width;
      const std::int64_t n = p.dv - c < w ? p.dv - c : w;  // c < dv: ld is dv rounded up to a vector
      float* out = dst + c * rows + (row0 + j) * w;
      if (in_place) {
        std::memcpy(out, reinterpret_cast<const float*>(src) + c, std::size_t(n) * sizeof(float));
      } else {
        for (std::int64_t e = 0; e < n; ++e) out[e] = load_f32(src, p.in_dtype, (c + e) * p.v_stride[3]);
      }
      std::memset(out + n, 0, std::size_t(w - n) * sizeof(float));
    }
  }
}

// Sequence b's keys into KV head h's rows (`dst`: the head's first row).
void key_rows_head(const AttentionParams& p, std::int64_t b, std::int64_t h, char* dst) {
  const SeqSpan s = seq_span(p, b);
  const std::size_t esz = elem_size(p.in_dtype), osz = elem_size(p.k_row_dtype);
  const char* k = head_start(p, p.k, p.k_stride, s, h);
  char* out = dst + osz * std::size_t(key_row_base(p, b) * p.k_row_ld);
  const bool copy = p.in_dtype == p.k_row_dtype && p.k_stride[3] == 1;
  for (std::int64_t j = 0; j < s.len_k; ++j, out += osz * std::size_t(p.k_row_ld)) {
    const char* src = k + esz * std::size_t(j * p.k_stride[1]);
    if (copy) {
      std::memcpy(out, src, std::size_t(p.d) * osz);
    } else if (p.k_row_dtype == DType::f32) {
      for (std::int64_t e = 0; e < p.d; ++e)
        reinterpret_cast<float*>(out)[e] = load_f32(src, p.in_dtype, e * p.k_stride[3]);
    } else {  // bf16 from strided bf16
      for (std::int64_t e = 0; e < p.d; ++e)
        std::memcpy(out + 2 * e, src + 2 * std::size_t(e * p.k_stride[3]), 2);
    }
    std::memset(out + osz * std::size_t(p.d), 0, osz * std::size_t(p.k_row_ld - p.d));
  }
}

// Whether packing pays: items per KV head and sequence (query heads of the group times query
// blocks) of at least 8. With fewer the pass over V costs what it saves (bf16 pairs: BERT, 6: 1 %
// slower; 8 at 512 tokens: 3 % faster).
bool read_often(const AttentionParams& p, std::int64_t block_q) {
  return p.v != nullptr && p.nk > 0 && (p.hq / p.hkv) * ((p.nq + block_q - 1) / block_q) >= 8;
}

// `head_floats` (4-byte units) per KV head in `buffer`, or null when they pass `max_bytes`; then
// `pack(b, h, head)` for every (sequence, KV head) on the pool.
template <class T, class Pack>
const T* pack_heads(const AttentionParams& p, std::size_t head_floats, AlignedBuffer& buffer,
                    std::size_t max_bytes, const Pack& pack) {
  const std::size_t floats = std::size_t(p.hkv) * head_floats;
  if (floats * sizeof(float) > max_bytes) return nullptr;
  buffer.resize(floats);
  global_pool()->parallel_for(p.batch * p.hkv, [&](std::int64_t i) {
    const std::int64_t b = i / p.hkv, h = i % p.hkv;
    pack(b, h, reinterpret_cast<T*>(buffer.data() + std::size_t(h) * head_floats));
  });
  return reinterpret_cast<const T*>(buffer.data());
}

}  // namespace

void prepare_value_pairs(AttentionParams& p, std::int64_t ld, std::int64_t block_q, AlignedBuffer& buffer,
                         std::size_t max_bytes) {
  if (p.in_dtype != DType::bf16 || !read_often(p, block_q)) return;
  const std::int64_t rows = value_pair_base(p, p.batch);
  p.v_pair_ld = ld;
  p.v_pair_rows = rows;
  p.v_pairs = pack_heads<std::uint32_t>(p, std::size_t(rows * ld), buffer, max_bytes,
                                        [&](std::int64_t b, std::int64_t h, std::uint32_t* head) {
                                          pair_head(p, b, h, head + value_pair_base(p, b) * ld);
                                        });
}

void prepare_value_panels(AttentionParams& p, std::int64_t ld, std::int64_t width, std::int64_t block_q,
                          AlignedBuffer& buffer, std::size_t max_bytes) {
  if (!read_often(p, block_q)) return;
  p.v_panel_rows = key_row_base(p, p.batch);
  p.v_panel_ld = ld;
  p.v_panel_width = width;
  p.v_panels =
      pack_heads<float>(p, std::size_t(p.v_panel_rows * ld), buffer, max_bytes,
                        [&](std::int64_t b, std::int64_t h, float* head) { panel_head(p, b, h, head); });
}

void prepare_key_rows(AttentionParams& p, DType as, std::int64_t block_q, AlignedBuffer& buffer,
                      std::size_t max_bytes) {
  if (!read_often(p, block_q)) return;
  p.k_row_dtype = as;
  p.k_row_ld = as == DType::f32 ? p.d : (p.d + 1) / 2 * 2;
  p.k_row_count = key_row_base(p, p.batch);
  const std::size_t head_bytes = elem_size(as) * std::size_t(p.k_row_count * p.k_row_ld);
  p.k_rows =
      pack_heads<char>(p, (head_bytes + 3) / 4, buffer, max_bytes,
                       [&](std::int64_t b, std::int64_t h, char* head) { key_rows_head(p, b, h, head); });
}

}  // namespace mha::detail
