// The AVX-512 BF16 path of flash_bwd_impl.h, for bf16 q/k/v and dout: a fragment included inside
// that file's namespace when the translation unit is compiled with -mavx512bf16.
//
// All five products of a block pair run on vdpbf16ps through the same micro-kernel as the f32
// path (gemm<Bf16Dot>), whose elements are dwords of two bf16 values consecutive along each
// product's reduction axis:
//   S  = Q·Kᵀ    over D:    Q rows read as pairs (Qraw)    × Kᵀ pairs [D/2][keys]   (KpD)
//   dP = dO·Vᵀ   over Dv:   dO rows read as pairs (dOraw)  × Vᵀ pairs [Dv/2][keys]  (VpD)
//   dV += Pdᵀ·dO over rows: Pd row pairs [rows/2][keys]    × dO row pairs [rows/2][Dv] (dOpR)
//   dK += dSᵀ·Q  over rows: dS row pairs [rows/2][keys]    × Q row pairs [rows/2][D]   (QpR)
//   dQ += dS·K   over keys: dS rows as bf16 (dSJ)         × K key pairs [keys/2][D]   (KpJ)
// As in the f32 path, the transposed operands Pdᵀ and dSᵀ are never transposed: the micro-kernel
// broadcasts A from any strides. Products of bf16 values are exact in f32 and accumulate in f32;
// the extra roundings are Pd and dS to bf16, which the naive bf16 backward (the accuracy
// yardstick) makes too. S, P, dP, dS and delta stay f32, so the softmax gradient is unchanged.
// Packing cost per block pair: Q and dO twice each (as rows and as row pairs), ~2·64·(D + Dv)
// 16-bit moves against 5·64·64·D/2 dot instructions' worth of pairs; the key block's three
// layouts are packed once and shared by every query block and head of the group.

#include "kernels/bf16_pairs.h"

struct Bf16Dot {
  using E = std::uint32_t;
  using A = __m512i;
  using B = __m512i;
  static A bcast(const E* a) { return _mm512_set1_epi32(int(*a)); }
  static B load(const E* b) { return _mm512_loadu_si512(b); }
  static __m512 fma(A a, B b, __m512 c) { return _mm512_dpbf16_ps(c, as_bh(b), as_bh(a)); }
};

// The bf16 tiles, laid over the f32 path's scratch regions (each MAXD·BK floats) and past its rows.
struct Bf16Tiles {
  std::uint32_t *KpD, *KpJ, *VpD, *Qraw, *QpR, *dOraw, *dOpR, *PdR, *dSR, *dSJ;
  std::int64_t Dp, Dvp;  // pairs per Q/K row and per dO/V row
  explicit Bf16Tiles(const Work& w) {
    KpD = reinterpret_cast<std::uint32_t*>(w.Kt);   // [Dp][BK]
    KpJ = reinterpret_cast<std::uint32_t*>(w.Kr);   // [BK/2][DP]
    VpD = reinterpret_cast<std::uint32_t*>(w.Vt);   // [Dvp][BK]
    Qraw = reinterpret_cast<std::uint32_t*>(w.Q);   // [BQ][Dp]
    QpR = Qraw + BQ * MAXD / 2;                     // [BQ/2][DP]
    dOraw = reinterpret_cast<std::uint32_t*>(w.dO); // [BQ][Dvp]
    dOpR = dOraw + BQ * MAXD / 2;                   // [BQ/2][DvP]
    PdR = reinterpret_cast<std::uint32_t*>(w.drow + BK);  // [BQ/2][BK]
    dSR = PdR + BQ / 2 * BK;                              // [BQ/2][BK]
    dSJ = dSR + BQ / 2 * BK;                              // [BQ][BK/2]
    Dp = (w.D + 1) / 2;
    Dvp = (w.Dv + 1) / 2;
  }
};
static_assert(7 * MAXD * BK + 2 * BQ * BK + 2 * BK + 3 * BQ * BK / 2 <= kBwdScratchFloats,
              "bf16 tiles fit the backward scratch");

// dst[0..n) = the bf16 row src[0], src[stride], ..., zeros up to `padded`.
inline void row_bf16(const void* src, std::int64_t stride, std::int64_t n, std::int64_t padded,
                     std::uint16_t* __restrict dst) {
  const auto* s = static_cast<const std::uint16_t*>(src);
  if (stride == 1) {
    std::memcpy(dst, s, std::size_t(n) * sizeof(std::uint16_t));
  } else {
    for (std::int64_t i = 0; i < n; ++i) dst[i] = s[i * stride];
  }
  for (std::int64_t i = n; i < padded; ++i) dst[i] = 0;
}

// dst[i·ld] = (a[2i], a[2i+1]) for i < pairs: a bf16 row as dwords of pairs along it.
inline void pairs_along(const std::uint16_t* a, std::int64_t pairs, std::uint32_t* dst, std::int64_t ld) {
  for (std::int64_t i = 0; i < pairs; ++i) dst[i * ld] = load_pair(a + 2 * i);
}

// dst[c] = (lo[c], hi[c]) for c < n (a multiple of N): two bf16 rows paired element by element.
inline void pairs_across(const std::uint16_t* lo, const std::uint16_t* hi, std::int64_t n, std::uint32_t* dst) {
  for (std::int64_t c = 0; c < n; c += N) _mm512_storeu_si512(dst + c, pair_rows16(lo + c, hi + c));
}

struct Bf16Path {
  // KpD, VpD (pairs along the head dims, lanes along keys) and KpJ (key pairs, lanes along D).
  static void keys(Work& w, std::int64_t j0, std::int64_t cols) {
    const AttentionParams& p = w.p;
    const Bf16Tiles t(w);
    alignas(64) std::uint16_t krow[2][MAXD + 2], vrow[MAXD + 2];
    for (std::int64_t j = 0; j < BK; j += 2) {
      for (std::int64_t u = 0; u < 2; ++u) {
        const std::int64_t jj = j + u;
        if (jj < cols) {
          row_bf16(static_cast<const std::uint16_t*>(p.k) + w.k_index(p.k_stride, j0 + jj), p.k_stride[3], w.D,
                   w.DP, krow[u]);
          row_bf16(static_cast<const std::uint16_t*>(p.v) + w.k_index(p.v_stride, j0 + jj), p.v_stride[3], w.Dv,
                   2 * t.Dvp, vrow);
        } else {
          std::memset(krow[u], 0, sizeof krow[u]);
          std::memset(vrow, 0, sizeof vrow);
        }
        pairs_along(krow[u], t.Dp, t.KpD + jj, BK);
        pairs_along(vrow, t.Dvp, t.VpD + jj, BK);
      }
      pairs_across(krow[0], krow[1], w.DP, t.KpJ + j / 2 * w.DP);
    }
  }

  // Q and dO rows [i0, i0 + rows) of head h as rows of pairs (Qraw, dOraw) and as row pairs
  // (QpR, dOpR); a missing odd row pairs with zeros.
  static void queries(Work& w, const Bf16Tiles& t, std::int64_t h, std::int64_t i0, std::int64_t rows) {
    const AttentionParams& p = w.p;
    alignas(64) std::uint16_t qrow[2][MAXD + 2], grow[2][MAXD + 2];
    for (std::int64_t r = 0; r < rows; r += 2) {
      for (std::int64_t u = 0; u < 2; ++u) {
        const std::int64_t rr = r + u;
        if (rr < rows) {
          row_bf16(static_cast<const std::uint16_t*>(p.q) + w.q_index(p.q_stride, i0 + rr, h), p.q_stride[3],
                   w.D, w.DP, qrow[u]);
          row_bf16(static_cast<const std::uint16_t*>(w.bp.dout) + w.q_index(w.bp.dout_stride, i0 + rr, h),
                   w.bp.dout_stride[3], w.Dv, w.DvP, grow[u]);
          std::memcpy(t.Qraw + rr * t.Dp, qrow[u], std::size_t(t.Dp) * sizeof(std::uint32_t));
          std::memcpy(t.dOraw + rr * t.Dvp, grow[u], std::size_t(t.Dvp) * sizeof(std::uint32_t));
        } else {
          std::memset(qrow[u], 0, sizeof qrow[u]);
          std::memset(grow[u], 0, sizeof grow[u]);
        }
      }
      pairs_across(qrow[0], qrow[1], w.DP, t.QpR + r / 2 * w.DP);
      pairs_across(grow[0], grow[1], w.DvP, t.dOpR + r / 2 * w.DvP);
    }
  }

  // Pd (in S) and dS (in dP), f32, rounded to bf16 as row pairs (PdR, dSR) and as rows (dSJ).
  static void round_probs(const Work& w, const Bf16Tiles& t, std::int64_t rows) {
    for (std::int64_t r = 0; r < rows; r += 2) {
      const bool second = r + 1 < rows;
      for (std::int64_t v = 0; v < KV; ++v) {
        const float* s = w.S + r * BK + v * N;
        const float* d = w.dP + r * BK + v * N;
        __m512i sp = bf16_low(Vec::load(s)), dp = bf16_low(Vec::load(d));
        if (second) {
          sp = _mm512_or_si512(sp, _mm512_slli_epi32(bf16_low(Vec::load(s + BK)), 16));
          dp = _mm512_or_si512(dp, _mm512_slli_epi32(bf16_low(Vec::load(d + BK)), 16));
        }
        _mm512_storeu_si512(t.PdR + r / 2 * BK + v * N, sp);
        _mm512_storeu_si512(t.dSR + r / 2 * BK + v * N, dp);
      }
    }
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t v = 0; v < KV; ++v)
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(t.dSJ + r * (BK / 2) + v * (N / 2)),
                            (__m256i)_mm512_cvtneps_pbh(Vec::load(w.dP + r * BK + v * N)));
  }

  static void pair(Work& w, std::int64_t h, std::int64_t i0, std::int64_t rows, std::int64_t j0,
                   std::int64_t cols, float* dq, std::int64_t ldq) {
    const Bf16Tiles t(w);
    queries(w, t, h, i0, rows);
    gemm<Bf16Dot>(rows, KV, t.Dp, t.Qraw, t.Dp, 1, t.KpD, BK, w.S, BK, false);       // S = Q·Kᵀ
    gemm<Bf16Dot>(rows, KV, t.Dvp, t.dOraw, t.Dvp, 1, t.VpD, BK, w.dP, BK, false);  // dP = dO·Vᵀ
    softmax_grad(w, h, i0, rows, j0, cols);
    round_probs(w, t, rows);
    const std::int64_t row_pairs = (rows + 1) / 2;
    gemm<Bf16Dot>(cols, w.DvP / N, row_pairs, t.PdR, 1, BK, t.dOpR, w.DvP, w.dV, w.DvP, true);  // dV += Pdᵀ·dO
    gemm<Bf16Dot>(cols, w.DP / N, row_pairs, t.dSR, 1, BK, t.QpR, w.DP, w.dK, w.DP, true);      // dK += dSᵀ·Q
    gemm<Bf16Dot>(rows, w.DP / N, (cols + 1) / 2, t.dSJ, BK / 2, 1, t.KpJ, w.DP, dq, ldq, true);  // dQ += dS·K
  }
};
