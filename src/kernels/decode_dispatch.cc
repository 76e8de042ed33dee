// The dispatch point of the decode kernels, the split into items and the fixed-order merge.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/decode.h"
#include "mha/attention.h"
#include "runtime/aligned_buffer.h"
#include "runtime/dtype_convert.h"
#include "runtime/thread_pool.h"

namespace mha::detail {

DecodeKernel decode_kernel(Isa isa) {
  switch (isa) {
    case Isa::avx512bf16: return &avx512bf16::decode_chunk;
    case Isa::avx512: return &avx512::decode_chunk;
    case Isa::avx2: return &avx2::decode_chunk;
    case Isa::generic: break;
  }
  return &generic::decode_chunk;
}

std::int64_t decode_scratch_floats(const DecodeParams& p) {
  const std::int64_t rows = (p.hq * p.nq + 15) / 16 * 16;
  return stage_offset(p) + kDecodeTile * p.hkv * decode_ld(p.d) + 2 * p.hkv * kDecodeTile +
         kDecodeTile * rows * 3 / 2 + 2 * kDecodeTile * (p.hkv + 16);
}

void run_decode(const DecodeParams& p, const Tensor& out_view, const Tensor* lse_view) {
  const DecodeKernel kernel = decode_kernel(active_isa());
  void* out = out_view.data;
  const DType out_dtype = out_view.dtype;
  const std::int64_t* out_stride = out_view.strides.data();
  float* lse = lse_view != nullptr ? static_cast<float*>(lse_view->data) : nullptr;
  const std::int64_t* lse_stride = lse_view != nullptr ? lse_view->strides.data() : nullptr;
  const std::int64_t G = p.hq / p.hkv, R = G * p.nq, part = p.hkv * R * (p.d + 2);
  // Items and partials are kept per calling thread and reused: steady-state steps allocate nothing.
  thread_local std::vector<DecodeItem> caller_items;
  thread_local std::vector<std::int64_t> caller_first;  // first chunk of each sequence
  thread_local AlignedBuffer caller_partials;
  std::vector<DecodeItem>& items = caller_items;
  std::vector<std::int64_t>& first = caller_first;
  items.clear();
  first.clear();
  std::int64_t chunks = 0;
  for (std::int64_t b = 0; b < p.batch; ++b) chunks += (p.seqlens[b] + kDecodeChunk - 1) / kDecodeChunk;
  caller_partials.resize(std::size_t(std::max<std::int64_t>(1, chunks * part)));
  float* partials = caller_partials.data();  // per chunk, all heads' rows
  // Heads farther apart than tokens ([B, H, S, D]) are walked one item each, down their own rows:
  // all heads at once would stride between hkv streams per token (essay in decode_impl.h). A
  // cache's rows hold all heads, read together, unless there are fewer chunks than threads (short
  // contexts, small batches): then each chunk's heads are shared out so that every thread has work.
  // Heads are computed independently, so the split changes no result.
  const std::shared_ptr<ThreadPool> pool = global_pool();
  std::int64_t heads_per_item = p.hkv;
  if (p.head_stride > p.token_stride) {
    heads_per_item = 1;
  } else if (chunks > 0 && chunks < pool->size()) {  // no chunks: no keys (or no sequences) at all
    const std::int64_t parts = std::min<std::int64_t>(p.hkv, (pool->size() + chunks - 1) / chunks);
    heads_per_item = (p.hkv + parts - 1) / parts;
  }
  for (std::int64_t b = 0, c = 0; b < p.batch; ++b) {
    first.push_back(c);
    for (std::int64_t t0 = 0; t0 < p.seqlens[b]; t0 += kDecodeChunk, ++c)
      for (std::int64_t g0 = 0; g0 < p.hkv; g0 += heads_per_item)
        items.push_back({b, t0, std::min(t0 + kDecodeChunk, std::int64_t(p.seqlens[b])), g0,
                         std::min(g0 + heads_per_item, p.hkv), partials + c * part + g0 * R * (p.d + 2)});
  }
  first.push_back(chunks);

  const std::size_t scratch_floats = std::size_t(decode_scratch_floats(p));
  // Threads take runs of consecutive items (about two per thread), and each item prefetches the
  // first tile of the next one of its run: one item at a time, a thread's next item had been another
  // thread's neighbour, and its first tile read cold (32/8 heads, bf16, context 4096 and 32768, Zen 4,
  // 2 threads, side by side: best steps 5-8 % faster). Items are independent: no result changes.
  const std::int64_t n_items = std::int64_t(items.size());
  const std::int64_t run = std::max<std::int64_t>(1, (n_items + 2 * pool->size() - 1) / (2 * pool->size()));
  pool->parallel_for((n_items + run - 1) / run, [&](std::int64_t j) {
    thread_local AlignedBuffer scratch;
    scratch.resize(scratch_floats);
    const std::int64_t i1 = std::min(n_items, (j + 1) * run);
    for (std::int64_t i = j * run; i < i1; ++i) {
      items[std::size_t(i)].next = i + 1 < i1 ? &items[std::size_t(i) + 1] : nullptr;
      kernel(p, items[std::size_t(i)], scratch.data());
    }
  });

  // Merge each (b, g) group's chunks in chunk order: the same sums in the same order every time.
  pool->parallel_for(p.batch * p.hkv, [&](std::int64_t bg) {
    const std::int64_t b = bg / p.hkv, g = bg % p.hkv;
    const std::int64_t i0 = first[std::size_t(b)], i1 = first[std::size_t(b) + 1];
    thread_local std::vector<float> weight;
    weight.resize(std::size_t(i1 - i0));
    for (std::int64_t r = 0; r < R; ++r) {
      const std::int64_t i = r / G, h = g * G + r % G;
      auto partial = [&](std::int64_t c) { return partials + c * part + (g * R + r) * (p.d + 2); };
      // A chunk whose l is NaN saw a poisoned score: the whole row is NaN (README, "NaN and inf").
      float M = -std::numeric_limits<float>::infinity();
      bool poisoned = false;
      for (std::int64_t c = i0; c < i1; ++c) {
        M = std::max(M, partial(c)[0]);
        poisoned = poisoned || std::isnan(partial(c)[1]);
      }
      float Lsum = 0;
      for (std::int64_t c = i0; c < i1; ++c) {
        const float* pr = partial(c);
        weight[std::size_t(c - i0)] =
            pr[1] > 0 ? pr[1] * std::exp(pr[0] - M) : 0.f;  // a chunk with no visible key adds 0
        Lsum += weight[std::size_t(c - i0)];
      }
      // Each chunk's O is normalized: the row is their convex combination, weights l_c·e^(m_c−M)/L.
      // Rows of f32 and unit stride are summed where they go, in vector loops; others in a row
      // buffer, then stored element by element (short contexts, batch 32, one Zen 3 thread: the
      // scalar store of every row had been a third of the step).
      const std::int64_t obase = b * out_stride[0] + i * out_stride[1] + h * out_stride[2];
      const bool in_place = out_dtype == DType::f32 && out_stride[3] == 1;
      float row[kMaxHeadDim];
      float* acc = in_place ? static_cast<float*>(out) + obase : row;
      std::fill(acc, acc + p.d, 0.f);
      const float inv = Lsum > 0 ? 1.f / Lsum : 0.f;
      for (std::int64_t c = i0; c < i1; ++c) {
        const float wc = weight[std::size_t(c - i0)] * inv;
        const float* o = partial(c) + 2;
        for (std::int64_t e = 0; e < p.d; ++e) acc[e] += wc * o[e];
      }
      const float nan = std::numeric_limits<float>::quiet_NaN();
      if (poisoned) std::fill(acc, acc + p.d, nan);
      if (!in_place)
        for (std::int64_t e = 0; e < p.d; ++e) store_f32(out, out_dtype, obase + e * out_stride[3], acc[e]);
      if (lse != nullptr)
        lse[b * lse_stride[0] + h * lse_stride[1] + i * lse_stride[2]] =
            poisoned   ? nan
            : Lsum > 0 ? M + std::log(Lsum)
                       : -std::numeric_limits<float>::infinity();
    }
  });
}

}  // namespace mha::detail
