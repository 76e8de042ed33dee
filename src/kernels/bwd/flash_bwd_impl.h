// The flash-attention backward body (FlashAttention-2, Dao 2023, algorithm 2), written once over
// the vector type of simd.h and compiled per ISA: each flash_bwd_<isa>.cc defines MHA_KERNEL_NS
// and includes this file under its own -m flags.
//
// Partition, and why it needs no atomics: a work item owns 64-key blocks [kb_begin, kb_end) of one
// sequence and one KV head. For each key block it walks every query head of the KV head's group and
// every 64-row query block that sees the keys (causal and window blocks outside are skipped) and
//   S  = Q·Kᵀ                       (rows × 64, over D)
//   P  = exp(scale·S + mask − lse)  (lse saved by the forward: no max or sum is recomputed)
//   Pd = P ∘ Z / (1 − p)            (Z the dropout keep mask, philox.h)
//   dV += Pdᵀ·dO                    (64 × Dv, over rows)
//   dP = dO·Vᵀ ∘ Z / (1 − p)        (rows × 64, over Dv)
//   dS = P ∘ (dP − delta)           (delta = rowsum(dO ∘ O), once per call by the driver)
//   dK += dSᵀ·Q                     (64 × D, over rows)
//   dQ_c += dS·K                    (rows × D, over 64 keys)
// dK and dV of the block stay in scratch until the block ends, then are scaled and stored: the item
// is their only writer. dQ rows are shared by every key block, so each item adds into its own chunk
// slot of the driver's f32 partial buffer, and the driver sums the slots in chunk order at the end.
// The chunk count comes from the shape alone (enough items for the pool), so the sum, and every
// bit of the result, is the same for any thread count. Its cost: chunks × Nq × Hq × D floats of
// memory and one pass over them; with B·Hkv >= 16 there is one chunk and the pass is a copy.
//
// All five products run through one register micro-kernel, C[MR rows][NV vectors] += Σ_k
// A[r·sa_r + k·sa_k] · B[k][vectors]: A is broadcast element by element from any strides, so Pdᵀ
// and dSᵀ are read in place from the row-major S and dS tiles, never transposed; B is always a
// packed, zero-padded f32 panel (Kᵀ and Vᵀ per key block, shared by every query block and head of
// the group; K rows; Q and dO per query block), so head dims that are not a multiple of the
// vector width need no tail code. Work per block pair: five 64×64×D products (2·64·64·(3·D + 2·Dv)
// FLOPs); traffic: the Q and dO blocks (converted once per block pair, L2-resident) and a
// read-modify-write of the dQ partial rows.
//
// Measured (Zen 4, 2 threads, fp32 FMA ceiling 234.8 GFLOP/s in the same run; mha bench --backward):
// (1,12,12,2048,2048,128) 160 GFLOP/s = 68 % non-causal, 65 % causal; BERT (8,16,384,64) with a
// padding mask 53-59 %, where the 64 × 64 blocks at D = 64 leave the micro-kernel's loads and the
// per-element softmax-gradient pass a larger share. bf16 q/k/v with bf16 dout (what a bf16 model's
// autograd hands in) run all five products on vdpbf16ps where the CPU has it
// (flash_bwd_bf16dot.h): 230 ms, 280 GFLOP/s = 60 % of the bf16 dot ceiling (468), against 391 ms
// = 35 % for the same shape on f32 FMAs.
//
// Accuracy, and what bounds it: delta comes from the forward's O, as in FlashAttention-2 (and
// PyTorch's CPU backward), not from rowsum(P ∘ dP) of this pass's own P and dP as the naive path
// computes it. On a row dominated by one key (P ≈ 1) the naive dP − rowsum shares dP's rounding
// and cancels it; here dP and delta are rounded apart, so that row's dS keeps about
// eps · Σ|dO||v| of error instead of (1 − P) times it. Making delta consistent needs every key
// block of a row before any dS (a second pass over S and dP: +40 % of the work). A row whose
// visible keys all lie in one key block has them all at hand, so whole_row rebuilds its softmax
// and delta from that block as the naive path does (short sequences, narrow windows). Measured with
// `mha check --backward --count 400 --seed 1..6` (4800 ISA × case runs, every other case with
// dropout): 59 runs exceeded 3 × the naive error before whole_row and fresh sums per product block
// (below), 12 after: f32 rows spanning two key blocks, and one bf16 row spanning two whose padding
// mask leaves it one key (naive error 0). Computing P in double from a float64 lse moved none
// under the bar (P is not the cause); an exact O for delta did not either (dP's own rounding is).
#ifndef MHA_KERNEL_NS
#error "define MHA_KERNEL_NS before including flash_bwd_impl.h"
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "kernels/bwd/flash_bwd.h"
#include "kernels/philox.h"
#include "kernels/simd.h"
#include "runtime/dtype_convert.h"

namespace mha::detail::MHA_KERNEL_NS {

namespace {

constexpr std::int64_t BQ = kBwdBlockQ;
constexpr std::int64_t BK = kBwdBlockK;
constexpr std::int64_t MAXD = kBwdMaxDim;
constexpr int N = Vec::N;
constexpr std::int64_t KV = BK / N;  // vectors per key row of S
#if defined(__AVX512F__)
constexpr int MR = 4, NB = 4;  // 16 accumulators + 4 B vectors + 1 broadcast of 32 zmm
#else
constexpr int MR = 4, NB = 2;  // 8 + 2 + 1 of 16 ymm/xmm
#endif
constexpr float kNegInf = -__builtin_inff();

inline std::int64_t round_up(std::int64_t x, std::int64_t m) { return (x + m - 1) / m * m; }

// The products' element policy: f32 operands and FMAs. The bf16 fragment adds one whose elements
// are dwords of bf16 pairs along the reduction axis, multiplied with vdpbf16ps.
struct F32Dot {
  using E = float;
  using A = Vec::T;
  using B = Vec::T;
  static A bcast(const float* a) { return Vec::bcast(a); }
  static B load(const float* b) { return Vec::load(b); }
  static Vec::T fma(A a, B b, Vec::T c) { return Vec::fmadd(a, b, c); }
};

// C[r][v·N ...] (+)= Σ_k A[r·sa_r + k·sa_k] · B[k·ldb + v·N ...] for MR_ rows and NV_ vectors.
// The sum over this call's K starts from zero and is added to C once at the end: dK and dV gather
// every query block of every head of a GQA group, and one FMA chain through all of them (16 heads ·
// 480 rows) had 3-4× the naive path's error, which sums each head's rows and then the heads.
template <class Dot, int MR_, int NV_>
inline void gemm_block(const typename Dot::E* __restrict A, std::int64_t sa_r, std::int64_t sa_k,
                       const typename Dot::E* __restrict B, std::int64_t ldb, std::int64_t K,
                       float* __restrict C, std::int64_t ldc, bool accumulate) {
  Vec::T acc[MR_][NV_];
#pragma GCC unroll 8
  for (int r = 0; r < MR_; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NV_; ++v) acc[r][v] = Vec::zero();
  for (std::int64_t k = 0; k < K; ++k) {
    typename Dot::B bv[NV_];
#pragma GCC unroll 8
    for (int v = 0; v < NV_; ++v) bv[v] = Dot::load(B + k * ldb + v * N);
    const typename Dot::E* a = A + k * sa_k;
#pragma GCC unroll 8
    for (int r = 0; r < MR_; ++r) {
      const typename Dot::A ab = Dot::bcast(a + r * sa_r);
#pragma GCC unroll 8
      for (int v = 0; v < NV_; ++v) acc[r][v] = Dot::fma(ab, bv[v], acc[r][v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR_; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NV_; ++v)
      Vec::store(C + r * ldc + v * N,
                 accumulate ? Vec::add(Vec::load(C + r * ldc + v * N), acc[r][v]) : acc[r][v]);
}

template <class Dot, int MR_>
inline void gemm_rows(const typename Dot::E* A, std::int64_t sa_r, std::int64_t sa_k, const typename Dot::E* B,
                      std::int64_t ldb, std::int64_t K, float* C, std::int64_t ldc, std::int64_t nvec,
                      bool accumulate) {
  std::int64_t v = 0;
  for (; v + NB <= nvec; v += NB)
    gemm_block<Dot, MR_, NB>(A, sa_r, sa_k, B + v * N, ldb, K, C + v * N, ldc, accumulate);
  switch (nvec - v) {
    case 1: gemm_block<Dot, MR_, 1>(A, sa_r, sa_k, B + v * N, ldb, K, C + v * N, ldc, accumulate); break;
#if defined(__AVX512F__)
    case 2: gemm_block<Dot, MR_, 2>(A, sa_r, sa_k, B + v * N, ldb, K, C + v * N, ldc, accumulate); break;
    case 3: gemm_block<Dot, MR_, 3>(A, sa_r, sa_k, B + v * N, ldb, K, C + v * N, ldc, accumulate); break;
#endif
    default: break;
  }
}

// C[M][nvec·N] (+)= A[M][K] · B[K][nvec·N], A addressed as A[r·sa_r + k·sa_k].
template <class Dot = F32Dot>
inline void gemm(std::int64_t M, std::int64_t nvec, std::int64_t K, const typename Dot::E* A, std::int64_t sa_r,
                 std::int64_t sa_k, const typename Dot::E* B, std::int64_t ldb, float* C, std::int64_t ldc,
                 bool accumulate) {
  std::int64_t r = 0;
  for (; r + MR <= M; r += MR)
    gemm_rows<Dot, MR>(A + r * sa_r, sa_r, sa_k, B, ldb, K, C + r * ldc, ldc, nvec, accumulate);
  for (; r < M; ++r) gemm_rows<Dot, 1>(A + r * sa_r, sa_r, sa_k, B, ldb, K, C + r * ldc, ldc, nvec, accumulate);
}

// dst[0..n) = src[0], src[stride], ... as f32, then zeros up to `padded`.
inline void row_f32(const void* src, DType dt, std::int64_t stride, std::int64_t n, std::int64_t padded,
                    float* __restrict dst) {
  load_row_f32(src, dt, 0, stride, n, dst);
  for (std::int64_t i = n; i < padded; ++i) dst[i] = 0.0f;
}

struct Work {
  Work(const BackwardParams& params, const BwdItem& item, float* scratch)
      : bp(params), p(params.a), it(item), s(seq_span(params.a, item.b)) {
    D = p.d;
    Dv = p.dv;
    DP = round_up(D, N);
    DvP = round_up(Dv, N);
    group = p.hq / p.hkv;
    off = s.len_k - s.len_q;
    Kt = scratch;              // [D][BK]
    Kr = Kt + MAXD * BK;       // [BK][DP]
    Vt = Kr + BK * MAXD;       // [Dv][BK]
    Q = Vt + MAXD * BK;        // [BQ][DP]
    dO = Q + BQ * MAXD;        // [BQ][DvP]
    dK = dO + BQ * MAXD;       // [BK][DP]
    dV = dK + BK * MAXD;       // [BK][DvP]
    S = dV + BK * MAXD;        // [BQ][BK]: S, then P · keep / (1 - p)
    dP = S + BQ * BK;          // [BQ][BK]: dO·Vᵀ, then dS
    mrow = dP + BQ * BK;       // [BK] mask row
    drow = mrow + BK;          // [BK] dropout multipliers
    esz = elem_size(p.in_dtype);
    dropout = p.dropout_p > 0.0f;
    if (dropout) dkey = dropout_key(p.dropout_seed, p.dropout_offset, p.dropout_p);
  }

  // Element offset of (row of this sequence, head) in a [batch, seq, head, dim] view.
  std::int64_t q_index(const std::int64_t* st, std::int64_t i, std::int64_t h) const {
    return s.batch_index * st[0] + (s.q_offset + i) * st[1] + h * st[2];
  }
  std::int64_t k_index(const std::int64_t* st, std::int64_t j) const {
    return s.batch_index * st[0] + (s.k_offset + j) * st[1] + it.kvh * st[2];
  }

  const BackwardParams& bp;
  const AttentionParams& p;
  BwdItem it;
  SeqSpan s;
  std::int64_t D, Dv, DP, DvP, group, off;
  std::size_t esz;
  float *Kt, *Kr, *Vt, *Q, *dO, *dK, *dV, *S, *dP, *mrow, *drow;
  bool dropout;
  DropoutKey dkey{};
};

// Kᵀ [D][BK], K [BK][DP] and Vᵀ [Dv][BK] of keys [j0, j0 + cols), zero beyond.
void pack_keys(Work& w, std::int64_t j0, std::int64_t cols) {
  const AttentionParams& p = w.p;
  float row[MAXD];
  for (std::int64_t j = 0; j < BK; ++j) {
    float* kr = w.Kr + j * w.DP;
    if (j < cols) {
      row_f32(static_cast<const char*>(p.k) + w.esz * std::size_t(w.k_index(p.k_stride, j0 + j)), p.in_dtype,
              p.k_stride[3], w.D, w.DP, kr);
      row_f32(static_cast<const char*>(p.v) + w.esz * std::size_t(w.k_index(p.v_stride, j0 + j)), p.in_dtype,
              p.v_stride[3], w.Dv, w.Dv, row);
    } else {
      std::memset(kr, 0, std::size_t(w.DP) * sizeof(float));
      std::memset(row, 0, std::size_t(w.Dv) * sizeof(float));
    }
    for (std::int64_t d = 0; d < w.D; ++d) w.Kt[d * BK + j] = kr[d];
    for (std::int64_t d = 0; d < w.Dv; ++d) w.Vt[d * BK + j] = row[d];
  }
}

// Q [rows][DP] and dO [rows][DvP] of query rows [i0, i0 + rows) of head h, as f32.
void pack_queries(Work& w, std::int64_t h, std::int64_t i0, std::int64_t rows) {
  const AttentionParams& p = w.p;
  const std::size_t dsz = elem_size(w.bp.dout_dtype);
  for (std::int64_t r = 0; r < rows; ++r) {
    row_f32(static_cast<const char*>(p.q) + w.esz * std::size_t(w.q_index(p.q_stride, i0 + r, h)), p.in_dtype,
            p.q_stride[3], w.D, w.DP, w.Q + r * w.DP);
    row_f32(static_cast<const char*>(w.bp.dout) + dsz * std::size_t(w.q_index(w.bp.dout_stride, i0 + r, h)),
            w.bp.dout_dtype, w.bp.dout_stride[3], w.Dv, w.DvP, w.dO + r * w.DvP);
  }
}

// scale·S + mask of keys jv .. jv + N − 1 of a row, −inf outside its visible lanes lo..hi.
inline Vec::T visible_scores(const float* srow, const float* mrow, std::int64_t jv, std::int64_t lo,
                             std::int64_t hi, Vec::T scale) {
  Vec::T x = Vec::mul(Vec::load(srow + jv), scale);
  if (mrow != nullptr) x = Vec::add(x, Vec::load(mrow + jv));
  return Vec::keep_lanes(x, int(std::clamp<std::int64_t>(lo - jv, -1, N)),
                         int(std::clamp<std::int64_t>(hi - jv, -1, N - 1)), Vec::set1(kNegInf));
}

// One row's Pd (into srow) and dS (into dprow) when every key the row sees lies in this block
// (visible lanes lo..hi): the softmax is rebuilt from the row's own scores (max, exp, sum, divide)
// and delta = Σ P·dP from this block's dP, as the naive path computes them, not from the forward's
// lse and O. Rounded apart, those left eps·|dP| in the dS of a row that sees one key, where the
// naive dS is exactly 0 (P = 1); here it is 0 too, with or without dropout.
void whole_row(const Work& w, const float* mrow, float* srow, float* dprow, std::int64_t lo,
               std::int64_t hi) {
  const Vec::T scale = Vec::set1(w.p.scale);
  Vec::T m = Vec::set1(kNegInf);
  for (std::int64_t v = 0; v < KV; ++v) {
    const Vec::T x = visible_scores(srow, mrow, v * N, lo, hi, scale);
    Vec::store(srow + v * N, x);
    m = Vec::max(m, x);
  }
  float lanes[N];
  Vec::store(lanes, m);
  float top = lanes[0];
  for (int l = 1; l < N; ++l) top = lanes[l] > top ? lanes[l] : top;
  const Vec::T vtop = Vec::set1(top);
  Vec::T sum = Vec::zero();
  for (std::int64_t v = 0; v < KV; ++v) {
    const Vec::T e = exp(Vec::sub(Vec::load(srow + v * N), vtop));  // masked lanes: exp(-inf) = 0
    Vec::store(srow + v * N, e);
    sum = Vec::add(sum, e);
  }
  const Vec::T total = Vec::set1(Vec::hsum(sum));
  Vec::T dsum = Vec::zero();
  for (std::int64_t v = 0; v < KV; ++v) {
    const std::int64_t jv = v * N;
    const Vec::T pr = Vec::div(Vec::load(srow + jv), total);
    Vec::T dpv = Vec::load(dprow + jv);
    if (w.dropout) dpv = Vec::mul(dpv, Vec::load(w.drow + jv));
    Vec::store(srow + jv, pr);
    Vec::store(dprow + jv, dpv);
    dsum = Vec::fmadd(pr, dpv, dsum);
  }
  const Vec::T delta = Vec::set1(Vec::hsum(dsum));
  for (std::int64_t v = 0; v < KV; ++v) {
    const std::int64_t jv = v * N;
    const Vec::T pr = Vec::load(srow + jv);
    Vec::store(srow + jv, w.dropout ? Vec::mul(pr, Vec::load(w.drow + jv)) : pr);
    Vec::store(dprow + jv, Vec::mul(pr, Vec::sub(Vec::load(dprow + jv), delta)));
  }
}

// S (scores) and dP (dO·Vᵀ) -> P·keep/(1-p) in S and dS in dP, row by row, keys along the lanes.
void softmax_grad(Work& w, std::int64_t h, std::int64_t i0, std::int64_t rows, std::int64_t j0,
                  std::int64_t cols) {
  const AttentionParams& p = w.p;
  const Vec::T scale = Vec::set1(p.scale);
  const auto bh = std::uint32_t(w.it.b * p.hq + h);
  const std::size_t msz = elem_size(p.mask_dtype);
  const char* mbase = p.mask == nullptr ? nullptr
                                        : static_cast<const char*>(p.mask) +
                                              msz * std::size_t(w.it.b * p.mask_stride[0] + h * p.mask_stride[1]);
  const float* mrow = mbase != nullptr ? w.mrow : nullptr;  // this row's mask, filled below
  const std::int64_t stat_base = (w.s.batch_index * p.hq + h) * w.bp.rows + w.s.q_offset;
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::int64_t i = i0 + r;
    const float lse = p.lse[w.s.batch_index * p.lse_stride[0] + h * p.lse_stride[1] +
                            (w.s.q_offset + i) * p.lse_stride[2]];
    const Vec::T vlse = Vec::set1(lse);
    const Vec::T delta = Vec::set1(w.bp.delta[stat_base + i]);
    // Row i's first and last visible keys of the sequence, and of this block relative to j0.
    const std::int64_t first = p.window_left < 0 ? 0 : std::max<std::int64_t>(0, i + w.off - p.window_left);
    const std::int64_t last = p.window_right < 0
                                  ? w.s.len_k - 1
                                  : std::min<std::int64_t>(w.s.len_k - 1, i + w.off + p.window_right);
    const std::int64_t lo = first - j0, hi = std::min<std::int64_t>(last - j0, cols - 1);
    if (mbase != nullptr)
      for (std::int64_t j = 0; j < cols; ++j)
        w.mrow[j] = load_f32(mbase, p.mask_dtype, i * p.mask_stride[2] + (j0 + j) * p.mask_stride[3]);
    if (w.dropout) {
      dropout_row(w.dkey, std::uint32_t(i), bh, j0, cols, p.keep_scale, w.drow);
      for (std::int64_t j = cols; j < BK; ++j) w.drow[j] = 0.0f;  // 0·garbage could be NaN
    }
    float* srow = w.S + r * BK;
    float* dprow = w.dP + r * BK;
    if (lse != kNegInf && lo >= 0 && last < j0 + cols) {
      whole_row(w, mrow, srow, dprow, lo, hi);
      continue;
    }
    for (std::int64_t v = 0; v < KV; ++v) {
      const std::int64_t jv = v * N;
      if (jv > hi || jv + N - 1 < lo) {  // nothing visible in these lanes
        Vec::store(srow + jv, Vec::zero());
        Vec::store(dprow + jv, Vec::zero());
        continue;
      }
      const Vec::T x = visible_scores(srow, mrow, jv, lo, hi, scale);
      // lse = -inf: no key of the row is visible, so every x is -inf too; P = 0 either way.
      const Vec::T pr = lse == kNegInf ? Vec::zero() : exp(Vec::sub(x, vlse));
      Vec::T dpv = Vec::load(dprow + jv);
      Vec::T pd = pr;
      if (w.dropout) {
        const Vec::T keep = Vec::load(w.drow + jv);
        dpv = Vec::mul(dpv, keep);
        pd = Vec::mul(pr, keep);
      }
      Vec::store(srow + jv, pd);
      Vec::store(dprow + jv, Vec::mul(pr, Vec::sub(dpv, delta)));
    }
  }
}

// Stores the block's dK·scale and dV rows, converted to the outputs' dtypes.
void store_keys(Work& w, std::int64_t j0, std::int64_t cols) {
  const BackwardParams& bp = w.bp;
  const std::size_t ksz = elem_size(bp.dk_dtype), vsz = elem_size(bp.dv_dtype);
  for (std::int64_t j = 0; j < cols; ++j) {
    char* dk = static_cast<char*>(bp.dk) + ksz * std::size_t(w.k_index(bp.dk_stride, j0 + j));
    char* dv = static_cast<char*>(bp.dv) + vsz * std::size_t(w.k_index(bp.dv_stride, j0 + j));
    for (std::int64_t d = 0; d < w.D; ++d)
      store_f32(dk, bp.dk_dtype, d * bp.dk_stride[3], w.dK[j * w.DP + d] * w.p.scale);
    for (std::int64_t d = 0; d < w.Dv; ++d) store_f32(dv, bp.dv_dtype, d * bp.dv_stride[3], w.dV[j * w.DvP + d]);
  }
}

// The f32 path: every operand converted to f32, every product on FMAs.
struct F32Path {
  static void keys(Work& w, std::int64_t j0, std::int64_t cols) { pack_keys(w, j0, cols); }
  // One block pair: rows [i0, i0 + rows) of head h against the packed key block; dq points at the
  // block's first row of head h in the item's dQ partial slot, ldq floats apart.
  static void pair(Work& w, std::int64_t h, std::int64_t i0, std::int64_t rows, std::int64_t j0,
                   std::int64_t cols, float* dq, std::int64_t ldq) {
    pack_queries(w, h, i0, rows);
    gemm(rows, KV, w.D, w.Q, w.DP, 1, w.Kt, BK, w.S, BK, false);     // S = Q·Kᵀ
    gemm(rows, KV, w.Dv, w.dO, w.DvP, 1, w.Vt, BK, w.dP, BK, false);  // dP = dO·Vᵀ
    softmax_grad(w, h, i0, rows, j0, cols);
    gemm(cols, w.DvP / N, rows, w.S, 1, BK, w.dO, w.DvP, w.dV, w.DvP, true);  // dV += Pdᵀ·dO
    gemm(cols, w.DP / N, rows, w.dP, 1, BK, w.Q, w.DP, w.dK, w.DP, true);    // dK += dSᵀ·Q
    gemm(rows, w.DP / N, cols, w.dP, BK, 1, w.Kr, w.DP, dq, ldq, true);     // dQ_c += dS·K
  }
};

#if defined(__AVX512BF16__)
#include "kernels/bwd/flash_bwd_bf16dot.h"
#endif

template <class Path>
void run_item(const BackwardParams& bp, const BwdItem& item, float* scratch) {
  Work w(bp, item, scratch);
  const AttentionParams& p = w.p;
  const std::int64_t acc_row = p.hq * bp.dp;  // floats per packed row of dq_acc
  float* acc = bp.dq_acc + item.chunk * bp.acc_chunk + (w.s.batch_index * bp.rows + w.s.q_offset) * acc_row;
  // This item's dQ partial slot: the sequence's rows of the group's heads.
  for (std::int64_t i = 0; i < w.s.len_q; ++i)
    std::memset(acc + i * acc_row + item.kvh * w.group * bp.dp, 0,
                std::size_t(w.group * bp.dp) * sizeof(float));
  for (std::int64_t kb = item.kb_begin; kb < item.kb_end; ++kb) {
    const std::int64_t j0 = kb * BK, cols = w.s.len_k - j0 < BK ? w.s.len_k - j0 : BK;
    Path::keys(w, j0, cols);
    std::memset(w.dK, 0, std::size_t(BK * w.DP) * sizeof(float));
    std::memset(w.dV, 0, std::size_t(BK * w.DvP) * sizeof(float));
    // Query rows that see any key of the block: [qlo, qhi).
    std::int64_t qlo = p.window_right < 0 ? 0 : j0 - w.off - p.window_right;
    std::int64_t qhi = p.window_left < 0 ? w.s.len_q : j0 + cols - 1 - w.off + p.window_left + 1;
    if (qlo < 0) qlo = 0;
    if (qhi > w.s.len_q) qhi = w.s.len_q;
    for (std::int64_t h = item.kvh * w.group; h < (item.kvh + 1) * w.group; ++h) {
      for (std::int64_t i0 = qlo; i0 < qhi; i0 += BQ) {
        const std::int64_t rows = qhi - i0 < BQ ? qhi - i0 : BQ;
        Path::pair(w, h, i0, rows, j0, cols, acc + i0 * acc_row + h * bp.dp, acc_row);
      }
    }
    store_keys(w, j0, cols);
  }
}

}  // namespace

void flash_bwd(const BackwardParams& p, const BwdItem& item, float* scratch) {
#if defined(__AVX512BF16__)
  if (p.a.in_dtype == DType::bf16 && p.dout_dtype == DType::bf16) return run_item<Bf16Path>(p, item, scratch);
#endif
  run_item<F32Path>(p, item, scratch);
}

// delta of sequence b, head h: Σ_d dO·O with the same multiply-adds, in the same order, as the
// dP = dO·Vᵀ micro-kernel. A row that sees one key (O = v) then gets dP − delta = 0 exactly, as the
// naive path does; an independently rounded delta left ~1 ulp of |dO·v| in every dS of such rows.
void flash_bwd_delta(const BackwardParams& bp, std::int64_t b, std::int64_t h, float* delta) {
  const AttentionParams& p = bp.a;
  const SeqSpan s = seq_span(p, b);
  const std::size_t osz = elem_size(p.out_dtype), gsz = elem_size(bp.dout_dtype);
  for (std::int64_t i = 0; i < s.len_q; ++i) {
    const std::int64_t row = s.q_offset + i;
    const char* o = static_cast<const char*>(p.out) +
                    osz * std::size_t(s.batch_index * p.out_stride[0] + row * p.out_stride[1] + h * p.out_stride[2]);
    const char* g = static_cast<const char*>(bp.dout) +
                    gsz * std::size_t(s.batch_index * bp.dout_stride[0] + row * bp.dout_stride[1] +
                                      h * bp.dout_stride[2]);
    Vec::T acc = Vec::zero();
    for (std::int64_t d = 0; d < p.dv; ++d)
      acc = Vec::fmadd(Vec::set1(load_f32(g, bp.dout_dtype, d * bp.dout_stride[3])),
                       Vec::set1(load_f32(o, p.out_dtype, d * p.out_stride[3])), acc);
    float lanes[N];
    Vec::store(lanes, acc);
    delta[(s.batch_index * p.hq + h) * bp.rows + row] = lanes[0];
  }
}

}  // namespace mha::detail::MHA_KERNEL_NS
