// The flash-attention forward body, written once over the vector type of simd.h and compiled per
// ISA: each flash_fwd_<isa>.cc defines MHA_KERNEL_NS and includes this file under its own -m flags.
// Everything here has internal linkage, so no code compiled for one ISA leaks into another's callers.
//
// One work item = up to 64 query rows (BQ) of one head, against 64-key tiles (BK) of the visible
// key range; tiles outside it (causal, window) are never visited.
//
// The scores are computed transposed, Sᵀ = K·Qᵀ, with vector lanes along the query rows:
//  - Qᵀ [D][64] is packed (and converted to f32) once per item;
//  - K rows are read as rows: each Sᵀ register block broadcasts K[j][d] for KB keys and
//    multiplies by IV vectors of Qᵀ[d] (KB·IV FMAs per IV + KB loads), so keys are never
//    transposed. When 8 or more items read each KV head they are copied once per call into
//    contiguous f32 rows per (sequence, KV head) (packed_kv.h): in place, the rows of a key group
//    are heads × D floats apart, 4 KB for 8 KV heads of 128, all on one L1 set offset, where they
//    evict Qᵀ (side by side, one Zen 4 thread: GQA 32/8 6–9 %, f16 5 %, 4k causal 2.5 % faster;
//    f16 and bf16 keys are converted there once instead of per item and tile). Otherwise f32 rows
//    of unit stride are read in place and others converted into Kc per tile. What bounds it (perf annotate,
//    Zen 4): the Qᵀ loads, which miss L1 (Qᵀ alone is 32 KB at D = 128) and are re-read once per
//    key group; AVX-512 uses groups of KBW = 6 keys (24 accumulators, 29 zmm), so Qᵀ streams 11
//    times per tile instead of 16 (4k tokens: ~2 % faster side by side). Keeping Qᵀ in L1
//    instead, 32-row chunks (16 KB) in blocks of 12 keys × 2 vectors, ran 4 % slower (2k, one
//    thread, side by side; the same blocks without chunks 3 %): 14 loads per 24 FMAs, not 10;
//  - the online softmax then runs down the key axis with N query rows per vector: row max, exp and
//    sum are lane-wise across vectors, with no horizontal reductions, and the rescale factor
//    alpha = exp(m_old - m_new) is one vector per N rows per tile. Its exp shares the FMA pipes
//    with the products, so it is kept short: a degree-6 polynomial, vscalefps on AVX-512, and no
//    scaled-score store on unmasked tiles (one Zen 4 thread, side by side, 2k: bf16 ~5 % and
//    f32 ~2 % faster, with bf16 P stored as pairs by the softmax itself). Base 2 with log2(e)
//    folded into the scale would save 2 more ops per element, but its extra rounding of the
//    scale (a temperature error the softmax does not cancel) put the decode and backward sweeps
//    past the accuracy bar;
//  - O [64][Dv] += P·V keeps RB rows × DB vectors of O in registers over the tile's keys,
//    broadcasting P[i][j] and loading V rows; the alpha rescale is folded into the load of those
//    registers, so it costs one multiply per O element per tile. Column blocks are the outer
//    loop: one V slice (64 keys × DB vectors, 16 KB) stays in L1 while every row block passes
//    over it (rows outer re-read all of V from L2 per row block: D = 32 ran ~10 % slower). That
//    needs the slice's rows to spread over L1's sets, which V read in place does not: its row
//    stride, heads × Dv floats (6 KB for 12 heads of 128), is a multiple of 32 lines for most
//    shapes, so 64 keys start on 2 of the 64 set offsets (perf annotate, one Zen 4 thread: P·V
//    12 % slower than Q·Kᵀ for the same FLOPs, stalled on the V loads). When 8 or more items
//    read each KV head, V is copied once per call into column panels DB vectors wide
//    (packed_kv.h), where a tile's slice is contiguous; side by side on one Zen 4 thread,
//    2k 15 %, 2k causal 17 %, 4k 10 %, GQA 32/8 26 %, f16 7 % and AVX2 29 % faster. With fewer
//    items per head that pass cost more than it saved (1 or 2 items: 6–8 %). There each tile's V
//    is copied into Vc (contiguous rows; f16/bf16 converted) when its rows in place start on
//    fewer set offsets than Vc's (l1_set_offsets), else read in place. BERT-large heads, 16 of 64
//    floats, are 4 KB apart, all on one offset: (8,16,384,64) on Zen 3, 2 threads, 58 -> 40 ms;
//    12 heads of 64, 11 %; where rows spread (5 heads) the copy cost up to 7 %.
//  - Causal and window tiles that are only partly visible (the diagonal) skip what no row sees:
//    Sᵀ blocks of query vectors that see none of a key group, and P·V keys past what a row block
//    sees. P there is 0, so the sums are unchanged; it is half the diagonal tile's work.
//  - A tile that gives no row any probability (keys a padding or block mask sets to -inf) skips
//    P·V: half its work. Its scores still run, since a NaN or inf score under the mask must
//    poison its row (README, NaN and inf). BERT (8,16,384,64) with a padding mask: 62 -> 44 ms
//    on one Zen 4 thread.
// The products run through a dot policy: Fp32Dot (f32 FMAs, every ISA) or Bf16Dot (vdpbf16ps for
// bf16 inputs, flash_fwd_bf16dot.h, AVX-512 BF16 only); softmax, masks and the store are shared.
// NaN and inf (README): a visible score that is not finite joins the row's sum as NaN (x·0), so the
// row stores NaN; O holds Σ e·v, and an item whose finite-sum row ends with a non-finite O (V near
// f32's limit) runs again with P divided by the running sum each tile (kNormalized), so O stays a
// convex combination of V rows. That pass cost ~20% at D = 64 when always on.
// Dropout (training) multiplies the tile's P by the keep mask after the running sums took it, so
// lse and the normalization are those of the undropped softmax, as in FlashAttention.
// Traffic: Q once per item; each visible K/V tile once per item (from L3 or memory for long
// sequences: a 4k-token head's K and V are 4 MB, past L2), the next tile's rows prefetched into L2
// a key group at a time while this tile's scores run (4k: ~4 % faster on Zen 4, run side by side);
// O stays in L1/L2 until the item ends. Working memory is kFlashScratchFloats per thread (~300 KB),
// independent of the sequence lengths, plus, when K and V are packed once per call, one copy of
// each (linear in the keys, as K and V themselves).
#ifndef MHA_KERNEL_NS
#error "define MHA_KERNEL_NS before including flash_fwd_impl.h"
#endif

#include <cstdint>
#include <cstring>
#include <numeric>

#include "kernels/flash_fwd.h"
#include "kernels/philox.h"
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
constexpr int KBW = 6;  // keys per score block where 6 fit (29 zmm): Qᵀ re-read 11 times per tile, not 16
#else
constexpr int KBW = 4;
constexpr int KB = 4, IV = 2, RB = 4, DB = 2;  // register blocks: 11 of 16 ymm/xmm
#endif
static_assert(BQ % N == 0 && QV % IV == 0 && BK % KB == 0);
constexpr float kNegInf = -__builtin_inff();

inline std::int64_t round_up(std::int64_t x, std::int64_t m) { return (x + m - 1) / m * m; }
inline std::int64_t clamp(std::int64_t x, std::int64_t lo, std::int64_t hi) {
  return x < lo ? lo : x > hi ? hi : x;
}

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

// Sᵀ[j0 + k][iv0·N ...] for NK keys (rows krows[k]) and NV query vectors of Qᵀ.
template <int NK, int NV>
inline void qk_block(const float* __restrict Qt, std::int64_t D, const float* const* krows,
                     float* __restrict S, std::int64_t iv0) {
  Vec::T acc[NK][NV];  // every loop over acc is unrolled, so it lives in registers
#pragma GCC unroll 8
  for (int k = 0; k < NK; ++k)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[k][v] = Vec::zero();
  const float* q = Qt + iv0 * N;
  for (std::int64_t d = 0; d < D; ++d, q += BQ) {
    Vec::T qv[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) qv[v] = Vec::load(q + v * N);
#pragma GCC unroll 8
    for (int k = 0; k < NK; ++k) {
      const Vec::T kb = Vec::bcast(krows[k] + d);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[k][v] = Vec::fmadd(kb, qv[v], acc[k][v]);
    }
  }
#pragma GCC unroll 8
  for (int k = 0; k < NK; ++k)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) Vec::store(S + k * BQ + (iv0 + v) * N, acc[k][v]);
}

// O[r0..r0+NR)[c0·N .. (c0+NC)·N) = alpha·O + Σ_j P[j][r]·V[j][...], P stored as Pᵀ [BK][BQ] and
// V pointing at vector c0 of the tile's key 0, its keys v_stride floats apart.
// Only keys [j0, j1) are summed: the others are invisible to these rows (P = 0).
template <int NR, int NC>
inline void pv_block(const float* __restrict P, const float* __restrict V, std::int64_t v_stride,
                     std::int64_t j0, std::int64_t j1, float* __restrict O, std::int64_t ldo,
                     const float* alpha, std::int64_t r0, std::int64_t c0) {
  Vec::T acc[NR][NC];  // every loop over acc is unrolled, so it lives in registers
#pragma GCC unroll 8
  for (int r = 0; r < NR; ++r) {
    const Vec::T a = Vec::bcast(alpha + r0 + r);
#pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) acc[r][c] = Vec::mul(Vec::load(O + (r0 + r) * ldo + (c0 + c) * N), a);
  }
  for (std::int64_t j = j0; j < j1; ++j) {
    const float* vr = V + j * v_stride;
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

// Of L1's 64 set offsets (a 4 KB page of lines), how many rows `stride_bytes` apart start on.
// Rows a multiple of 4 KB apart (16 heads of 64 floats) all share one: a tile's P·V slice, one
// line per key in each of them, then cannot stay in L1 (8 ways).
inline std::int64_t l1_set_offsets(std::int64_t stride_bytes) {
  if (stride_bytes % 64 != 0) return 64;
  return 64 / std::gcd(stride_bytes / 64 % 64, std::int64_t(64));  // gcd(0, 64) = 64: one offset
}

// Keys of a tile that a row sees: [jlo[r], jhi[r]), both non-decreasing in r (causal, window).
struct RowKeys {
  std::int64_t jlo[BQ], jhi[BQ];
};

// Where a tile's V is, a DB-vector column block at a time: rows `stride` floats apart (in place,
// or converted into Vc), or the call's column panels (packed_kv.h), whose rows are as wide
// as their panel.
struct TileValues {
  const float* rows = nullptr;  // key 0 of the tile, or null for panels
  std::int64_t stride = 0;
  const float* panels = nullptr;                 // the KV head's first panel
  std::int64_t panel_rows = 0, key = 0, ld = 0;  // key: the tile's first key row in the panels
  // Vector c0 (a multiple of DB) of the tile's key 0, and the floats from one key to the next.
  const float* at(std::int64_t c0, std::int64_t* step) const {
    if (panels == nullptr) {
      *step = stride;
      return rows + c0 * N;
    }
    const std::int64_t c = c0 * N;
    *step = ld - c < DB * N ? ld - c : DB * N;
    return panels + c * panel_rows + key * *step;
  }
};

// pv_block over vectors [c0, c0 + NC) of every row: row blocks inner, so the tile's V slice
// (BK keys × NC vectors, 16 KB at NC = 4) stays in L1 while all rows stream past it. Each row
// block sums only the keys one of its rows sees (the diagonal tile of causal attention: half).
template <int NC>
inline void pv_cols(const float* P, const TileValues& tv, const RowKeys& rk, float* O, std::int64_t ldo,
                    const float* alpha, std::int64_t rows, std::int64_t c0) {
  std::int64_t step;
  const float* V = tv.at(c0, &step);
  std::int64_t r0 = 0;
  for (; r0 + RB <= rows; r0 += RB)
    pv_block<RB, NC>(P, V, step, rk.jlo[r0], rk.jhi[r0 + RB - 1], O, ldo, alpha, r0, c0);
  for (; r0 < rows; ++r0) pv_block<1, NC>(P, V, step, rk.jlo[r0], rk.jhi[r0], O, ldo, alpha, r0, c0);
}

// Full DB-vector column blocks, then the rest; a few query rows (decoding) cost only their own work.
inline void pv_tile(const float* P, const TileValues& tv, const RowKeys& rk, float* O, std::int64_t ldo,
                    const float* alpha, std::int64_t rows, std::int64_t nvec) {
  std::int64_t c0 = 0;
  for (; c0 + DB <= nvec; c0 += DB) pv_cols<DB>(P, tv, rk, O, ldo, alpha, rows, c0);
  switch (nvec - c0) {
    case 1: pv_cols<1>(P, tv, rk, O, ldo, alpha, rows, c0); break;
#if defined(__AVX512F__)
    case 2: pv_cols<2>(P, tv, rk, O, ldo, alpha, rows, c0); break;
    case 3: pv_cols<3>(P, tv, rk, O, ldo, alpha, rows, c0); break;
#endif
    default: break;
  }
}

// One work item: its rows, pointers and scratch regions, set up once.
struct Item {
  Item(const AttentionParams& params, const FlashTile& tile, float* scratch)
      : p(params), t(tile), s(seq_span(params, tile.b)) {
    rows = t.q_end - t.q_begin;
    D = p.d;
    Dv = p.dv;
    DvP = round_up(Dv, N);
    // One line more where DvP spans an even number of lines, so Vc's rows start on all 64 of L1's
    // set offsets (l1_set_offsets) instead of 64 / 2^k: (4,32,256,128) 9 % faster on Zen 3.
    vc_ld = DvP % 16 == 0 && DvP / 16 % 2 == 0 ? DvP + 16 : DvP;
    esz = elem_size(p.in_dtype);
    qv_rows = (rows + N - 1) / N;
    off = s.len_k - s.len_q;
    const std::int64_t kvh = t.h / (p.hq / p.hkv);
    Qt = scratch;                 // [D][BQ] (bf16 dot: [D/2][BQ] pairs)
    Kc = Qt + kFlashMaxDim * BQ;  // [BK][D] keys, when not read in place
    Vc = Kc + BK * kFlashMaxDim;  // [BK][vc_ld] values, when not read in place (bf16 dot: [BK/2][DvP] key pairs)
    S = Vc + BK * kFlashVcLd;     // [BK][BQ] Sᵀ, then Pᵀ
    Mt = S + BK * BQ;             // [BK][BQ] mask tile, transposed
    Pp = Mt + BK * BQ;            // [BK/2][BQ] bf16 dot: P in key pairs
    O = Pp + BK * BQ / 2;         // [BQ][DvP]
    m = O + BQ * kFlashMaxDim;    // running max per row
    l = m + BQ;                   // running sum per row
    alpha = l + BQ;               // this tile's rescale per row
    qbase = static_cast<const char*>(p.q) +
            esz * std::size_t(s.batch_index * p.q_stride[0] + (s.q_offset + t.q_begin) * p.q_stride[1] +
                              t.h * p.q_stride[2]);
    // k and v are null when they hold no keys (Nk = 0): no offset may be added to them then.
    kbase = p.k == nullptr ? nullptr
                           : static_cast<const char*>(p.k) +
                                 esz * std::size_t(s.batch_index * p.k_stride[0] +
                                                   s.k_offset * p.k_stride[1] + kvh * p.k_stride[2]);
    vbase = p.v == nullptr ? nullptr
                           : static_cast<const char*>(p.v) +
                                 esz * std::size_t(s.batch_index * p.v_stride[0] +
                                                   s.k_offset * p.v_stride[1] + kvh * p.v_stride[2]);
    msz = elem_size(p.mask_dtype);
    mbase = p.mask == nullptr ? nullptr
                              : static_cast<const char*>(p.mask) +
                                    msz * std::size_t(t.b * p.mask_stride[0] + t.h * p.mask_stride[1]);
    mask_per_row = mbase != nullptr && p.mask_stride[2] != 0;
    keys = visible_keys(p, s, t.q_begin, t.q_end);
    k_row_bytes = p.k_stride[3] == 1 ? esz * std::size_t(D) : 0;
    v_row_bytes = p.v_stride[3] == 1 ? esz * std::size_t(Dv) : 0;
    if (p.v_pairs != nullptr && p.v_pair_ld == DvP)
      vpairs = p.v_pairs + (kvh * p.v_pair_rows + value_pair_base(p, t.b)) * DvP;
    if (p.v_panels != nullptr && p.v_panel_ld == DvP && p.v_panel_width == DB * N)
      vpanels = p.v_panels + kvh * p.v_panel_rows * DvP;
    if (p.k_rows != nullptr)
      krows =
          static_cast<const char*>(p.k_rows) +
          elem_size(p.k_row_dtype) * std::size_t((kvh * p.k_row_count + key_row_base(p, t.b)) * p.k_row_ld);
  }
  // The tile at key kb in the call's value panels (null when they were not made).
  TileValues tile_panels(std::int64_t kb) const {
    TileValues tv;
    if (vpanels != nullptr) tv = {nullptr, 0, vpanels, p.v_panel_rows, key_row_base(p, t.b) + kb, DvP};
    return tv;
  }
  // The call's value pairs of keys [kb, kb + cols), when they are the tile's own: an even start,
  // and an odd end only at the sequence's last key (its pair's zero half), as per-tile pairing has.
  const std::uint32_t* tile_pairs(std::int64_t kb, std::int64_t cols) const {
    if (vpairs == nullptr || kb % 2 != 0 || (cols % 2 != 0 && kb + cols != s.len_k)) return nullptr;
    return vpairs + kb / 2 * DvP;
  }
  // Query vectors [lo, hi) of the item holding a row that sees one of keys [k0, k1] (causal and
  // window bounds; masks are applied later), as [lo, hi) in *lo, *hi.
  void row_vectors(std::int64_t k0, std::int64_t k1, std::int64_t* lo, std::int64_t* hi) const {
    const std::int64_t first = p.window_right < 0 ? 0 : k0 - off - p.window_right - t.q_begin;
    const std::int64_t last = p.window_left < 0 ? rows - 1 : k1 - off + p.window_left - t.q_begin;
    *lo = clamp(first < 0 ? 0 : first / N, 0, qv_rows);
    *hi = clamp(last < 0 ? 0 : last / N + 1, *lo, qv_rows);
  }
  // The keys of tile [kb, kb + cols) that each row sees, relative to kb.
  void row_keys(std::int64_t kb, std::int64_t cols, RowKeys& rk) const {
    for (std::int64_t r = 0; r < rows; ++r) {
      const std::int64_t i = t.q_begin + r + off;
      rk.jlo[r] = p.window_left < 0 ? 0 : clamp(i - p.window_left - kb, 0, cols);
      rk.jhi[r] = p.window_right < 0 ? cols : clamp(i + p.window_right + 1 - kb, rk.jlo[r], cols);
    }
  }
  // Sᵀ rows j0 .. j0 + nk - 1 outside query vectors [lo, hi) see nothing: zeros (masked by the
  // softmax), so it never reads stale scratch.
  void zero_scores(std::int64_t j0, int nk, std::int64_t lo, std::int64_t hi) const {
    for (int k = 0; k < nk; ++k)
      for (std::int64_t v = 0; v < qv_rows; ++v)
        if (v < lo || v >= hi) Vec::store(S + (j0 + k) * BQ + v * N, Vec::zero());
  }
  // Asks for rows [j, j + nk) of the tile after [kb, kb + BK) while this one computes, so the next
  // tile arrives in cache while the FMAs run instead of stalling on long-sequence streams.
  void prefetch_next(std::int64_t kb, std::int64_t j, int nk) const {
    const std::int64_t next_kb = kb + BK, next_cols = keys.end - next_kb < BK ? keys.end - next_kb : BK;
    if (j >= next_cols) return;  // also when there is no next tile (next_cols <= 0)
    const std::int64_t n = j + nk < next_cols ? j + nk : next_cols;
    const std::uint32_t* next_pairs = tile_pairs(next_kb, next_cols);
    for (std::int64_t r = j; r < n; ++r) {
      if (krows != nullptr) {
        const char* kr = packed_key(next_kb + r);
        for (std::size_t b = 0; b < packed_key_bytes(); b += 64) __builtin_prefetch(kr + b, 0, 2);
      } else {
        const char* kr = key_tile(next_kb) + esz * std::size_t(r * p.k_stride[1]);
        for (std::size_t b = 0; b < k_row_bytes; b += 64) __builtin_prefetch(kr + b, 0, 2);
      }
      if (next_pairs != nullptr) {  // a pair row per two keys, twice a V row's bytes
        const auto* pr = reinterpret_cast<const char*>(next_pairs + r / 2 * DvP);
        if (r % 2 == 0)
          for (std::size_t b = 0; b < 2 * v_row_bytes; b += 64) __builtin_prefetch(pr + b, 0, 2);
        continue;
      }
      if (vpanels != nullptr) {  // a row per panel
        const TileValues tv = tile_panels(next_kb + r);
        for (std::int64_t c0 = 0; c0 < DvP / N; c0 += DB) {
          std::int64_t w;
          const auto* pr = reinterpret_cast<const char*>(tv.at(c0, &w));
          for (std::size_t b = 0; b < std::size_t(w) * sizeof(float); b += 64)
            __builtin_prefetch(pr + b, 0, 2);
        }
        continue;
      }
      const char* vr = value_tile(next_kb) + esz * std::size_t(r * p.v_stride[1]);
      for (std::size_t b = 0; b < v_row_bytes; b += 64) __builtin_prefetch(vr + b, 0, 2);
    }
  }
  // Key j of the sequence in the call's packed key rows, and the bytes of such a row.
  std::size_t packed_key_bytes() const { return elem_size(p.k_row_dtype) * std::size_t(p.k_row_ld); }
  const char* packed_key(std::int64_t j) const { return krows + std::size_t(j) * packed_key_bytes(); }
  const char* key_tile(std::int64_t kb) const { return kbase + esz * std::size_t(kb * p.k_stride[1]); }
  const char* value_tile(std::int64_t kb) const { return vbase + esz * std::size_t(kb * p.v_stride[1]); }

  const AttentionParams& p;
  FlashTile t;
  SeqSpan s;
  std::int64_t rows, D, Dv, DvP, qv_rows, off;
  std::int64_t vc_ld;  // floats from one Vc row to the next (f32 paths)
  std::size_t esz, msz;
  float *Qt, *Kc, *Vc, *S, *Mt, *Pp, *O, *m, *l, *alpha;
  const char *qbase, *kbase, *vbase, *mbase;
  bool mask_per_row;
  bool p_paired = false;  // the softmax stores P as the dot policy's bf16 key pairs (Bf16Dot::store_p)
  KeyRange keys;  // the keys the item's rows see (causal, window)
  std::size_t k_row_bytes = 0, v_row_bytes = 0;  // contiguous bytes of a K / V row (0: strided)
  const std::uint32_t* vpairs = nullptr;         // this sequence and KV head's value pairs, if made
  const float* vpanels = nullptr;                // this KV head's value panels, if made
  const char* krows = nullptr;                   // this sequence and KV head's packed key rows, if made
};

// Sᵀ rows [j0, j0 + NK) of the tile through a dot policy's hooks (keys past cols: the last key
// again, masked later); only the query vectors that see one of the keys are computed.
template <class Dot, int NK>
void score_group(Item& it, std::int64_t kb, std::int64_t cols, std::int64_t j0) {
  it.prefetch_next(kb, j0, NK);
  typename Dot::KeyRow kr[NK];
  for (int k = 0; k < NK; ++k) kr[k] = Dot::key_row(it, kb, j0 + k < cols ? j0 + k : cols - 1);
  std::int64_t lo, hi;
  it.row_vectors(kb + j0, kb + (j0 + NK < cols ? j0 + NK : cols) - 1, &lo, &hi);
  it.zero_scores(j0, NK, lo, hi);
  std::int64_t iv0 = lo;
  for (; iv0 + IV <= hi; iv0 += IV) Dot::template block<NK, IV>(it, kr, j0, iv0);
  for (; iv0 < hi; ++iv0) Dot::template block<NK, 1>(it, kr, j0, iv0);
}

// The tile's Sᵀ in groups of Dot::kWide keys while they fit in its BK rows, then of KB.
template <class Dot>
void score_tile(Item& it, std::int64_t kb, std::int64_t cols) {
  std::int64_t j0 = 0;
  for (; j0 < cols && j0 + Dot::kWide <= BK; j0 += Dot::kWide) score_group<Dot, Dot::kWide>(it, kb, cols, j0);
  for (; j0 < cols; j0 += KB) score_group<Dot, KB>(it, kb, cols, j0);
}

#if defined(__AVX512F__)
// Qᵀ is built with gathers where the query rows have unit stride: a column of 16 rows per
// instruction. The rows usually come from memory (an item's first touch), and a gather keeps 16
// of their misses in flight where a row-by-row copy waited on about one at a time (BERT with a
// padding mask, one Zen 4 thread, side by side: bf16 10 % and f32 6 % faster).
// Element offsets of query rows v·N .. v·N + N - 1 at `stride` elements apart (int32 indices:
// strides up to kMaxGatherStride).
constexpr std::int64_t kMaxGatherStride = (std::int64_t(1) << 31) / BQ;
inline __m512i gather_rows(std::int64_t stride, std::int64_t v) {
  const __m512i r = _mm512_add_epi32(_mm512_set1_epi32(int(v * N)),
                                     _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
  return _mm512_mullo_epi32(r, _mm512_set1_epi32(int(stride)));
}
// The lanes of query vector v that hold one of the item's rows (the others load as 0).
inline __mmask16 rows_in(const Item& it, std::int64_t v) { return first_lanes(it.rows - v * N); }
#endif

// f32 multiply-adds: Qᵀ and any non-f32 K/V converted to f32.
struct Fp32Dot {
  static void load_q(Item& it) {
#if defined(__AVX512F__)
    // f32 rows of unit stride: Qᵀ[d] gathered 16 rows at a time (gather_rows).
    if (it.p.in_dtype == DType::f32 && it.p.q_stride[3] == 1 && it.p.q_stride[1] < kMaxGatherStride) {
      const auto* base = reinterpret_cast<const float*>(it.qbase);
      for (std::int64_t v = 0; v < QV; ++v) {
        const __m512i idx = gather_rows(it.p.q_stride[1], v);
        const __mmask16 m = rows_in(it, v);
        for (std::int64_t d = 0; d < it.D; ++d)
          _mm512_storeu_ps(it.Qt + d * BQ + v * N, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx, base + d, 4));
      }
      return;
    }
#endif
    // Rows are heads × D apart, each on its own page, so the hardware prefetchers do not run ahead:
    // asking for the row 16 ahead keeps misses in flight while rows are transposed (with the first
    // tile's prefetch in run_item, BERT (8,16,384,64) 3 %, (4,32,256,128) 3 % faster on Zen 3).
    constexpr std::int64_t kAhead = 16;
    const std::size_t row_bytes = it.p.q_stride[3] == 1 ? it.esz * std::size_t(it.D) : 0;
    const auto prefetch_row = [&](std::int64_t r) {
      if (r >= it.rows) return;
      const char* src = it.qbase + it.esz * std::size_t(r * it.p.q_stride[1]);
      for (std::size_t b = 0; b < row_bytes; b += 64) __builtin_prefetch(src + b, 0, 3);
    };
    for (std::int64_t r = 0; r < kAhead; ++r) prefetch_row(r);
    float row[kFlashMaxDim];
    for (std::int64_t r = 0; r < BQ; ++r) {
      prefetch_row(r + kAhead);
      if (r < it.rows) {
        to_f32(it.qbase + it.esz * std::size_t(r * it.p.q_stride[1]), it.p.in_dtype, it.p.q_stride[3], it.D,
               row);
      } else {
        std::memset(row, 0, std::size_t(it.D) * sizeof(float));
      }
      for (std::int64_t d = 0; d < it.D; ++d) it.Qt[d * BQ + r] = row[d];
    }
  }

  // Sᵀ = K·Qᵀ over the tile's keys (a partial last block repeats the last key; masked later).
  static void scores(Item& it, std::int64_t kb, std::int64_t cols) {
    const AttentionParams& p = it.p;
    const char* ktile = it.key_tile(kb);
    if (!keys_in_place(it) && it.krows == nullptr)
      for (std::int64_t j = 0; j < cols; ++j)
        to_f32(ktile + it.esz * std::size_t(j * p.k_stride[1]), p.in_dtype, p.k_stride[3], it.D,
               it.Kc + j * it.D);
    score_tile<Fp32Dot>(it, kb, cols);
  }

  // The call's f32 key rows when it made them; else f32 keys with unit stride are dotted in place
  // and others converted into Kc per tile.
  static bool keys_in_place(const Item& it) { return it.p.in_dtype == DType::f32 && it.p.k_stride[3] == 1; }

  static constexpr bool kPairsP = false;  // P stays f32 in S
  static void store_p(const Item&, std::int64_t, std::int64_t, Vec::T, Vec::T) {}

  // The hooks score_tile calls: key row j of the tile, and one register block of Sᵀ.
  static constexpr int kWide = KBW;
  using KeyRow = const float*;
  static KeyRow key_row(const Item& it, std::int64_t kb, std::int64_t j) {
    if (it.krows != nullptr) return reinterpret_cast<const float*>(it.packed_key(kb + j));
    return keys_in_place(it) ? reinterpret_cast<const float*>(it.key_tile(kb)) + j * it.p.k_stride[1] : it.Kc + j * it.D;
  }
  template <int NK, int NV>
  static void block(const Item& it, const KeyRow* kr, std::int64_t j0, std::int64_t iv0) {
    qk_block<NK, NV>(it.Qt, it.D, kr, it.S + j0 * BQ, iv0);
  }

  // O = alpha·O + P·V, V from the call's panels, in place (f32 rows of unit stride and whole
  // vectors, spread over L1's sets at least as well as Vc's), or converted into Vc.
  static void accumulate(Item& it, std::int64_t kb, std::int64_t cols) {
    const AttentionParams& p = it.p;
    RowKeys rk;
    it.row_keys(kb, cols, rk);
    TileValues tv = it.tile_panels(kb);
    const char* vtile = it.value_tile(kb);
    if (tv.panels == nullptr && p.in_dtype == DType::f32 && p.v_stride[3] == 1 && it.Dv % N == 0 &&
        l1_set_offsets(p.v_stride[1] * 4) >= l1_set_offsets(it.vc_ld * 4)) {
      tv.rows = reinterpret_cast<const float*>(vtile);
      tv.stride = p.v_stride[1];
    } else if (tv.panels == nullptr) {
      for (std::int64_t j = 0; j < cols; ++j) {
        to_f32(vtile + it.esz * std::size_t(j * p.v_stride[1]), p.in_dtype, p.v_stride[3], it.Dv,
               it.Vc + j * it.vc_ld);
        std::memset(it.Vc + j * it.vc_ld + it.Dv, 0, std::size_t(it.DvP - it.Dv) * sizeof(float));
      }
      tv.rows = it.Vc;
      tv.stride = it.vc_ld;
    }
    pv_tile(it.S, tv, rk, it.O, it.DvP, it.alpha, it.rows, it.DvP / N);
  }
};

#if defined(__AVX512BF16__)
#include "kernels/flash_fwd_bf16dot.h"
#endif

// Online softmax over one tile, N query rows per vector, down the key axis: scale, mask, window,
// new running max, P = exp(S - max) in place, running sum, and the rescale factor per row.
// Tiles that every row sees in full, without a mask, with a positive scale, never store scaled
// scores: the row max of raw S times the scale is the max of the scaled scores (rounding is
// monotone), and pass two scales again, rounded before m is subtracted: S·scale - m must be
// exactly 0 at the max, or huge scores (1e19) would leave m's rounding error (1e12) in the exponent.
// kNormalized keeps O normalized (see below); the fast path leaves it as Σ e·v.
// Returns whether any row of the item got probability mass (or NaN) from the tile: when none did
// (keys a padding or block mask hides, or whose exp underflows), P is all zero and the fast
// path's alpha is exactly 1 (the row max is unchanged) or 0 (O still 0), so P·V is skipped.
template <class Dot, bool kNormalized>
bool softmax_tile(Item& it, std::int64_t kb, std::int64_t cols) {
  const AttentionParams& p = it.p;
  const Vec::T scale = Vec::set1(p.scale);
  const Vec::T neg_inf = Vec::set1(kNegInf);
  if (it.mask_per_row) {
    for (std::int64_t j = 0; j < cols; ++j) {
      float* mt = it.Mt + j * BQ;
      const char* mcol =
          it.mbase + it.msz * std::size_t((kb + j) * p.mask_stride[3] + it.t.q_begin * p.mask_stride[2]);
      for (std::int64_t r = 0; r < it.rows; ++r) mt[r] = load_f32(mcol, p.mask_dtype, r * p.mask_stride[2]);
      for (std::int64_t r = it.rows; r < it.qv_rows * N; ++r) mt[r] = 0.0f;
    }
  }
  // Is every (row, key) of this tile inside the window? Then no per-element test is needed.
  const bool all_visible = (p.window_left < 0 || kb >= (it.t.q_end - 1) + it.off - p.window_left) &&
                           (p.window_right < 0 || kb + cols - 1 <= it.t.q_begin + it.off + p.window_right);
  const bool raw = all_visible && it.mbase == nullptr && p.scale > 0.0f;
  const Vec::T zero = Vec::zero();
  Vec::T mass = zero;  // Σ over the item's real rows of the tile's sums: 0 iff every P is 0
  for (std::int64_t v = 0; v < it.qv_rows; ++v) {
    const std::int64_t row0 = it.t.q_begin + v * N;  // local row of lane 0
    Vec::T mx = neg_inf;
    // NaN in a lane once a visible score of its row is not finite before the mask (q·k·scale of
    // NaN or inf inputs, or an overflow): x·0 is 0 for finite x and NaN otherwise. It joins the
    // row's sum below, so the row's l is NaN and store_rows writes NaN. A NaN or +inf reached
    // through the mask poisons l through max and exp.
    Vec::T bad = zero;
    if (raw) {
      // NaN scores reach the sum through exp; -inf ones (and overflows of S·scale) would give
      // P = 0 silently, so the extremes are checked once per vector instead of x·0 per element.
      Vec::T mn = Vec::set1(__builtin_inff());
      for (std::int64_t j = 0; j < cols; ++j) {
        const Vec::T x = Vec::load(it.S + j * BQ + v * N);
        mx = Vec::max(mx, x);
        mn = Vec::min(mn, x);
      }
      mx = Vec::mul(mx, scale);
      bad = Vec::add(Vec::mul(Vec::mul(mn, scale), zero), Vec::mul(mx, zero));
    } else {
      for (std::int64_t j = 0; j < cols; ++j) {
        float* sp = it.S + j * BQ + v * N;
        Vec::T x = Vec::mul(Vec::load(sp), scale);
        std::int64_t lo = 0, hi = N - 1;  // lanes whose row sees key kb + j
        if (all_visible) {
          bad = Vec::fmadd(x, zero, bad);
        } else {  // rows that see key kb + j: [key - off - right, key - off + left]
          const std::int64_t key = kb + j;
          lo = p.window_right < 0 ? 0 : clamp(key - it.off - p.window_right - row0, 0, N);
          hi = p.window_left < 0 ? N - 1 : clamp(key - it.off + p.window_left - row0, -1, N - 1);
          bad = Vec::add(bad, Vec::keep_lanes(Vec::mul(x, zero), int(lo), int(hi), zero));
        }
        if (it.mask_per_row) {
          x = Vec::add(x, Vec::load(it.Mt + j * BQ + v * N));
        } else if (it.mbase != nullptr) {
          x = Vec::add(x, Vec::set1(load_f32(it.mbase, p.mask_dtype, (kb + j) * p.mask_stride[3])));
        }
        if (!all_visible) x = Vec::keep_lanes(x, int(lo), int(hi), neg_inf);
        Vec::store(sp, x);
        mx = Vec::max(mx, x);
      }
    }
    const Vec::T m_old = Vec::load(it.m + v * N);
    const Vec::T m_new = Vec::max(m_old, mx);
    const Vec::T m_safe = Vec::zero_if_neg_inf(m_new);  // rows with nothing visible yet: p = 0
    Vec::T sum = bad;
    const auto p_of = [&](std::int64_t j) {
      const Vec::T x = Vec::load(it.S + j * BQ + v * N);
      return exp(Vec::sub(raw ? rounded(Vec::mul(x, scale)) : x, m_safe));
    };
    if (Dot::kPairsP && it.p_paired) {  // keys j, j + 1 at once, stored as the policy's pairs
      for (std::int64_t j = 0; j < cols; j += 2) {
        const Vec::T e0 = p_of(j), e1 = j + 1 < cols ? p_of(j + 1) : zero;
        sum = Vec::add(Vec::add(sum, e0), e1);
        Dot::store_p(it, j / 2, v, e0, e1);
      }
    } else {
      for (std::int64_t j = 0; j < cols; ++j) {
        const Vec::T e = p_of(j);
        Vec::store(it.S + j * BQ + v * N, e);
        sum = Vec::add(sum, e);
      }
    }
    // Lanes past the item's rows (zero queries) would always show mass.
    mass = Vec::add(mass, Vec::keep_lanes(sum, 0, int(it.rows - v * N < N ? it.rows - v * N : N) - 1, zero));
    const Vec::T a = exp(Vec::sub(m_old, m_safe));
    const Vec::T l_old = Vec::load(it.l + v * N);
    const Vec::T l_new = Vec::fmadd(l_old, a, sum);
    if constexpr (kNormalized) {
      // O kept a convex combination of V rows: P divided by the new running sum before P·V, the
      // old O rescaled by alpha·l_old/l_new, so no partial sum leaves V's range. l_new is 0
      // (nothing visible yet: P = 0), at least 1 (the max's own exp(0)), or NaN; max(1, l) keeps
      // NaN (x86 max returns the second operand) and turns 0 into 1.
      const Vec::T one = Vec::set1(1.0f);
      const Vec::T inv = Vec::div(one, Vec::max(one, l_new));
      for (std::int64_t j = 0; j < cols; ++j) {
        float* sp = it.S + j * BQ + v * N;
        Vec::store(sp, Vec::mul(Vec::load(sp), inv));
      }
      Vec::store(it.alpha + v * N, Vec::mul(Vec::mul(a, l_old), inv));
    } else {
      Vec::store(it.alpha + v * N, a);
    }
    Vec::store(it.l + v * N, l_new);
    Vec::store(it.m + v * N, m_new);
  }
  float lanes[N];
  Vec::store(lanes, mass);
  for (float x : lanes)
    if (!(x == 0.0f)) return true;  // NaN counts as mass
  return false;
}

// Dropout on the tile's probabilities, after they joined the running sums (lse stays undropped)
// and before P·V: Pᵀ[j][r] *= 0 or 1 / (1 - p), as philox.h draws it for (b, h, row, key).
void dropout_tile(Item& it, std::int64_t kb, std::int64_t cols) {
  const AttentionParams& p = it.p;
  const DropoutKey key = dropout_key(p.dropout_seed, p.dropout_offset, p.dropout_p);
  const auto bh = std::uint32_t(it.t.b * p.hq + it.t.h);
  float mult[BK];
  for (std::int64_t r = 0; r < it.rows; ++r) {
    dropout_row(key, std::uint32_t(it.t.q_begin + r), bh, kb, cols, p.keep_scale, mult);
    for (std::int64_t j = 0; j < cols; ++j) it.S[j * BQ + r] *= mult[j];
  }
}

// Whether Σ e·v overflowed: a row with a finite, positive sum whose O is not finite. Only V near
// f32's limit does this (v = 3e38 over a few keys); the item then runs again normalized.
bool overflowed(const Item& it) {
  for (std::int64_t r = 0; r < it.rows; ++r) {
    if (!(it.l[r] > 0.0f && it.l[r] < __builtin_inff())) continue;
    const float* src = it.O + r * it.DvP;
    Vec::T acc = Vec::zero();
    std::int64_t d = 0;
    for (; d + N <= it.Dv; d += N) acc = Vec::fmadd(Vec::load(src + d), Vec::zero(), acc);
    float tail = 0;
    for (; d < it.Dv; ++d) tail += src[d] * 0.0f;
    if (__builtin_isnan(Vec::hsum(acc) + tail)) return true;
  }
  return false;
}

// Store the rows (normalized here unless the softmax already did); a row that saw no visible key
// (l == 0) stores zeros and lse = -inf, a poisoned row (l NaN) stores NaN and lse = NaN.
template <bool kNormalized>
void store_rows(const Item& it) {
  const AttentionParams& p = it.p;
  const std::size_t osz = elem_size(p.out_dtype);
  auto* obase =
      static_cast<char*>(p.out) +
      osz * std::size_t(it.s.batch_index * p.out_stride[0] +
                        (it.s.q_offset + it.t.q_begin) * p.out_stride[1] + it.t.h * p.out_stride[2]);
  for (std::int64_t r = 0; r < it.rows; ++r) {
    const float inv = it.l[r] > 0.0f    ? (kNormalized ? 1.0f : 1.0f / it.l[r])
                      : it.l[r] == 0.0f ? 0.0f
                                        : __builtin_nanf("");
    char* orow = obase + osz * std::size_t(r * p.out_stride[1]);
    const float* src = it.O + r * it.DvP;
    if (p.out_dtype == DType::f32 && p.out_stride[3] == 1) {
      float* dst = reinterpret_cast<float*>(orow);
      std::int64_t d = 0;
      for (; d + N <= it.Dv; d += N) Vec::store(dst + d, Vec::mul(Vec::load(src + d), Vec::set1(inv)));
      for (; d < it.Dv; ++d) dst[d] = src[d] * inv;
    } else {
      for (std::int64_t d = 0; d < it.Dv; ++d)
        store_f32(orow, p.out_dtype, d * p.out_stride[3], src[d] * inv);
    }
    if (p.lse != nullptr)
      p.lse[it.s.batch_index * p.lse_stride[0] + it.t.h * p.lse_stride[1] +
            (it.s.q_offset + it.t.q_begin + r) * p.lse_stride[2]] = it.l[r] > 0.0f
                                                                        ? it.m[r] + __builtin_logf(it.l[r])
                                                                    : it.l[r] == 0.0f ? kNegInf
                                                                                      : __builtin_nanf("");
  }
}

template <class Dot, bool kNormalized>
bool run_item(const AttentionParams& p, const FlashTile& t, float* scratch) {
  Item it(p, t, scratch);
  // Dropout and the normalized pass change P after the softmax, so they keep it f32 until P·V.
  it.p_paired = Dot::kPairsP && !kNormalized && p.dropout_p == 0.0f;
  if (it.keys.begin < it.keys.end) it.prefetch_next(it.keys.begin - BK, 0, BK);  // the first tile, while Q loads
  Dot::load_q(it);
  std::memset(it.O, 0, std::size_t(BQ * it.DvP) * sizeof(float));
  for (std::int64_t r = 0; r < BQ; ++r) {
    it.m[r] = kNegInf;
    it.l[r] = 0.0f;
  }
  for (std::int64_t kb = it.keys.begin; kb < it.keys.end; kb += BK) {
    const std::int64_t cols = it.keys.end - kb < BK ? it.keys.end - kb : BK;
    Dot::scores(it, kb, cols);
    const bool mass = softmax_tile<Dot, kNormalized>(it, kb, cols);
    if (!kNormalized && !mass) continue;  // P = 0 and alpha leaves O as it is
    if (p.dropout_p > 0.0f) dropout_tile(it, kb, cols);
    Dot::accumulate(it, kb, cols);
  }
  if (!kNormalized && overflowed(it)) return false;  // nothing written
  store_rows<kNormalized>(it);
  return true;
}

template <class Dot>
void run_item(const AttentionParams& p, const FlashTile& t, float* scratch) {
  if (!run_item<Dot, false>(p, t, scratch)) run_item<Dot, true>(p, t, scratch);
}

}  // namespace

void flash_fwd(const AttentionParams& p, const FlashTile& t, float* scratch) {
#if defined(__AVX512BF16__)
  if (p.in_dtype == DType::bf16) return run_item<Bf16Dot>(p, t, scratch);
#endif
  run_item<Fp32Dot>(p, t, scratch);
}

}  // namespace mha::detail::MHA_KERNEL_NS
