// The flash-decode body, compiled once per ISA (see decode.h for the work split).
//
// For memory-bound decoding the kernel must keep up with the cache stream: every K/V element is
// loaded (and converted from bf16/f16/int8) once per item and used by all R query rows of the
// group. Scores: blocks of RB = 4 rows × 2 keys accumulate along the head dim in vector lanes
// (8 accumulators: one K load and one q load feed 2 and 4 FMAs) and are reduced once per
// (row, key). P·V: O rows are updated two vectors wide for RB rows at a time, so each V load
// feeds RB FMAs and O stays in registers across the tile's keys. The online softmax runs per
// tile on the R × kDecodeTile score block with the vector exp.
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

// bf16 rows load 2N elements at a time with one load and two unpacks (Vec::load_bf16_pair): half
// the conversion work of widening N at a time. The lanes come out permuted within each 2N block,
// so q is stored with the same permutation (dot products do not care about order) and O rows hold
// it until they are written out.
template <int DT>
constexpr bool kPaired = DT == kBf16;

template <int DT>
void load_pair(const void* row, std::int64_t e, Vec::T& a, Vec::T& b) {
  if constexpr (kPaired<DT>) {
    Vec::load_bf16_pair(static_cast<const std::uint16_t*>(row) + e, a, b);
  } else {
    a = load_vec<DT>(row, e);
    b = load_vec<DT>(row, e + N);
  }
}

// Copies a row of d floats between natural order and the paired order of DT (to_paired: natural
// -> paired). Only whole 2N blocks are permuted; the tail stays in order.
template <int DT>
void permute_row(const float* src, float* dst, std::int64_t d, bool to_paired) {
  std::int64_t e = 0;
  if constexpr (kPaired<DT>) {
    for (; e + 2 * N <= d; e += 2 * N)
      for (int i = 0; i < 2 * N; ++i) {
        if (to_paired)
          dst[e + i] = src[e + bf16_pair_index(i)];
        else
          dst[e + bf16_pair_index(i)] = src[e + i];
      }
  }
  for (; e < d; ++e) dst[e] = src[e];
}

struct Scratch {
  float* q;      // [R][d]
  float* s;      // [R][T] scores, then probabilities (times the V scale for int8)
  float* o;      // [R][d]
  float* m;      // [R] running max
  float* l;      // [R] running sum
  float* alpha;  // [R] this tile's rescale of O
};

// Scores of rows [r0, r0 + rb) against keys t and t + 1 (when `two`): s[r][t] = q_r · k_t, unscaled.
template <int DT, int rb>
void score_pair(const Scratch& w, std::int64_t d, std::int64_t r0, const void* k0, const void* k1, bool two,
                std::int64_t t) {
  const std::int64_t dv = d / N * N, dv2 = d / (2 * N) * (2 * N);
  Vec::T acc0[rb], acc1[rb];
#pragma GCC unroll 4
  for (int r = 0; r < rb; ++r) acc0[r] = acc1[r] = Vec::zero();
  for (std::int64_t e = 0; e < dv2; e += 2 * N) {
    Vec::T a0, a1, b0, b1;
    load_pair<DT>(k0, e, a0, a1);
    load_pair<DT>(k1, e, b0, b1);
#pragma GCC unroll 4
    for (int r = 0; r < rb; ++r) {
      Vec::T q0 = Vec::load(w.q + (r0 + r) * d + e), q1 = Vec::load(w.q + (r0 + r) * d + e + N);
      __asm__("" : "+x"(q0), "+x"(q1));  // one load feeds both keys (GCC would fold it into each FMA)
      acc0[r] = Vec::fmadd(q0, a0, acc0[r]);
      acc1[r] = Vec::fmadd(q0, b0, acc1[r]);
      acc0[r] = Vec::fmadd(q1, a1, acc0[r]);
      acc1[r] = Vec::fmadd(q1, b1, acc1[r]);
    }
  }
  for (std::int64_t e = dv2; e < dv; e += N) {
    const Vec::T a = load_vec<DT>(k0, e), b = load_vec<DT>(k1, e);
#pragma GCC unroll 4
    for (int r = 0; r < rb; ++r) {
      Vec::T qv = Vec::load(w.q + (r0 + r) * d + e);
      __asm__("" : "+x"(qv));  // one load feeds both keys (GCC would fold it into each FMA)
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
      Vec::T v0, v1;
      load_pair<DT>(vrow[t], e, v0, v1);
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
  static void run(std::int64_t r0, const Scratch* w, std::int64_t d, const void* k0, const void* k1, bool two,
                  std::int64_t t) {
    score_pair<DT, rb>(*w, d, r0, k0, k1, two, t);
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
// kscale, vscale: [rows / rows_per_group][T], the int8 scales of each group's keys (else 1).
void softmax_tile(const Scratch& w, std::int64_t rows, std::int64_t rows_per_group, std::int64_t nt,
                  const float* kscale_all, const float* vscale_all, float scale, const std::int64_t* limit) {
  const Vec::T neg_inf = Vec::set1(kNegInf);
  for (std::int64_t r = 0; r < rows; ++r) {
    float* s = w.s + r * T;
    const float* kscale = kscale_all + r / rows_per_group * T;
    const float* vscale = vscale_all + r / rows_per_group * T;
    // Scale (times int8's K scale); keys past the tile or past the row's causal limit get -inf.
    const std::int64_t visible = std::min(nt, limit[r]);
    Vec::T mv = neg_inf;
    Vec::T bad = Vec::zero();  // NaN in a lane once a visible score is not finite (README, "NaN and inf")
    for (std::int64_t t = 0; t < T; t += N) {
      Vec::T x = Vec::mul(Vec::load(s + t), Vec::mul(Vec::set1(scale), Vec::load(kscale + t)));
      // keep_lanes wants hi within [-1, N]: a row may see none of this tile (visible <= 0).
      if (visible < t + N) {
        const int hi = int(std::max<std::int64_t>(visible - t, 0)) - 1;
        bad = Vec::add(bad, Vec::keep_lanes(Vec::mul(x, Vec::zero()), 0, hi, Vec::zero()));
        x = Vec::keep_lanes(x, 0, hi, neg_inf);
      } else {
        bad = Vec::fmadd(x, Vec::zero(), bad);
      }
      Vec::store(s + t, x);
      mv = Vec::max(mv, x);
    }
    if (__builtin_isnan(Vec::hsum(bad)) || __builtin_isnan(w.l[r])) {  // poisoned: the row ends NaN
      std::fill(s, s + T, 0.f);
      w.alpha[r] = __builtin_nanf("");
      w.l[r] = __builtin_nanf("");
      continue;
    }
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
      Vec::store(s + t, p);
    }
    float alpha = 0.f;
    if (w.m[r] == kNegInf || w.m[r] == m_new) {
      alpha = w.m[r] == kNegInf ? 0.f : 1.f;
    } else {
      Vec::store(lanes, exp(Vec::set1(w.m[r] - m_new)));
      alpha = lanes[0];
    }
    // O stays normalized (a convex combination of V rows, so it cannot overflow where the answer
    // does not): P is divided by the new sum (>= 1: the max's own exp(0)), the old O rescaled by
    // alpha·l_old/l_new.
    const float l_new = w.l[r] * alpha + Vec::hsum(sum);
    const float inv = 1.f / l_new;
    const Vec::T vinv = Vec::set1(inv);
    for (std::int64_t t = 0; t < T; t += N)
      Vec::store(s + t, Vec::mul(Vec::load(s + t), Vec::mul(Vec::load(vscale + t), vinv)));
    w.alpha[r] = alpha * w.l[r] * inv;
    w.l[r] = l_new;
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

void copy_bytes(std::uint8_t* dst, const std::uint8_t* src, std::size_t n) {
  std::size_t i = 0;
  for (; i + sizeof(Vec::T) <= n; i += sizeof(Vec::T))
    Vec::store(reinterpret_cast<float*>(dst + i), Vec::load(reinterpret_cast<const float*>(src + i)));
  for (; i < n; ++i) dst[i] = src[i];
}

// Memory order. An item covers every KV head of its tokens, and reads each cache row [Hkv·D]
// front to back: scores go key pair by key pair through all heads, and V rows are copied, in row
// order, into [head][token] staging for P·V. Walking one head across the tile's rows instead
// strides by a whole row and runs at half the read bandwidth (measured: 15 vs 27 GB/s on two
// Zen 3 cores for 8 KV heads), because the prefetchers lose track of that many streams.
template <int DT>
void run_chunk(const DecodeParams& p, const DecodeItem& it, float* scratch) {
  const std::int64_t G = p.hq / p.hkv, R = G * p.nq, d = p.d, HR = p.hkv * R;
  Scratch all;
  all.q = scratch;
  all.s = all.q + HR * d;
  all.o = all.s + HR * T;
  all.m = all.o + HR * d;
  all.l = all.m + HR;
  all.alpha = all.l + HR;
  std::int64_t* rel = reinterpret_cast<std::int64_t*>(all.alpha + HR + (HR & 1));  // [HR]
  std::uint8_t* stage_v = reinterpret_cast<std::uint8_t*>(scratch + stage_offset(p));
  // Row r of group g = i·G + j: query token i, head g·G + j. Token i sees keys [0, L − nq + i].
  const std::int64_t L = p.seqlens[it.b];
  for (std::int64_t g = 0; g < p.hkv; ++g)
    for (std::int64_t i = 0; i < p.nq; ++i)
      for (std::int64_t j = 0; j < G; ++j) {
        const std::int64_t r = g * R + i * G + j;
        permute_row<DT>(p.q + ((it.b * p.nq + i) * p.hq + g * G + j) * d, all.q + r * d, d, true);
        all.m[r] = kNegInf;
        all.l[r] = 0;
      }
  std::fill(all.o, all.o + HR * d, 0.f);

  const std::int32_t* table = p.tables + std::int64_t(p.seqs[it.b]) * p.blocks_per_seq;
  const std::size_t row_bytes = std::size_t(p.hkv * d) * elem_bytes(DT), hb = std::size_t(d) * elem_bytes(DT);
  const std::uint8_t *kbase[T], *vbase[T];
  const void* vrow[T];
  std::int64_t rows[T];
  float* kscale = scratch + stage_offset(p) + T * p.hkv * d;  // [Hkv][T], after the V staging
  float* vscale = kscale + p.hkv * T;
  for (std::int64_t t0 = it.t0; t0 < it.t1; t0 += T) {
    const std::int64_t nt = std::min(T, it.t1 - t0);
    token_rows(p, table, t0, nt, row_bytes, kbase, vbase, rows);
    for (std::int64_t g = 0; g < p.hkv; ++g)
      for (std::int64_t t = 0; t < T; ++t) {
        kscale[g * T + t] = t >= nt ? 0.f : DT == kI8 ? p.k_scale[rows[t] * p.hkv + g] : 1.f;
        vscale[g * T + t] = t >= nt ? 0.f : DT == kI8 ? p.v_scale[rows[t] * p.hkv + g] : 1.f;
      }
    for (std::int64_t r = 0; r < HR; ++r) rel[r] = L - p.nq + (r % R) / G + 1 - t0;
    for (std::int64_t t = 0; t < nt; t += 2) {
      const bool two = t + 1 < nt;
      for (std::int64_t g = 0; g < p.hkv; ++g) {
        const Scratch w{all.q + g * R * d, all.s + g * R * T, nullptr, nullptr, nullptr, nullptr};
        const std::uint8_t* k0 = kbase[t] + std::size_t(g) * hb;
        for_row_blocks<DT, Scores>(R, &w, d, static_cast<const void*>(k0),
                                   static_cast<const void*>(two ? kbase[t + 1] + std::size_t(g) * hb : k0),
                                   two, t);
      }
    }
    for (std::int64_t t = 0; t < nt; ++t)
      for (std::int64_t g = 0; g < p.hkv; ++g)
        copy_bytes(stage_v + std::size_t(g * T + t) * hb, vbase[t] + g * hb, hb);
    softmax_tile(all, HR, R, nt, kscale, vscale, p.scale, rel);
    for (std::int64_t g = 0; g < p.hkv; ++g) {
      const Scratch w{nullptr, all.s + g * R * T, all.o + g * R * d, nullptr, nullptr, all.alpha + g * R};
      for (std::int64_t t = 0; t < nt; ++t) vrow[t] = stage_v + std::size_t(g * T + t) * hb;
      for_row_blocks<DT, Pv>(R, &w, d, static_cast<const void* const*>(vrow), nt);
    }
  }
  for (std::int64_t r = 0; r < HR; ++r) {
    float* out = it.partial + r * (d + 2);
    out[0] = all.m[r];
    out[1] = all.l[r];
    permute_row<DT>(all.o + r * d, out + 2, d, false);
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
