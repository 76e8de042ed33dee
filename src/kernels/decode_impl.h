// The flash-decode body, compiled once per ISA (see decode.h for the work split).
//
// For memory-bound decoding the kernel must keep up with the cache stream: every K/V element is
// loaded (and converted from bf16/f16/int8) once per item and used by all R query rows of the
// group. Scores: blocks of RB = 4 rows × 2 keys accumulate along the head dim in vector lanes
// (8 accumulators: one K load and one q load feed 2 and 4 FMAs) and are reduced once per
// (row, key). P·V: O rows are updated two vectors wide for RB rows at a time, so each V load
// feeds RB FMAs and O stays in registers across the tile's keys. The online softmax runs per
// tile on the R × 16 score block with the vector exp.
#ifndef MHA_KERNEL_NS
#error "define MHA_KERNEL_NS before including decode_impl.h"
#endif

#include <algorithm>
#include <cstring>
#include <limits>

#include "kernels/decode.h"
#include "kernels/simd.h"
#include "runtime/dtype_convert.h"

namespace mha::detail::MHA_KERNEL_NS {
namespace {

constexpr int N = Vec::N;
constexpr std::int64_t T = kDecodeTile;
constexpr int RB = 4;  // query rows per register block
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Cache element types (DecodeParams::cache_dtype).
enum : int { kF32 = 0, kF16 = 1, kBf16 = 2, kI8 = 3 };

template <int DT>
Vec::T load_vec(const void* row, std::int64_t e) {
  if constexpr (DT == kF32) return Vec::load(static_cast<const float*>(row) + e);
  if constexpr (DT == kF16) return Vec::load_f16(static_cast<const std::uint16_t*>(row) + e);
  if constexpr (DT == kBf16) return Vec::load_bf16(static_cast<const std::uint16_t*>(row) + e);
  if constexpr (DT == kI8) return Vec::load_i8(static_cast<const std::int8_t*>(row) + e);
}

template <int DT>
float load_one(const void* row, std::int64_t e) {
  if constexpr (DT == kF32) return static_cast<const float*>(row)[e];
  if constexpr (DT == kF16) return f16_to_f32(static_cast<const std::uint16_t*>(row)[e]);
  if constexpr (DT == kBf16) return bf16_to_f32(static_cast<const std::uint16_t*>(row)[e]);
  if constexpr (DT == kI8) return float(static_cast<const std::int8_t*>(row)[e]);
}

constexpr std::size_t elem_bytes(int dt) { return dt == kF32 ? 4 : dt == kI8 ? 1 : 2; }

struct Scratch {
  float* q;      // [R][d]
  float* s;      // [R][T] scores, then probabilities (times the V scale for int8)
  float* o;      // [R][d]
  float* m;      // [R] running max
  float* l;      // [R] running sum
  float* alpha;  // [R] this tile's rescale of O
};

// Scores of rows [r0, r0 + rb) against the tile's keys: s[r][t] = q_r · k_t (unscaled).
template <int DT, int rb>
void score_block(const Scratch& w, std::int64_t d, std::int64_t r0, const void* const* krow,
                 std::int64_t nt) {
  const std::int64_t dv = d / N * N;
  for (std::int64_t t = 0; t < nt; t += 2) {
    const bool two = t + 1 < nt;
    const void* k0 = krow[t];
    const void* k1 = two ? krow[t + 1] : krow[t];
    Vec::T acc0[rb], acc1[rb];
#pragma GCC unroll 4
    for (int r = 0; r < rb; ++r) acc0[r] = acc1[r] = Vec::zero();
    for (std::int64_t e = 0; e < dv; e += N) {
      const Vec::T a = load_vec<DT>(k0, e), b = load_vec<DT>(k1, e);
#pragma GCC unroll 4
      for (int r = 0; r < rb; ++r) {
        const Vec::T qv = Vec::load(w.q + (r0 + r) * d + e);
        acc0[r] = Vec::fmadd(qv, a, acc0[r]);
        acc1[r] = Vec::fmadd(qv, b, acc1[r]);
      }
    }
#pragma GCC unroll 4
    for (int r = 0; r < rb; ++r) {
      float s0 = Vec::hsum(acc0[r]), s1 = Vec::hsum(acc1[r]);
      for (std::int64_t e = dv; e < d; ++e) {  // head dims that are not a multiple of the width
        s0 += w.q[(r0 + r) * d + e] * load_one<DT>(k0, e);
        s1 += w.q[(r0 + r) * d + e] * load_one<DT>(k1, e);
      }
      w.s[(r0 + r) * T + t] = s0;
      if (two) w.s[(r0 + r) * T + t + 1] = s1;
    }
  }
}

// O[r] = O[r]·alpha[r] + Σ_t p[r][t]·v_t for rows [r0, r0 + rb).
template <int DT, int rb>
void pv_block(const Scratch& w, std::int64_t d, std::int64_t r0, const void* const* vrow, std::int64_t nt) {
  std::int64_t e = 0;
  for (; e + 2 * N <= d; e += 2 * N) {
    Vec::T o0[rb], o1[rb];
#pragma GCC unroll 4
    for (int r = 0; r < rb; ++r) {
      const Vec::T a = Vec::set1(w.alpha[r0 + r]);
      o0[r] = Vec::mul(Vec::load(w.o + (r0 + r) * d + e), a);
      o1[r] = Vec::mul(Vec::load(w.o + (r0 + r) * d + e + N), a);
    }
    for (std::int64_t t = 0; t < nt; ++t) {
      const Vec::T v0 = load_vec<DT>(vrow[t], e), v1 = load_vec<DT>(vrow[t], e + N);
#pragma GCC unroll 4
      for (int r = 0; r < rb; ++r) {
        const Vec::T p = Vec::bcast(w.s + (r0 + r) * T + t);
        o0[r] = Vec::fmadd(p, v0, o0[r]);
        o1[r] = Vec::fmadd(p, v1, o1[r]);
      }
    }
#pragma GCC unroll 4
    for (int r = 0; r < rb; ++r) {
      Vec::store(w.o + (r0 + r) * d + e, o0[r]);
      Vec::store(w.o + (r0 + r) * d + e + N, o1[r]);
    }
  }
  for (; e < d; ++e) {  // the rest, one element at a time
    for (int r = 0; r < rb; ++r) {
      float acc = w.o[(r0 + r) * d + e] * w.alpha[r0 + r];
      for (std::int64_t t = 0; t < nt; ++t) acc += w.s[(r0 + r) * T + t] * load_one<DT>(vrow[t], e);
      w.o[(r0 + r) * d + e] = acc;
    }
  }
}

template <int DT, template <int, int> class Block, class... Args>
void for_row_blocks(std::int64_t R, Args... args) {
  std::int64_t r0 = 0;
  for (; r0 + RB <= R; r0 += RB) Block<DT, RB>::run(r0, args...);
  switch (R - r0) {
    case 3: Block<DT, 3>::run(r0, args...); break;
    case 2: Block<DT, 2>::run(r0, args...); break;
    case 1: Block<DT, 1>::run(r0, args...); break;
    default: break;
  }
}

template <int DT, int rb>
struct Scores {
  static void run(std::int64_t r0, const Scratch* w, std::int64_t d, const void* const* rows,
                  std::int64_t nt) {
    score_block<DT, rb>(*w, d, r0, rows, nt);
  }
};
template <int DT, int rb>
struct Pv {
  static void run(std::int64_t r0, const Scratch* w, std::int64_t d, const void* const* rows,
                  std::int64_t nt) {
    pv_block<DT, rb>(*w, d, r0, rows, nt);
  }
};

// Online softmax over the tile for every row: s becomes p (times the V scale), alpha the rescale.
void softmax_tile(const Scratch& w, std::int64_t R, std::int64_t nt, const float* kscale, const float* vscale,
                  float scale, const std::int64_t* limit) {
  for (std::int64_t r = 0; r < R; ++r) {
    float* s = w.s + r * T;
    for (std::int64_t t = 0; t < T; ++t) s[t] = t < nt && t < limit[r] ? s[t] * scale * kscale[t] : kNegInf;
    Vec::T mv = Vec::load(s);
    for (std::int64_t t = N; t < T; t += N) mv = Vec::max(mv, Vec::load(s + t));
    float lanes[N];
    Vec::store(lanes, mv);
    float mx = lanes[0];
    for (int i = 1; i < N; ++i) mx = std::max(mx, lanes[i]);
    const float m_new = std::max(w.m[r], mx);
    if (m_new == kNegInf) {  // nothing visible yet: no change
      std::fill(s, s + T, 0.f);
      w.alpha[r] = 1;
      continue;
    }
    const Vec::T mn = Vec::set1(m_new);
    Vec::T sum = Vec::zero();
    for (std::int64_t t = 0; t < T; t += N) {
      const Vec::T p = exp(Vec::sub(Vec::load(s + t), mn));
      sum = Vec::add(sum, p);
      Vec::store(s + t, Vec::mul(p, Vec::load(vscale + t)));
    }
    w.alpha[r] = w.m[r] == kNegInf ? 0.f : exp(Vec::set1(w.m[r] - m_new))[0];
    w.l[r] = w.l[r] * w.alpha[r] + Vec::hsum(sum);
    w.m[r] = m_new;
  }
}

// Pointers to the rows of tokens [t0, t0 + nt) of one sequence (paged or contiguous: one block).
void token_rows(const DecodeParams& p, const std::int32_t* table, std::int64_t t0, std::int64_t nt,
                std::size_t row_bytes, const std::uint8_t** krow, const std::uint8_t** vrow,
                std::int64_t* rows) {
  const std::int64_t rpb = p.rows_per_block;
  std::int64_t blk = t0 / rpb, off = t0 % rpb;  // one division per tile, not per key
  for (std::int64_t t = 0; t < nt; ++t) {
    rows[t] = std::int64_t(table[blk]) * rpb + off;
    krow[t] = static_cast<const std::uint8_t*>(p.k) + std::size_t(rows[t]) * row_bytes;
    vrow[t] = static_cast<const std::uint8_t*>(p.v) + std::size_t(rows[t]) * row_bytes;
    if (++off == rpb) {
      off = 0;
      ++blk;
    }
  }
}

// An item covers every KV head of its tokens, so it streams whole cache rows [Hkv·D] front to
// back: per-head items would jump a full row between keys, a new 4 KB page each time for wide
// rows, which the hardware prefetchers do not follow. The next tile is prefetched explicitly.
template <int DT>
void run_chunk(const DecodeParams& p, const DecodeItem& it, float* scratch) {
  const std::int64_t G = p.hq / p.hkv, R = G * p.nq, d = p.d, HR = p.hkv * R;
  Scratch all;
  all.q = scratch;
  all.s = all.q + HR * d;
  all.o = all.s + R * T;
  all.m = all.o + HR * d;
  all.l = all.m + HR;
  all.alpha = all.l + HR;
  std::int64_t* rel = reinterpret_cast<std::int64_t*>(all.alpha + HR + (HR & 1));  // [R]
  // Row r of group g = i·G + j: query token i, head g·G + j. Token i sees keys [0, L − nq + i].
  const std::int64_t L = p.seqlens[it.b];
  for (std::int64_t g = 0; g < p.hkv; ++g)
    for (std::int64_t i = 0; i < p.nq; ++i)
      for (std::int64_t j = 0; j < G; ++j) {
        const std::int64_t r = g * R + i * G + j;
        std::memcpy(all.q + r * d, p.q + ((it.b * p.nq + i) * p.hq + g * G + j) * d, std::size_t(d) * 4);
        all.m[r] = kNegInf;
        all.l[r] = 0;
      }
  std::fill(all.o, all.o + HR * d, 0.f);

  const std::int32_t* table = p.tables + std::int64_t(p.seqs[it.b]) * p.blocks_per_seq;
  const std::size_t row_bytes = std::size_t(p.hkv * d) * elem_bytes(DT),
                    head_bytes = std::size_t(d) * elem_bytes(DT);
  const std::uint8_t *kbase[T], *vbase[T], *knext[T], *vnext[T];
  const void *krow[T], *vrow[T];
  std::int64_t rows[T], next_rows[T];
  alignas(64) float kscale[T], vscale[T];
  std::int64_t nt = std::min(T, it.t1 - it.t0);
  token_rows(p, table, it.t0, nt, row_bytes, kbase, vbase, rows);
  for (std::int64_t t0 = it.t0; t0 < it.t1; t0 += T) {
    const std::int64_t t_next = t0 + T, nt_next = std::max<std::int64_t>(0, std::min(T, it.t1 - t_next));
    if (nt_next > 0) {
      token_rows(p, table, t_next, nt_next, row_bytes, knext, vnext, next_rows);
      for (std::int64_t t = 0; t < nt_next; ++t)
        for (std::size_t b = 0; b < row_bytes; b += 64) {
          _mm_prefetch(reinterpret_cast<const char*>(knext[t] + b), _MM_HINT_T1);
          _mm_prefetch(reinterpret_cast<const char*>(vnext[t] + b), _MM_HINT_T1);
        }
    }
    for (std::int64_t r = 0; r < R; ++r) rel[r] = L - p.nq + r / G + 1 - t0;
    for (std::int64_t g = 0; g < p.hkv; ++g) {
      Scratch w{all.q + g * R * d, all.s, all.o + g * R * d, all.m + g * R, all.l + g * R, all.alpha + g * R};
      for (std::int64_t t = 0; t < nt; ++t) {
        krow[t] = kbase[t] + std::size_t(g) * head_bytes;
        vrow[t] = vbase[t] + std::size_t(g) * head_bytes;
        kscale[t] = DT == kI8 ? p.k_scale[rows[t] * p.hkv + g] : 1.f;
        vscale[t] = DT == kI8 ? p.v_scale[rows[t] * p.hkv + g] : 1.f;
      }
      for (std::int64_t t = nt; t < T; ++t) kscale[t] = vscale[t] = 0.f;
      for_row_blocks<DT, Scores>(R, &w, d, krow, nt);
      softmax_tile(w, R, nt, kscale, vscale, p.scale, rel);
      for_row_blocks<DT, Pv>(R, &w, d, vrow, nt);
    }
    std::copy(knext, knext + nt_next, kbase);
    std::copy(vnext, vnext + nt_next, vbase);
    std::copy(next_rows, next_rows + nt_next, rows);
    nt = nt_next;
  }
  for (std::int64_t r = 0; r < HR; ++r) {
    float* out = it.partial + r * (d + 2);
    out[0] = all.m[r];
    out[1] = all.l[r];
    std::memcpy(out + 2, all.o + r * d, std::size_t(d) * 4);
  }
}

}  // namespace

void decode_chunk(const DecodeParams& p, const DecodeItem& item, float* scratch) {
  switch (p.cache_dtype) {
    case kF32: run_chunk<kF32>(p, item, scratch); break;
    case kF16: run_chunk<kF16>(p, item, scratch); break;
    case kBf16: run_chunk<kBf16>(p, item, scratch); break;
    default: run_chunk<kI8>(p, item, scratch); break;
  }
}

}  // namespace mha::detail::MHA_KERNEL_NS
