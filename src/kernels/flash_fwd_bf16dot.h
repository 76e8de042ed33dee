// The AVX-512 BF16 dot-product policy of flash_fwd_impl.h, for bf16 inputs: a fragment included
// inside that file's namespace when the translation unit is compiled with -mavx512bf16.
//
// vdpbf16ps multiplies bf16 pairs and adds both products into one f32 lane, so each operand is
// laid out in pairs along the reduction axis:
//  - Sᵀ = K·Qᵀ reduces over D: Qᵀ is packed once per item as (q[i][d], q[i][d+1]) dwords with
//    lanes along the query rows; (k[j][d], k[j][d+1]) is broadcast as one dword from K rows:
//    copied once per call into contiguous rows, zero padded to even D, when 8 or more items read
//    each KV head (packed_kv.h: read in place their rows share a few L1 set offsets; side by side
//    on one Zen 4 thread, 2k causal 5 %, GQA 32/8 9 % faster); else read in place (odd D or
//    strided keys copied per tile with a zero pad).
//  - O += P·V reduces over keys: P (the softmax output, lanes along query rows) is rounded to bf16
//    and paired as (p[j][i], p[j+1][i]), by the softmax itself when nothing changes P after it
//    (no dropout; ~1.7 % faster at 2k than storing f32 P and packing it); V rows j, j+1 are
//    interleaved into (v[j][c], v[j+1][c]) dwords with lanes along the value dim: once per call
//    when at least 8 items read each KV head (packed_kv.h; 2k: 5 % faster), else per tile.
// Products of bf16 values are exact in f32 and accumulate in f32; the one extra rounding is P to
// bf16, which the naive bf16 path (the accuracy yardstick) makes too.

#include "kernels/bf16_pairs.h"

// Sᵀ block: NK keys × NV query vectors, over Dp = ceil(D / 2) pairs.
template <int NK, int NV>
inline void qk_block_bf16(const std::uint32_t* __restrict Qp, std::int64_t Dp,
                          const std::uint16_t* const* krows, float* __restrict S, std::int64_t iv0) {
  __m512 acc[NK][NV];
#pragma GCC unroll 8
  for (int k = 0; k < NK; ++k)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[k][v] = _mm512_setzero_ps();
  const std::uint32_t* q = Qp + iv0 * N;
  for (std::int64_t dp = 0; dp < Dp; ++dp, q += BQ) {
    __m512i qv[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) qv[v] = _mm512_loadu_si512(q + v * N);
#pragma GCC unroll 8
    for (int k = 0; k < NK; ++k) {
      const __m512i kb = _mm512_set1_epi32(int(load_pair(krows[k] + 2 * dp)));
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[k][v] = _mm512_dpbf16_ps(acc[k][v], as_bh(qv[v]), as_bh(kb));
    }
  }
#pragma GCC unroll 8
  for (int k = 0; k < NK; ++k)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(S + k * BQ + (iv0 + v) * N, acc[k][v]);
}

// O rows r0..r0+NR, vectors c0..c0+NC: alpha·O + Σ over key pairs [jp0, jp1).
template <int NR, int NC>
inline void pv_block_bf16(const std::uint32_t* __restrict Pp, const std::uint32_t* __restrict Vp,
                          std::int64_t ldv, std::int64_t jp0, std::int64_t jp1, float* __restrict O,
                          std::int64_t ldo, const float* alpha, std::int64_t r0, std::int64_t c0) {
  __m512 acc[NR][NC];
#pragma GCC unroll 8
  for (int r = 0; r < NR; ++r) {
    const __m512 a = _mm512_set1_ps(alpha[r0 + r]);
#pragma GCC unroll 8
    for (int c = 0; c < NC; ++c)
      acc[r][c] = _mm512_mul_ps(_mm512_loadu_ps(O + (r0 + r) * ldo + (c0 + c) * N), a);
  }
  for (std::int64_t jp = jp0; jp < jp1; ++jp) {
    __m512i vv[NC];
#pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) vv[c] = _mm512_loadu_si512(Vp + jp * ldv + (c0 + c) * N);
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) {
      const __m512i pb = _mm512_set1_epi32(int(Pp[jp * BQ + r0 + r]));
#pragma GCC unroll 8
      for (int c = 0; c < NC; ++c) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], as_bh(vv[c]), as_bh(pb));
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < NR; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) _mm512_storeu_ps(O + (r0 + r) * ldo + (c0 + c) * N, acc[r][c]);
}

// pv_block_bf16 over all `nvec` vectors of rows [r0, r0 + NR), for the key pairs one of them sees.
template <int NR>
inline void pv_rows_bf16(const std::uint32_t* Pp, const std::uint32_t* Vp, std::int64_t ldv, const RowKeys& rk,
                         float* O, std::int64_t ldo, const float* alpha, std::int64_t r0, std::int64_t nvec) {
  const std::int64_t jp0 = rk.jlo[r0] / 2, jp1 = (rk.jhi[r0 + NR - 1] + 1) / 2;
  std::int64_t c0 = 0;
  for (; c0 + DB <= nvec; c0 += DB) pv_block_bf16<NR, DB>(Pp, Vp, ldv, jp0, jp1, O, ldo, alpha, r0, c0);
  switch (nvec - c0) {
    case 1: pv_block_bf16<NR, 1>(Pp, Vp, ldv, jp0, jp1, O, ldo, alpha, r0, c0); break;
    case 2: pv_block_bf16<NR, 2>(Pp, Vp, ldv, jp0, jp1, O, ldo, alpha, r0, c0); break;
    case 3: pv_block_bf16<NR, 3>(Pp, Vp, ldv, jp0, jp1, O, ldo, alpha, r0, c0); break;
    default: break;
  }
}

struct Bf16Dot {
  static void load_q(Item& it) {
    const AttentionParams& p = it.p;
    auto* Qp = reinterpret_cast<std::uint32_t*>(it.Qt);
    const std::int64_t Dp = (it.D + 1) / 2;
    // Rows of unit stride and even length: each pair is one dword, gathered 16 rows at a time
    // (gather_rows).
    if (p.q_stride[3] == 1 && it.D % 2 == 0 && p.q_stride[1] < kMaxGatherStride) {
      const auto* base = reinterpret_cast<const std::uint16_t*>(it.qbase);
      for (std::int64_t v = 0; v < QV; ++v) {
        const __m512i idx = gather_rows(p.q_stride[1], v);
        const __mmask16 m = rows_in(it, v);
        for (std::int64_t dp = 0; dp < Dp; ++dp)
          _mm512_storeu_si512(Qp + dp * BQ + v * N,
                              _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), m, idx, base + 2 * dp, 2));
      }
      return;
    }
    std::uint16_t row[kFlashMaxDim + 1];
    for (std::int64_t r = 0; r < BQ; ++r) {
      if (r < it.rows) {
        const auto* src = reinterpret_cast<const std::uint16_t*>(it.qbase) + r * p.q_stride[1];
        for (std::int64_t d = 0; d < it.D; ++d) row[d] = src[d * p.q_stride[3]];
        row[it.D] = 0;
      } else {
        std::memset(row, 0, sizeof row);
      }
      for (std::int64_t dp = 0; dp < Dp; ++dp)
        Qp[dp * BQ + r] = std::uint32_t(row[2 * dp]) | std::uint32_t(row[2 * dp + 1]) << 16;
    }
  }

  static void scores(Item& it, std::int64_t kb, std::int64_t cols) {
    const AttentionParams& p = it.p;
    const auto* ktile = reinterpret_cast<const std::uint16_t*>(it.key_tile(kb));
    const std::int64_t Dp = (it.D + 1) / 2;
    const bool direct = keys_in_place(it) || it.krows != nullptr;
    auto* Kc = reinterpret_cast<std::uint16_t*>(it.Kc);  // [BK][2·Dp], zero padded
    if (!direct) {
      for (std::int64_t j = 0; j < cols; ++j) {
        for (std::int64_t d = 0; d < it.D; ++d)
          Kc[j * 2 * Dp + d] = ktile[j * p.k_stride[1] + d * p.k_stride[3]];
        if (it.D % 2 != 0) Kc[j * 2 * Dp + it.D] = 0;
      }
    }
    score_tile<Bf16Dot>(it, kb, cols);
  }

  // Even-D keys with unit stride are read in place as pairs; others are copied into Kc, zero padded.
  static bool keys_in_place(const Item& it) { return it.p.k_stride[3] == 1 && it.D % 2 == 0; }

  // Groups of 4 keys: Qᵀ pairs are 16 KB at D = 128 and stay in L1; 6-key groups measured no faster.
  static constexpr int kWide = KB;
  using KeyRow = const std::uint16_t*;
  static KeyRow key_row(const Item& it, std::int64_t kb, std::int64_t j) {
    if (it.krows != nullptr) return reinterpret_cast<const std::uint16_t*>(it.packed_key(kb + j));
    return keys_in_place(it) ? reinterpret_cast<const std::uint16_t*>(it.key_tile(kb)) + j * it.p.k_stride[1]
                      : reinterpret_cast<const std::uint16_t*>(it.Kc) + j * 2 * ((it.D + 1) / 2);
  }
  template <int NK, int NV>
  static void block(const Item& it, const KeyRow* kr, std::int64_t j0, std::int64_t iv0) {
    qk_block_bf16<NK, NV>(reinterpret_cast<const std::uint32_t*>(it.Qt), (it.D + 1) / 2, kr, it.S + j0 * BQ, iv0);
  }

  // P of keys 2·jp and 2·jp + 1 for query vector v (f32, lanes along rows) as bf16 pairs, rounded
  // as the naive bf16 path rounds P. The softmax calls it directly when P changes no more
  // (it.p_paired), which saves storing P as f32 and reading it back.
  static constexpr bool kPairsP = true;
  static void store_p(const Item& it, std::int64_t jp, std::int64_t v, __m512 e0, __m512 e1) {
    const __m512i pair = _mm512_or_si512(bf16_low(e0), _mm512_slli_epi32(bf16_low(e1), 16));
    _mm512_storeu_si512(reinterpret_cast<std::uint32_t*>(it.Pp) + jp * BQ + v * N, pair);
  }

  // The tile's V rows paired into Vc.
  static const std::uint32_t* pair_values(Item& it, std::int64_t kb, std::int64_t cols) {
    const AttentionParams& p = it.p;
    const auto* vtile = reinterpret_cast<const std::uint16_t*>(it.value_tile(kb));
    auto* Vp = reinterpret_cast<std::uint32_t*>(it.Vc);
    const bool vec_rows = p.v_stride[3] == 1;
    for (std::int64_t jp = 0; jp < (cols + 1) / 2; ++jp) {
      const std::uint16_t* a = vtile + 2 * jp * p.v_stride[1];
      const std::uint16_t* b = 2 * jp + 1 < cols ? a + p.v_stride[1] : nullptr;
      std::uint32_t* dst = Vp + jp * it.DvP;
      std::int64_t c = 0;
      if (vec_rows) {
        for (; c + N <= it.Dv; c += N) _mm512_storeu_si512(dst + c, pair_rows16(a + c, b == nullptr ? nullptr : b + c));
      }
      for (; c < it.Dv; ++c)
        dst[c] = std::uint32_t(a[c * p.v_stride[3]]) |
                 (b == nullptr ? 0u : std::uint32_t(b[c * p.v_stride[3]]) << 16);
      for (; c < it.DvP; ++c) dst[c] = 0;
    }
    return Vp;
  }

  static void accumulate(Item& it, std::int64_t kb, std::int64_t cols) {
    const std::int64_t pairs = (cols + 1) / 2;
    // V rows j, j+1 -> (v[j][c], v[j+1][c]) dwords, [pairs][DvP], zero padded: the call's pairs
    // (packed_kv.h) when it made them, else paired here.
    const std::uint32_t* Vp = it.tile_pairs(kb, cols);
    if (Vp == nullptr) Vp = pair_values(it, kb, cols);
    // P (f32, [key][row]) -> (p[j][i], p[j+1][i]) bf16 dwords, [pairs][BQ], unless the softmax
    // already stored it so.
    auto* Pp = reinterpret_cast<std::uint32_t*>(it.Pp);
    if (!it.p_paired)
      for (std::int64_t jp = 0; jp < pairs; ++jp) {
        const float* a = it.S + 2 * jp * BQ;
        for (std::int64_t v = 0; v < it.qv_rows; ++v)
          store_p(it, jp, v, _mm512_loadu_ps(a + v * N),
                  2 * jp + 1 < cols ? _mm512_loadu_ps(a + BQ + v * N) : _mm512_setzero_ps());
      }
    RowKeys rk;
    it.row_keys(kb, cols, rk);
    std::int64_t r0 = 0;
    for (; r0 + RB <= it.rows; r0 += RB) pv_rows_bf16<RB>(Pp, Vp, it.DvP, rk, it.O, it.DvP, it.alpha, r0, it.DvP / N);
    for (; r0 < it.rows; ++r0) pv_rows_bf16<1>(Pp, Vp, it.DvP, rk, it.O, it.DvP, it.alpha, r0, it.DvP / N);
  }
};
