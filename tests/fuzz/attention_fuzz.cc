// libFuzzer harness for mha::attention's validation: shapes, strides, dtypes, masks, windows,
// scales and cu_seqlens read from the input. Every buffer is allocated to exactly the bytes its
// view spans, so if validation accepts a call, the kernel must stay inside them (ASan checks), and
// if it refuses, the error must be an mha::Error and nothing may be written.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "mha/attention.h"
#include "mha/errors.h"

namespace {

struct Reader {
  const std::uint8_t* p;
  std::size_t n;
  std::uint8_t byte() {
    if (n == 0) return 0;
    --n;
    return *p++;
  }
  std::int64_t small(int range) { return std::int64_t(byte() % range); }
  std::int64_t wide() {  // mostly small, sometimes huge or negative
    const std::uint8_t kind = byte();
    if (kind < 200) return small(12) - 1;
    std::int64_t v = 0;
    for (int i = 0; i < 8; ++i) v = v << 8 | byte();
    return v;
  }
};

// A view of `rank` dims with sizes and strides from the input, and a buffer covering its span.
struct View {
  mha::Tensor t;
  std::vector<std::uint8_t> storage;
};

// Either the view fits in its buffer, or its span is beyond any address (validation must refuse
// it before a byte is read): a view that merely lies about its memory is the caller's bug, not mha's.
View make_view(Reader& r, int rank, mha::DType dt, const std::int64_t* want) {
  constexpr __int128 kCap = 1 << 16;  // elements a buffer may hold
  View v;
  v.t.rank = rank;
  v.t.dtype = dt;
  __int128 dense = 1;
  bool empty = false;
  for (int i = rank - 1; i >= 0; --i) {
    const std::int64_t size = (want != nullptr && r.byte() < 230) ? want[i] : r.small(6);
    const std::uint8_t how = r.byte();
    const std::int64_t stride =
        how < 160 ? std::int64_t(dense < kCap ? dense : kCap) : how < 200 ? 0 : how < 250 ? r.small(40) : r.wide();
    v.t.shape[std::size_t(i)] = size;
    v.t.strides[std::size_t(i)] = stride;
    if (size <= 0) empty = true;
    dense *= size > 0 ? size : 1;
  }
  __int128 span = 1;
  for (int i = 0; i < rank; ++i)
    if (v.t.shape[std::size_t(i)] > 0 && v.t.strides[std::size_t(i)] > 0)
      span += __int128(v.t.shape[std::size_t(i)] - 1) * v.t.strides[std::size_t(i)];
  const bool addressable = span * __int128(mha::size_of(dt)) < (__int128(1) << 62);
  if (addressable && span > kCap) {  // too big to allocate: the large dims become 1
    span = 1;
    for (int i = 0; i < rank; ++i) {
      std::int64_t& size = v.t.shape[std::size_t(i)];
      const std::int64_t stride = v.t.strides[std::size_t(i)];
      if (size > 1 && stride > 0 && __int128(size - 1) * stride + span > kCap) size = 1;
      if (size > 0 && stride > 0) span += __int128(size - 1) * stride;
    }
  }
  if (!empty) {
    v.storage.resize(std::size_t(addressable ? span : 1) * mha::size_of(dt));
    for (auto& b : v.storage) b = r.byte();
    v.t.data = v.storage.data();
  }
  return v;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Reader r{data, size};
  const mha::DType dtypes[] = {mha::DType::f32, mha::DType::f16, mha::DType::bf16};
  const mha::DType dt = dtypes[r.small(3)];
  const std::int64_t B = r.small(3) + (r.byte() < 240), Nq = r.small(70), Nk = r.small(70);
  const std::int64_t Hkv = r.small(3) + 1, Hq = Hkv * (r.small(3) + 1), D = r.small(20) + 1, Dv = r.small(20) + 1;
  const std::int64_t qs[4] = {B, Nq, Hq, D}, ks[4] = {B, Nk, Hkv, D}, vs[4] = {B, Nk, Hkv, Dv},
                     os[4] = {B, Nq, Hq, Dv}, ls[3] = {B, Hq, Nq};
  View q = make_view(r, 4, dt, qs), k = make_view(r, 4, dt, ks), v = make_view(r, 4, dt, vs);
  View out = make_view(r, 4, r.byte() < 200 ? mha::DType::f32 : dt, os);
  mha::AttentionOptions o;
  o.causal = r.byte() & 1;
  if (r.byte() < 60) o.window_left = r.wide();
  if (r.byte() < 60) o.window_right = r.wide();
  if (r.byte() < 40) {
    float s;
    const std::uint32_t bits = std::uint32_t(r.byte()) << 24 | std::uint32_t(r.byte()) << 16 | r.byte() << 8 | r.byte();
    std::memcpy(&s, &bits, 4);
    o.scale = s;
  }
  View mask;
  if (r.byte() < 80) {
    const std::int64_t ms[4] = {B, Hq, Nq, Nk};
    const int rank = int(r.small(4)) + 1;
    mask = make_view(r, rank, dtypes[r.small(3)], ms + (4 - rank));
    o.mask = mask.t;
  }
  std::vector<std::int32_t> cu_q, cu_k;
  if (r.byte() < 50) {
    const std::int64_t n = r.small(5) + 1;
    std::int32_t aq = 0, ak = 0;
    cu_q.push_back(0);
    cu_k.push_back(0);
    for (std::int64_t i = 1; i < n; ++i) {
      aq += std::int32_t(r.small(30)) - (r.byte() < 10);
      ak += std::int32_t(r.small(30)) - (r.byte() < 10);
      cu_q.push_back(aq);
      cu_k.push_back(ak);
    }
    o.cu_seqlens_q = cu_q;
    o.cu_seqlens_k = cu_k;
  }
  View lse;
  const bool with_lse = r.byte() < 100;
  if (with_lse) lse = make_view(r, 3, mha::DType::f32, ls);
  const std::vector<std::uint8_t> out_before = out.storage, lse_before = lse.storage;
  try {
    mha::attention(q.t, k.t, v.t, out.t, o, with_lse ? &lse.t : nullptr);
    (void)mha::attention_flops(q.t, k.t, v.t, o);
  } catch (const mha::Error&) {
    if (out.storage != out_before || lse.storage != lse_before) __builtin_trap();  // written on error
  }
  return 0;
}
