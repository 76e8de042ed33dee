// The flash-attention forward body, written once over the vector type of simd.h and compiled per
// ISA: each flash_fwd_<isa>.cc defines MHA_KERNEL_NS and includes this file under its own -m flags.
// Everything here has internal linkage, so no code compiled for one ISA leaks into another's callers.
//
// One work item = up to 64 query rows (BQ) of one head, against 64-key tiles (BK) of the visible
// key range; tiles outside it (causal, window) are never visited.
//
// The scores are computed transposed, Sᵀ = K·Qᵀ, with vector lanes along the query rows:
//  - Qᵀ [D][64] is packed (and converted to f32) once per item;
//  - K rows are read in place (f32 with unit stride) or converted once per tile: each Sᵀ register
//    block broadcasts K[j][d] for KB keys and multiplies by IV vectors of Qᵀ[d] (KB·IV FMAs per
//    IV + KB loads), so f32 keys are never packed or transposed;
//  - the online softmax then runs down the key axis with N query rows per vector: row max, exp and
//    sum are lane-wise across vectors, with no horizontal reductions, and the rescale factor
//    alpha = exp(m_old - m_new) is one vector per N rows per tile;
//  - O [64][Dv] += P·V keeps RB rows × DB vectors of O in registers over the tile's keys,
//    broadcasting P[i][j] and reading V rows in place; the alpha rescale is folded into the load
//    of those registers, so it costs one multiply per O element per tile.
// Traffic: Q once per item; each visible K/V tile once per item (from L2 for long sequences);
// O stays in L1/L2 until the item ends. Working memory is kFlashScratchFloats per thread
// (~420 KB at D = 256), independent of the sequence lengths.
#ifndef MHA_KERNEL_NS
#error "define MHA_KERNEL_NS before including flash_fwd_impl.h"
#endif

#include <cstdint>
#include <cstring>

#include "kernels/flash_fwd.h"
#include "kernels/simd.h"
#include "runtime/dtype_convert.h"

namespace mha::detail::MHA_KERNEL_NS {

namespace {

constexpr std::int64_t BQ = kFlashBlockQ;
constexpr std::int64_t BK = kFlashBlockK;
constexpr int N = Vec::N;
constexpr std::int64_t QV = BQ / N;  // query vectors per item
#if defined(__AVX512F__)
constexpr int KB = 4, IV = 4, RB = 4, DB = 4;  // register blocks: 21 of 32 zmm
#else
constexpr int KB = 4, IV = 2, RB = 4, DB = 2;  // register blocks: 11 of 16 ymm/xmm
#endif
static_assert(BQ % N == 0 && QV % IV == 0 && BK % KB == 0);
constexpr float kNegInf = -__builtin_inff();

inline std::int64_t round_up(std::int64_t x, std::int64_t m) { return (x + m - 1) / m * m; }
inline std::int64_t clamp(std::int64_t x, std::int64_t lo, std::int64_t hi) { return x < lo ? lo : x > hi ? hi : x; }

// dst[0..n) = elements 0, stride, 2·stride, ... of src (dtype dt), as f32.
inline void to_f32(const void* src, DType dt, std::int64_t stride, std::int64_t n, float* __restrict dst) {
  std::int64_t i = 0;
  if (stride == 1) {
    if (dt == DType::f32) {
      std::memcpy(dst, src, std::size_t(n) * sizeof(float));
      return;
    }
#if defined(__AVX2__)
    const auto* s = static_cast<const std::uint16_t*>(src);
    if (dt == DType::f16) {
      for (; i + N <= n; i += N) Vec::store(dst + i, Vec::load_f16(s + i));
    } else {
      for (; i + N <= n; i += N) Vec::store(dst + i, Vec::load_bf16(s + i));
    }
#endif
  }
  for (; i < n; ++i) dst[i] = load_f32(src, dt, i * stride);
}

// Sᵀ[j0 + k][iv0·N ...] for KB keys (rows krows[k]) and NV query vectors of Qᵀ.
template <int NV>
inline void qk_block(const float* __restrict Qt, std::int64_t D, const float* const* krows,
                     float* __restrict S, std::int64_t iv0) {
  Vec::T acc[KB][NV];  // every loop over acc is unrolled, so it lives in registers
#pragma GCC unroll 8
  for (int k = 0; k < KB; ++k)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[k][v] = Vec::zero();
  const float* q = Qt + iv0 * N;
  for (std::int64_t d = 0; d < D; ++d, q += BQ) {
    Vec::T qv[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) qv[v] = Vec::load(q + v * N);
#pragma GCC unroll 8
    for (int k = 0; k < KB; ++k) {
      const Vec::T kb = Vec::bcast(krows[k] + d);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[k][v] = Vec::fmadd(kb, qv[v], acc[k][v]);
    }
  }
#pragma GCC unroll 8
  for (int k = 0; k < KB; ++k)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) Vec::store(S + k * BQ + (iv0 + v) * N, acc[k][v]);
}

// O[r0..r0+NR)[c0·N .. (c0+NC)·N) = alpha·O + Σ_j P[j][r]·V[j][...], P stored as Pᵀ [BK][BQ].
template <int NR, int NC>
inline void pv_block(const float* __restrict P, const float* __restrict V, std::int64_t v_stride,
                     std::int64_t cols, float* __restrict O, std::int64_t ldo, const float* alpha,
                     std::int64_t r0, std::int64_t c0) {
  Vec::T acc[NR][NC];  // every loop over acc is unrolled, so it lives in registers
#pragma GCC unroll 8
  for (int r = 0; r < NR; ++r) {
    const Vec::T a = Vec::bcast(alpha + r0 + r);
#pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) acc[r][c] = Vec::mul(Vec::load(O + (r0 + r) * ldo + (c0 + c) * N), a);
  }
  for (std::int64_t j = 0; j < cols; ++j) {
    const float* vr = V + j * v_stride + c0 * N;
    Vec::T vv[NC];
#pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) vv[c] = Vec::load(vr + c * N);
    const float* p = P + j * BQ + r0;
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) {
      const Vec::T pb = Vec::bcast(p + r);
#pragma GCC unroll 8
      for (int c = 0; c < NC; ++c) acc[r][c] = Vec::fmadd(pb, vv[c], acc[r][c]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < NR; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) Vec::store(O + (r0 + r) * ldo + (c0 + c) * N, acc[r][c]);
}

// pv_block over all `nvec` vectors of one row block.
template <int NR>
inline void pv_rows(const float* P, const float* V, std::int64_t v_stride, std::int64_t cols, float* O,
                    std::int64_t ldo, const float* alpha, std::int64_t r0, std::int64_t nvec) {
  std::int64_t c0 = 0;
  for (; c0 + DB <= nvec; c0 += DB) pv_block<NR, DB>(P, V, v_stride, cols, O, ldo, alpha, r0, c0);
  switch (nvec - c0) {
    case 1: pv_block<NR, 1>(P, V, v_stride, cols, O, ldo, alpha, r0, c0); break;
#if defined(__AVX512F__)
    case 2: pv_block<NR, 2>(P, V, v_stride, cols, O, ldo, alpha, r0, c0); break;
    case 3: pv_block<NR, 3>(P, V, v_stride, cols, O, ldo, alpha, r0, c0); break;
#endif
    default: break;
  }
}

// Full RB-row blocks, then single rows, so a few query rows (decoding) cost only their own work.
inline void pv_tile(const float* P, const float* V, std::int64_t v_stride, std::int64_t cols, float* O,
                    std::int64_t ldo, const float* alpha, std::int64_t rows, std::int64_t nvec) {
  std::int64_t r0 = 0;
  for (; r0 + RB <= rows; r0 += RB) pv_rows<RB>(P, V, v_stride, cols, O, ldo, alpha, r0, nvec);
  for (; r0 < rows; ++r0) pv_rows<1>(P, V, v_stride, cols, O, ldo, alpha, r0, nvec);
}

}  // namespace

void flash_fwd(const AttentionParams& p, const FlashTile& t, float* scratch) {
  const SeqSpan s = seq_span(p, t.b);
  const std::int64_t rows = t.q_end - t.q_begin;
  const std::int64_t D = p.d, Dv = p.dv, DvP = round_up(Dv, N);
  const std::int64_t kvh = t.h / (p.hq / p.hkv);
  const std::size_t esz = elem_size(p.in_dtype);

  float* const Qt = scratch;                  // [D][BQ]
  float* const Kc = Qt + kFlashMaxDim * BQ;   // [BK][D] keys, when not read in place
  float* const Vc = Kc + BK * kFlashMaxDim;   // [BK][DvP] values, when not read in place
  float* const S = Vc + BK * kFlashMaxDim;    // [BK][BQ] Sᵀ, then Pᵀ
  float* const Mt = S + BK * BQ;              // [BK][BQ] mask tile, transposed
  float* const O = Mt + BK * BQ;              // [BQ][DvP]
  float* const m = O + BQ * kFlashMaxDim;     // running max per row
  float* const l = m + BQ;                    // running sum per row
  float* const alpha = l + BQ;                // this tile's rescale per row

  // Qᵀ, zero-padded to BQ rows.
  {
    const auto* qbase = static_cast<const char*>(p.q) +
        esz * std::size_t(s.batch_index * p.q_stride[0] + (s.q_offset + t.q_begin) * p.q_stride[1] + t.h * p.q_stride[2]);
    float row[kFlashMaxDim];
    for (std::int64_t r = 0; r < BQ; ++r) {
      if (r < rows) {
        to_f32(qbase + esz * std::size_t(r * p.q_stride[1]), p.in_dtype, p.q_stride[3], D, row);
      } else {
        std::memset(row, 0, std::size_t(D) * sizeof(float));
      }
      for (std::int64_t d = 0; d < D; ++d) Qt[d * BQ + r] = row[d];
    }
  }
  std::memset(O, 0, std::size_t(BQ * DvP) * sizeof(float));
  for (std::int64_t r = 0; r < BQ; ++r) {
    m[r] = kNegInf;
    l[r] = 0.0f;
  }

  const auto* kbase = static_cast<const char*>(p.k) +
      esz * std::size_t(s.batch_index * p.k_stride[0] + s.k_offset * p.k_stride[1] + kvh * p.k_stride[2]);
  const auto* vbase = static_cast<const char*>(p.v) +
      esz * std::size_t(s.batch_index * p.v_stride[0] + s.k_offset * p.v_stride[1] + kvh * p.v_stride[2]);
  const bool k_direct = p.in_dtype == DType::f32 && p.k_stride[3] == 1;
  const bool v_direct = p.in_dtype == DType::f32 && p.v_stride[3] == 1 && Dv % N == 0;
  const std::size_t msz = elem_size(p.mask_dtype);
  const char* mbase = p.mask == nullptr ? nullptr
      : static_cast<const char*>(p.mask) + msz * std::size_t(t.b * p.mask_stride[0] + t.h * p.mask_stride[1]);
  const bool mask_per_row = mbase != nullptr && p.mask_stride[2] != 0;

  const std::int64_t qv_rows = (rows + N - 1) / N;  // query vectors holding real rows
  const Vec::T scale = Vec::set1(p.scale);
  const Vec::T neg_inf = Vec::set1(kNegInf);
  const KeyRange keys = visible_keys(p, s, t.q_begin, t.q_end);
  const std::int64_t off = s.len_k - s.len_q;

  for (std::int64_t kb = keys.begin; kb < keys.end; kb += BK) {
    const std::int64_t cols = keys.end - kb < BK ? keys.end - kb : BK;
    const char* ktile = kbase + esz * std::size_t(kb * p.k_stride[1]);
    const char* vtile = vbase + esz * std::size_t(kb * p.v_stride[1]);

    // Sᵀ = K·Qᵀ over the tile's keys (a partial last block repeats the last key; masked below).
    if (!k_direct)
      for (std::int64_t j = 0; j < cols; ++j)
        to_f32(ktile + esz * std::size_t(j * p.k_stride[1]), p.in_dtype, p.k_stride[3], D, Kc + j * D);
    auto key_row = [&](std::int64_t j) {
      return k_direct ? reinterpret_cast<const float*>(ktile) + j * p.k_stride[1] : Kc + j * D;
    };
    for (std::int64_t j0 = 0; j0 < cols; j0 += KB) {
      const float* kr[KB];
      for (int k = 0; k < KB; ++k) kr[k] = key_row(j0 + k < cols ? j0 + k : cols - 1);
      std::int64_t iv0 = 0;
      for (; iv0 + IV <= qv_rows; iv0 += IV) qk_block<IV>(Qt, D, kr, S + j0 * BQ, iv0);
      for (; iv0 < qv_rows; ++iv0) qk_block<1>(Qt, D, kr, S + j0 * BQ, iv0);
    }

    if (mask_per_row) {
      for (std::int64_t j = 0; j < cols; ++j) {
        float* mt = Mt + j * BQ;
        const char* mcol = mbase + msz * std::size_t((kb + j) * p.mask_stride[3] + t.q_begin * p.mask_stride[2]);
        for (std::int64_t r = 0; r < rows; ++r) mt[r] = load_f32(mcol, p.mask_dtype, r * p.mask_stride[2]);
        for (std::int64_t r = rows; r < qv_rows * N; ++r) mt[r] = 0.0f;
      }
    }

    // Online softmax, N query rows per vector, down the key axis.
    const bool all_visible = (p.window_left < 0 || kb >= (t.q_end - 1) + off - p.window_left) &&
                             (p.window_right < 0 || kb + cols - 1 <= t.q_begin + off + p.window_right);
    for (std::int64_t v = 0; v < qv_rows; ++v) {
      const std::int64_t row0 = t.q_begin + v * N;  // local row of lane 0
      Vec::T mx = neg_inf;
      for (std::int64_t j = 0; j < cols; ++j) {
        float* sp = S + j * BQ + v * N;
        Vec::T x = Vec::mul(Vec::load(sp), scale);
        if (mask_per_row) {
          x = Vec::add(x, Vec::load(Mt + j * BQ + v * N));
        } else if (mbase != nullptr) {
          x = Vec::add(x, Vec::set1(load_f32(mbase, p.mask_dtype, (kb + j) * p.mask_stride[3])));
        }
        if (!all_visible) {  // rows that see key kb + j: [key - off - right, key - off + left]
          const std::int64_t key = kb + j;
          const std::int64_t lo = p.window_right < 0 ? 0 : clamp(key - off - p.window_right - row0, 0, N);
          const std::int64_t hi = p.window_left < 0 ? N - 1 : clamp(key - off + p.window_left - row0, -1, N - 1);
          x = Vec::keep_lanes(x, int(lo), int(hi), neg_inf);
        }
        Vec::store(sp, x);
        mx = Vec::max(mx, x);
      }
      const Vec::T m_old = Vec::load(m + v * N);
      const Vec::T m_new = Vec::max(m_old, mx);
      const Vec::T m_safe = Vec::zero_if_neg_inf(m_new);  // rows with nothing visible yet: p = 0
      Vec::T sum = Vec::zero();
      for (std::int64_t j = 0; j < cols; ++j) {
        float* sp = S + j * BQ + v * N;
        const Vec::T e = exp(Vec::sub(Vec::load(sp), m_safe));
        Vec::store(sp, e);
        sum = Vec::add(sum, e);
      }
      const Vec::T a = exp(Vec::sub(m_old, m_safe));
      Vec::store(alpha + v * N, a);
      Vec::store(l + v * N, Vec::fmadd(Vec::load(l + v * N), a, sum));
      Vec::store(m + v * N, m_new);
    }

    // O = alpha·O + P·V
    const float* vrows;
    std::int64_t v_stride;
    if (v_direct) {
      vrows = reinterpret_cast<const float*>(vtile);
      v_stride = p.v_stride[1];
    } else {
      for (std::int64_t j = 0; j < cols; ++j) {
        to_f32(vtile + esz * std::size_t(j * p.v_stride[1]), p.in_dtype, p.v_stride[3], Dv, Vc + j * DvP);
        std::memset(Vc + j * DvP + Dv, 0, std::size_t(DvP - Dv) * sizeof(float));
      }
      vrows = Vc;
      v_stride = DvP;
    }
    pv_tile(S, vrows, v_stride, cols, O, DvP, alpha, rows, DvP / N);
  }

  // Normalize and store; a row that saw no visible key (l == 0) stores zeros and lse = -inf.
  const std::size_t osz = elem_size(p.out_dtype);
  auto* obase = static_cast<char*>(p.out) +
      osz * std::size_t(s.batch_index * p.out_stride[0] + (s.q_offset + t.q_begin) * p.out_stride[1] + t.h * p.out_stride[2]);
  for (std::int64_t r = 0; r < rows; ++r) {
    const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
    char* orow = obase + osz * std::size_t(r * p.out_stride[1]);
    const float* src = O + r * DvP;
    if (p.out_dtype == DType::f32 && p.out_stride[3] == 1) {
      float* dst = reinterpret_cast<float*>(orow);
      std::int64_t d = 0;
      for (; d + N <= Dv; d += N) Vec::store(dst + d, Vec::mul(Vec::load(src + d), Vec::set1(inv)));
      for (; d < Dv; ++d) dst[d] = src[d] * inv;
    } else {
      for (std::int64_t d = 0; d < Dv; ++d) store_f32(orow, p.out_dtype, d * p.out_stride[3], src[d] * inv);
    }
    if (p.lse != nullptr)
      p.lse[s.batch_index * p.lse_stride[0] + t.h * p.lse_stride[1] + (s.q_offset + t.q_begin + r) * p.lse_stride[2]] =
          l[r] > 0.0f ? m[r] + __builtin_logf(l[r]) : kNegInf;
  }
}

}  // namespace mha::detail::MHA_KERNEL_NS
