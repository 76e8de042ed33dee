// The flash-attention forward body in portable C++, compiled once per ISA: each
// flash_fwd_<isa>.cc defines MHA_KERNEL_NS and includes this file under its own -m flags, and the
// compiler vectorizes the fixed-width inner loops for that ISA. Everything here has internal
// linkage, so no code compiled for one ISA can leak into another's callers.
//
// Tiling (FlashAttention-2 order, one work item = 64 query rows of one head):
//   Q tile [64 x D] is converted to f32 once and stays in L1/L2 for the whole item.
//   For each 64-key tile inside the visible key range (causal/window tiles outside it are never
//   visited): Kᵀ [D x 64] and V [64 x Dv] are converted/packed to f32, S = Q·Kᵀ, then per row the
//   online softmax (new max, one rescale factor per row per tile, P = exp(S - max)), then O += P·V.
//   Working memory is kFlashScratchFloats per thread (~280 KB at D = 256), independent of Nq, Nk.
// Traffic per item: Q once, each visible K/V tile once, O once; K/V are re-read once per query tile
// (64 rows), i.e. 2·Nk·D·Nq/64 element loads against 4·Nq·Nk·D flops: 128 flops per element read.
#ifndef MHA_KERNEL_NS
#error "define MHA_KERNEL_NS before including flash_fwd_impl.h"
#endif

#include <cstdint>
#include <cstring>

#include "kernels/flash_fwd.h"
#include "runtime/dtype_convert.h"

namespace mha::detail::MHA_KERNEL_NS {

namespace {

constexpr std::int64_t BQ = kFlashBlockQ;
constexpr std::int64_t BK = kFlashBlockK;
constexpr std::int64_t kRowBlock = 4;  // rows per micro-kernel step
constexpr float kNegInf = -__builtin_inff();

// exp(x) for x <= ~88, branch-free so loops over it vectorize: x = n·ln2 + r with |r| <= ln2/2,
// exp(r) by a degree-7 Taylor polynomial (truncation < 6e-9 relative), 2^n put in the exponent.
// Relative error about 2 ulp; returns exactly 0 below -87 (including -inf), where the true value is
// under 2^-125 and negligible next to the row maximum's exp(0) = 1.
inline float exp_approx(float x) {
  const float xc = x < -87.0f ? -87.0f : x;
  const float shifter = 12582912.0f;  // 1.5·2^23: adding it rounds to an integer
  const float t = xc * 1.44269504088896341f + shifter;
  const float n = t - shifter;
  float r = xc - n * 0.693145751953125f;  // ln2 split in a part exact in f32 and the rest
  r = r - n * 1.428606765330187045e-06f;
  float poly = 1.0f / 5040.0f;
  poly = poly * r + 1.0f / 720.0f;
  poly = poly * r + 1.0f / 120.0f;
  poly = poly * r + 1.0f / 24.0f;
  poly = poly * r + 1.0f / 6.0f;
  poly = poly * r + 0.5f;
  poly = poly * r + 1.0f;
  poly = poly * r + 1.0f;
  const std::int32_t e = std::int32_t(n) + 127;
  const float two_n = __builtin_bit_cast(float, e << 23);
  const float y = poly * two_n;
  return x < -87.0f ? 0.0f : y;
}

// Copies `rows` x `cols` elements (row r at base + r·row_stride, column c at + c·col_stride) into
// dst, as f32, row r at dst + r·ld (or transposed: column c at dst + c·ld when Transpose).
template <bool Transpose>
void load_tile(const void* base, DType dt, std::int64_t row_stride, std::int64_t col_stride,
               std::int64_t rows, std::int64_t cols, float* __restrict dst, std::int64_t ld) {
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::int64_t off = r * row_stride;
    if (dt == DType::f32) {
      const float* src = static_cast<const float*>(base) + off;
      if (!Transpose && col_stride == 1) {
        std::memcpy(dst + r * ld, src, std::size_t(cols) * sizeof(float));
      } else {
        for (std::int64_t c = 0; c < cols; ++c)
          dst[Transpose ? c * ld + r : r * ld + c] = src[c * col_stride];
      }
    } else {
      const std::uint16_t* src = static_cast<const std::uint16_t*>(base) + off;
      for (std::int64_t c = 0; c < cols; ++c) {
        const std::uint16_t h = src[c * col_stride];
        dst[Transpose ? c * ld + r : r * ld + c] =
            dt == DType::bf16 ? bf16_to_f32(h) : f16_to_f32(h);
      }
    }
  }
}

// S[r][j] = Σ_d Q[r][d]·Kᵀ[d][j] for rows [0, rows4) (a multiple of kRowBlock) and all BK columns.
void qk_tile(const float* __restrict Q, std::int64_t D, const float* __restrict Kt,
             float* __restrict S, std::int64_t rows4) {
  for (std::int64_t r = 0; r < rows4; r += kRowBlock) {
    float acc[kRowBlock][BK] = {};
    const float* q = Q + r * D;
    for (std::int64_t d = 0; d < D; ++d) {
      const float* __restrict k = Kt + d * BK;
      const float a0 = q[d], a1 = q[D + d], a2 = q[2 * D + d], a3 = q[3 * D + d];
      for (std::int64_t j = 0; j < BK; ++j) {
        acc[0][j] += a0 * k[j];
        acc[1][j] += a1 * k[j];
        acc[2][j] += a2 * k[j];
        acc[3][j] += a3 * k[j];
      }
    }
    std::memcpy(S + r * BK, acc, sizeof(acc));
  }
}

// O[r][:] += Σ_j P[r][j]·V[j][:] for rows [0, rows4) and keys [0, cols).
void pv_tile(const float* __restrict P, const float* __restrict V, float* __restrict O,
             std::int64_t rows4, std::int64_t cols, std::int64_t Dv) {
  for (std::int64_t r = 0; r < rows4; r += kRowBlock) {
    float* __restrict o0 = O + r * Dv;
    float* __restrict o1 = o0 + Dv;
    float* __restrict o2 = o1 + Dv;
    float* __restrict o3 = o2 + Dv;
    const float* p = P + r * BK;
    for (std::int64_t j = 0; j < cols; ++j) {
      const float p0 = p[j], p1 = p[BK + j], p2 = p[2 * BK + j], p3 = p[3 * BK + j];
      if (p0 == 0.0f && p1 == 0.0f && p2 == 0.0f && p3 == 0.0f) continue;
      const float* __restrict vr = V + j * Dv;
      for (std::int64_t d = 0; d < Dv; ++d) {
        o0[d] += p0 * vr[d];
        o1[d] += p1 * vr[d];
        o2[d] += p2 * vr[d];
        o3[d] += p3 * vr[d];
      }
    }
  }
}

// Row max and sum over BK floats with independent lanes, so both vectorize without reassociation
// flags; the lane order is fixed, so results do not depend on anything but the data.
inline float row_max(const float* __restrict x) {
  float lanes[16];
  for (int i = 0; i < 16; ++i) lanes[i] = x[i];
  for (std::int64_t j = 16; j < BK; j += 16)
    for (int i = 0; i < 16; ++i) lanes[i] = x[j + i] > lanes[i] ? x[j + i] : lanes[i];
  float m = lanes[0];
  for (int i = 1; i < 16; ++i) m = lanes[i] > m ? lanes[i] : m;
  return m;
}

// x[j] = exp(x[j] - shift); returns Σ x[j].
inline float exp_and_sum(float* __restrict x, float shift) {
  float lanes[16] = {};
  for (std::int64_t j = 0; j < BK; j += 16) {
    for (int i = 0; i < 16; ++i) {
      const float e = exp_approx(x[j + i] - shift);
      x[j + i] = e;
      lanes[i] += e;
    }
  }
  float s = 0;
  for (int i = 0; i < 16; ++i) s += lanes[i];
  return s;
}

}  // namespace

void flash_fwd(const AttentionParams& p, const FlashTile& t, float* scratch) {
  const SeqSpan s = seq_span(p, t.b);
  const std::int64_t rows = t.q_end - t.q_begin;
  const std::int64_t rows4 = (rows + kRowBlock - 1) / kRowBlock * kRowBlock;
  const std::int64_t D = p.d, Dv = p.dv;
  const std::int64_t kvh = t.h / (p.hq / p.hkv);
  const std::size_t esz = elem_size(p.in_dtype);

  float* const Q = scratch;                   // [BQ][D]
  float* const Kt = Q + BQ * kFlashMaxDim;    // [D][BK]
  float* const V = Kt + kFlashMaxDim * BK;    // [BK][Dv]
  float* const S = V + BK * kFlashMaxDim;     // [BQ][BK], scores then probabilities
  float* const O = S + BQ * BK;               // [BQ][Dv]
  float* const m = O + BQ * kFlashMaxDim;     // running row max
  float* const l = m + BQ;                    // running row sum

  const auto* qbase = static_cast<const char*>(p.q) +
      esz * std::size_t(s.batch_index * p.q_stride[0] + (s.q_offset + t.q_begin) * p.q_stride[1] +
                        t.h * p.q_stride[2]);
  load_tile<false>(qbase, p.in_dtype, p.q_stride[1], p.q_stride[3], rows, D, Q, D);
  std::memset(Q + rows * D, 0, std::size_t((rows4 - rows) * D) * sizeof(float));
  std::memset(O, 0, std::size_t(rows4 * Dv) * sizeof(float));
  for (std::int64_t r = 0; r < rows; ++r) {
    m[r] = kNegInf;
    l[r] = 0.0f;
  }

  const auto* kbase = static_cast<const char*>(p.k) +
      esz * std::size_t(s.batch_index * p.k_stride[0] + s.k_offset * p.k_stride[1] + kvh * p.k_stride[2]);
  const auto* vbase = static_cast<const char*>(p.v) +
      esz * std::size_t(s.batch_index * p.v_stride[0] + s.k_offset * p.v_stride[1] + kvh * p.v_stride[2]);
  const std::size_t msz = elem_size(p.mask_dtype);
  const char* mbase = p.mask == nullptr ? nullptr
      : static_cast<const char*>(p.mask) + msz * std::size_t(t.b * p.mask_stride[0] + t.h * p.mask_stride[1]);

  const KeyRange keys = visible_keys(p, s, t.q_begin, t.q_end);
  const std::int64_t off = s.len_k - s.len_q;
  for (std::int64_t kb = keys.begin; kb < keys.end; kb += BK) {
    const std::int64_t cols = keys.end - kb < BK ? keys.end - kb : BK;
    load_tile<true>(kbase + esz * std::size_t(kb * p.k_stride[1]), p.in_dtype, p.k_stride[1],
                    p.k_stride[3], cols, D, Kt, BK);
    if (cols < BK)
      for (std::int64_t d = 0; d < D; ++d)
        std::memset(Kt + d * BK + cols, 0, std::size_t(BK - cols) * sizeof(float));
    load_tile<false>(vbase + esz * std::size_t(kb * p.v_stride[1]), p.in_dtype, p.v_stride[1],
                     p.v_stride[3], cols, Dv, V, Dv);

    qk_tile(Q, D, Kt, S, rows4);

    // Is every (row, key) of this tile inside the window? Then no per-element test is needed.
    const bool all_visible =
        (p.window_left < 0 || kb >= (t.q_end - 1) + off - p.window_left) &&
        (p.window_right < 0 || kb + cols - 1 <= t.q_begin + off + p.window_right);
    for (std::int64_t r = 0; r < rows; ++r) {
      float* __restrict srow = S + r * BK;
      const std::int64_t i = t.q_begin + r;
      for (std::int64_t j = 0; j < cols; ++j) srow[j] *= p.scale;
      if (mbase != nullptr) {
        const char* mrow = mbase + msz * std::size_t(i * p.mask_stride[2] + kb * p.mask_stride[3]);
        for (std::int64_t j = 0; j < cols; ++j)
          srow[j] += load_f32(mrow, p.mask_dtype, j * p.mask_stride[3]);
      }
      if (!all_visible)
        for (std::int64_t j = 0; j < cols; ++j)
          if (!key_visible(p, s, i, kb + j)) srow[j] = kNegInf;
      for (std::int64_t j = cols; j < BK; ++j) srow[j] = kNegInf;

      const float tile_max = row_max(srow);
      const float m_new = tile_max > m[r] ? tile_max : m[r];
      if (m_new == kNegInf) {  // every key so far masked: nothing to add
        std::memset(srow, 0, BK * sizeof(float));
        continue;
      }
      const float alpha = m[r] == kNegInf ? 0.0f : __builtin_expf(m[r] - m_new);
      l[r] = l[r] * alpha + exp_and_sum(srow, m_new);
      m[r] = m_new;
      if (alpha != 1.0f) {
        float* __restrict orow = O + r * Dv;
        for (std::int64_t d = 0; d < Dv; ++d) orow[d] *= alpha;
      }
    }
    pv_tile(S, V, O, rows4, cols, Dv);
  }

  // Normalize and store; a row that saw no visible key (l == 0) stores zeros and lse = -inf.
  const std::size_t osz = elem_size(p.out_dtype);
  auto* obase = static_cast<char*>(p.out) +
      osz * std::size_t(s.batch_index * p.out_stride[0] + (s.q_offset + t.q_begin) * p.out_stride[1] +
                        t.h * p.out_stride[2]);
  for (std::int64_t r = 0; r < rows; ++r) {
    const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
    char* orow = obase + osz * std::size_t(r * p.out_stride[1]);
    const float* src = O + r * Dv;
    if (p.out_dtype == DType::f32 && p.out_stride[3] == 1) {
      float* __restrict dst = reinterpret_cast<float*>(orow);
      for (std::int64_t d = 0; d < Dv; ++d) dst[d] = src[d] * inv;
    } else {
      for (std::int64_t d = 0; d < Dv; ++d) store_f32(orow, p.out_dtype, d * p.out_stride[3], src[d] * inv);
    }
    if (p.lse != nullptr)
      p.lse[s.batch_index * p.lse_stride[0] + t.h * p.lse_stride[1] + (s.q_offset + t.q_begin + r) * p.lse_stride[2]] =
          l[r] > 0.0f ? m[r] + __builtin_logf(l[r]) : kNegInf;
  }
}

}  // namespace mha::detail::MHA_KERNEL_NS
