// The flash-decode body, compiled once per ISA (see decode.h for the work split).
//
// For memory-bound decoding the kernel must keep up with the cache stream: every K/V element is
// loaded (and converted from bf16/f16/int8) once per item and used by all R query rows of the
// group. Scores: blocks of SRB rows × 4 keys accumulate along the head dim in vector lanes (one K
// load feeds SRB FMAs, one q load 4) and each row's 4 sums are reduced together (Vec::hsum4: 13
// shuffles and adds for 4 sums; one horizontal sum per (row, key) cost as much as the FMAs and
// held 32/8 GQA at 45 % of the read ceiling on Zen 4). P·V: O rows are updated two vectors wide
// for RB rows at a time, so each V load feeds RB FMAs and O stays in registers across the tile's
// keys. The online softmax runs per tile on the R × kDecodeTile score block with the vector exp.
//
// bf16 caches on AVX-512 BF16 (kDot) skip the widening: vdpbf16ps multiplies bf16 pairs into f32.
// q is rounded to bf16 once per item and K rows are dotted in place, 32 elements per instruction;
// V rows t, t+1 are interleaved into (v[t][c], v[t+1][c]) pairs as they are staged, and P is
// rounded to bf16 pairs (p[t], p[t+1]), so O += P·V is one vdpbf16ps per 16 outputs per key pair.
// Both roundings are the ones a bf16 model makes (the naive bf16 path, the accuracy yardstick,
// rounds q, the scores and P); products are exact and accumulate in f32. It halves the work per
// cache byte, which is what bounds GQA groups of 4 and more.
// int8 caches dot in integers there: K and V rows widen to int16 (one vpmovsxbw per 32 elements,
// where widening to bf16 took seven instructions), q is quantized to int16 per row (scale max|q| /
// 32767) and P to int16 per row and tile (scale max P / 32767); vpdpwssd sums exact int32 and
// the scales apply once per score and per tile of O.
// Both quantizations err less than bf16 rounding does, so the naive bf16 path stays their yardstick.
// There the online softmax runs on every row of the item at once, rows as lanes (softmax_lanes;
// score_quad_dot's [row][key] blocks transposed to [key][row] first), and groups of at most RB rows
// unpack V pairs from the rows in place instead of staging them. Both had been a fifth of a 32/8
// step: one Zen 4 thread, 16/4 heads, context 256 in L2, 24.0 -> 19.0 µs; 2 threads from memory,
// context 4096, side by side: 32/8 bf16 558 -> 480 µs, 32/8 int8 509 -> 460, 32/32 bf16 1660 -> 1400.
// Side by side on one Zen 4 thread (context 4096, bf16-widening int8 against this): 32/8 int8
// 1356 -> 1271 µs at batch 1, 11143 -> 10462 at batch 8, under bf16's time; 32/1 is bound by the
// dot rate, 32 multiply-adds per instruction in bf16 and int16 alike, so int8 at best ties bf16
// there (int8 reads half the bytes, which MQA does not wait on, and adds q and P quantization).
//
// AVX2 int8 caches dot in integers too (vpmaddwd, two keys or 16 dims per instruction: essay in
// decode_madd.h), which put int8 under bf16's time on every row measured on Zen 3.
// Without a dot product (AVX-512F; f16 caches everywhere) every row block widens the f16 or
// int8 elements it reads, 16 times per tile for the K rows of a 32-row MQA group. Groups of
// 4·SRB rows or more widen a score step's 4 K rows once, and groups of more than RB rows stage V as
// f32 (widen_row, in the lane order the row blocks read, so the sums are the same bit for bit).
// bf16 rows stay in place: a paired load is one load and two shifts per 2N elements, and widening
// them ahead gained nothing at 32/1 and cost 15 % at 32/8, where K was then widened for just 2 row
// blocks.
// What bounds it now (Zen 4, 2 threads): 32/32 streams the cache at ~38 GB/s, at or above the
// measured read ceiling; 32/8 reads 24-32 GB/s. Each (4-key score step, head) prefetches that
// head's part of the same rows of the next tile into L2 (K and V: 2 KB at 128 dims): the K loads
// of the score step had been the largest stall (77 % of its samples). Side by side, 32/8 bf16
// batch 8: 13420 µs without, 12275 prefetching whole rows into L1 (whose fill buffers then stall
// the prefetches themselves), 10777 into L2, 8157 into L2 a head at a time, so that the misses
// asked for at once stay few; two tiles ahead was 3 % slower than one. On top, each step asks
// for the next step's K (and each V pair the next pair) of the same head into L1: 8250 -> 7840.
// On Zen 3 (AVX2, 2 threads, side by side) V is better left to the hardware, which follows the
// row-order staging copy: without V's prefetches 32/8 bf16 ran 3-8 % faster (context 4096 batch 1
// and 8, 32768), the other rows within the host's noise (32/32, 32/1, int8: 0.90-1.09 both ways).
// Every figure above (Zen 3 and 4) was measured with V unwritten: until 0dd8b80 the benchmarks
// passed one tensor as K and V and KvCache.write then wrote K twice, so V read the zero page and
// steps moved half their bytes. Measured again (2 threads, context 4096, 32/8 bf16): 790 µs where
// the bench had said 480, of which 90 were two thread wake-ups per step (the pool now spins first).
// The per-head prefetch kept its order: 960 µs without it, 834 without V's, 823 two tiles ahead.
// Asking for the next tile as two spans in address order instead (span_prefetch: K's lines spread
// over the score units, V's from inside each head's P·V, SpreadPrefetch) went 698 -> 547 µs for
// groups of at most 4 rows (int8 32/8 486 -> 443); in one burst before P·V, V's span was 8-12 %
// slower, and larger groups keep the per-head order (32/4 bf16 with spans: 518 µs against 426). Now
// the step reads ~31 GB/s of cache, whose own pages read at 35 (the host's slow minutes) to 66
// GB/s, and runs at 55-60 GB/s with the cache in L3: time is near the sum of compute and memory,
// not their maximum. Staging V in row order, for the hardware prefetcher, was slower (1048 µs).
// The Zen 3 finding that V is better left to the hardware dates from the half-traffic benchmarks
// (V on the zero page). With V written, on a Zen 1 (AVX2, 2 threads), the copy that stages V
// waited on it: a fifth of a 32/8 bf16 step's samples. Spans on AVX2 too (span_prefetch), minimum
// of 3 side by side, context 4096 batch 1 unless said, old -> new µs: 32/8 bf16 2133 -> 2039,
// int8 1997 -> 1790, f32 2999 -> 2621; 32/16 bf16 2884 -> 2584; 32/32 int8 4005 -> 3284; batch 8
// 32/8 bf16 16742 -> 16015, int8 19892 -> 14284; context 32768 32/8 int8 16791 -> 15165 (bf16,
// 32/32 bf16 and paged within 2-5 %). Per-head V prefetches instead helped int8 by as much and
// cost bf16 10 %. In L3 (context 512) a 32/8 bf16 step runs at 41 % of the FMA peak: P·V and the
// scores take a third of it each and each runs at ~60 % of the FMA rate, its loop issuing about
// two instructions per FMA where Zen 1 splits each 256-bit one in two.
// AVX2 span groups read V in place now, as one-head items do: the spans bring the next tile's V
// into L2, and the copy into [head][token] rows waited on those loads for 17 % of run_chunk's
// samples (32/8 bf16, one Zen 1 thread). In place, a head's 64 rows alias onto 8 of L1's 64 sets
// and each column pass reads them from L2, which costs less: Zen 1, medians side by side, context
// 4096, 2 threads, 32/8 bf16 1850 -> 1720 µs, f32 2400 -> 2200 (minimums), 32/16 bf16 2450 ->
// 2210, 32/32 bf16 4290 -> 3690, context 32768 32/8 bf16 14800 -> 13700; one thread 3590 -> 3300
// (int8 stages key pairs and f16 widens: unchanged).
// AVX2 groups of 4 rows or more but int8's take their score steps 4 rows × 2 keys per block
// (score_rows4_keys2: each K chunk widened once for 4 rows, 12 loads per 16 FMAs, not 20):
// one Zen 1 thread, context 512, 32/1 bf16 349 -> 334 µs, 32/4 390 -> 372, 32/8 450 -> 440.
// MHA (one query row per KV head) was bound by FMA latency, not by the cache: each of a score's 4
// keys and each of P·V's 2 O vectors is one chain of dependent FMAs, 4 cycles apart, and 2 to 4
// chains kept the two FMA pipes a quarter to half busy. One row takes 8 keys per score step and 8 O
// vectors per P·V pass (2 rows: 4), so 8 chains run at once; every sum keeps its order, so results
// are unchanged bit for bit. Items of one KV head read V rows in place instead of staging them:
// the copy was there to read rows of many heads front to back, and for one head it only moved the
// same bytes (45 % of the samples of a 32/32 f32 step in L3). Side by side on one Zen 3 thread,
// context 256 from L3: 32/32 f32 575 -> 525 µs, bf16 436 -> 416; in PyTorch's layout
// (1,32,32,1,256) f32, 2 threads, 0.24 -> 0.19 ms.
// The item's fixed work is vectorized (q to bf16, O back to natural order, no divisions per row):
// it had cost up to 15 % of a 256-token item; 32/1 gained 14-20 %.
#ifndef MHA_KERNEL_NS
#error "define MHA_KERNEL_NS before including decode_impl.h"
#endif

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "kernels/decode.h"
#include "kernels/simd.h"
#include "mha/attention.h"
#include "runtime/dtype_convert.h"

namespace mha::detail::MHA_KERNEL_NS {
namespace {

constexpr int N = Vec::N;
constexpr std::int64_t T = kDecodeTile;
constexpr int RB = 4;                 // query rows per P·V register block
constexpr int SRB = N == 16 ? 4 : 2;  // query rows per score block (× 4 keys of accumulators)
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
// Whether the next tile's V rows are asked for into L2 beside its K rows (essay): not on AVX2.
constexpr bool kPrefetchNextV = N != 8;

// Lines asked for into L2 a few at a time from inside a loop of `steps` steps (step i asks for its
// share), so that the requests go out among the loads and products rather than in one burst.
struct SpreadPrefetch {
  const std::uint8_t* line = nullptr;  // 64-byte aligned
  std::size_t lines = 0, per = 0;
  // Shares for a loop of `steps` (at least 1) steps, set by the loop that asks for them.
  void spread_over(std::size_t steps) { per = (lines + steps - 1) / steps; }
  void step(std::size_t i) const {
    for (std::size_t l = i * per; l < std::min((i + 1) * per, lines); ++l) __builtin_prefetch(line + l * 64, 0, 2);
  }
};

// Cache element types (DecodeParams::cache_dtype).
enum : int { kF32 = 0, kF16 = 1, kBf16 = 2, kI8 = 3 };
constexpr int kI16 = 4;  // int8 key rows already widened to int16 (MQA/GQA: once per tile, not per row block)

#if defined(__AVX512BF16__)
template <int DT>
constexpr bool kDot = DT == kBf16 || DT == kI8;
#else
template <int DT>
constexpr bool kDot = false;
#endif
template <int DT>
constexpr bool kIntDot = kDot<DT> && DT == kI8;  // int8 caches dot in int16 (vpdpwssd)
#if defined(__AVX2__) && !defined(__AVX512F__)
#define MHA_DECODE_MADD 1  // this build has decode_madd.h's integer dots
template <int DT>
constexpr bool kMadd = DT == kI8;  // AVX2: int8 caches dot in int16 too (vpmaddwd, decode_madd.h)
#else
template <int DT>
constexpr bool kMadd = false;
#endif
template <int DT>
constexpr bool kIntQ = kIntDot<DT> || kMadd<DT>;  // q and P quantized to int16 per row

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
constexpr bool kPaired = DT == kBf16 && !kDot<DT>;

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
// -> paired). Only whole 2N blocks are permuted; the tail stays in order. kDot rows are padded to
// whole 2N blocks (decode_ld) and every block is in pv_dot's unpack order, the last one too; only
// the d natural positions are read or written.
template <int DT>
void permute_row(const float* src, float* dst, std::int64_t d, bool to_paired) {
  std::int64_t e = 0;
  if constexpr (kDot<DT>) {
    for (; e < d; e += 2 * N)
      for (int i = 0; i < 2 * N; ++i) {
        const std::int64_t j = e + bf16_pair_index(i);
        if (j >= d) continue;
        if (to_paired)
          dst[e + i] = src[j];
        else
          dst[j] = src[e + i];
      }
    return;
  }
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

// Row of d cache elements as f32 in DT's lane order (whole 2N blocks as load_pair gives them, the
// rest in order): what score_quad and pv_block read from DT rows, converted once so that every row
// block of a group reads f32 instead (kF32 gives the same sums, bit for bit).
template <int DT>
void widen_row(const void* row, std::int64_t d, float* dst) {
  const std::int64_t dv = d / N * N, dv2 = d / (2 * N) * (2 * N);
  std::int64_t e = 0;
  for (; e < dv2; e += 2 * N) {
    Vec::T a, b;
    load_pair<DT>(row, e, a, b);
    Vec::store(dst + e, a);
    Vec::store(dst + e + N, b);
  }
  for (; e < dv; e += N) Vec::store(dst + e, load_vec<DT>(row, e));
  for (; e < d; ++e) dst[e] = load_one<DT>(row, e);
}

// Caches whose rows wide groups widen once (widen_row): bf16's paired loads are as cheap as f32's.
template <int DT>
constexpr bool kWidened = !kDot<DT> && !kMadd<DT> && (DT == kI8 || DT == kF16);

struct Scratch {
  float* q = nullptr;            // [R][ld]
  std::uint16_t* qb = nullptr;   // [R][ld] q rounded to bf16 (kDot) or as int16 (kIntQ), zero past d
  std::uint16_t* qp = nullptr;   // qb as row pairs (pack_row_pairs), in q's place (kDot groups under 16 rows)
  float* s = nullptr;            // [R][T] scores, then probabilities (times the V scale for int8)
  // P as bf16 (kDot) or int16 (kIntQ) pairs: [R][T/2], or [T/2][R] (pb_pair_stride R)
  std::uint32_t* pb = nullptr;
  float* o = nullptr;            // [R][ld]
  float* m = nullptr;            // [R] running max
  float* l = nullptr;            // [R] running sum
  float* alpha = nullptr;        // [R] this tile's rescale of O
  float* qscale = nullptr;       // [R] int8 cache: q = qscale · the int16 row in qb
  float* pscale = nullptr;       // [R] int8 cache: this tile's P = pscale · the int16 pairs in pb
  std::int64_t ld = 0;           // row stride of q, qb and o
  std::int64_t pb_row_stride = T / 2, pb_pair_stride = 1;
};

// Scores of rows [r0, r0 + rb) against keys t .. t + KQ - 1 (rows k[0..KQ)): s[r][t + i] = q_r · k_i,
// unscaled. Keys past the tile repeat its last key; the softmax masks them. Each (row, key) sums in
// one accumulator whose FMAs wait on each other: a single row takes 8 keys at once (KQ = 8), so
// that 8 chains keep both FMA pipes busy (4 had run it at half the FMA rate); the sums are the
// same, bit for bit.
template <int DT, int rb, int KQ = 4>
void score_quad(const Scratch& w, std::int64_t d, std::int64_t r0, const void* const* k, std::int64_t t) {
  const std::int64_t dv = d / N * N, dv2 = d / (2 * N) * (2 * N), ld = w.ld;
  Vec::T acc[rb][KQ];
#pragma GCC unroll 4
  for (int r = 0; r < rb; ++r)
#pragma GCC unroll 8
    for (int i = 0; i < KQ; ++i) acc[r][i] = Vec::zero();
  for (std::int64_t e = 0; e < dv2; e += 2 * N) {
    // The rows' q, then one key at a time: 4·rb accumulators, 2·rb q and one key's 2 vectors
    // (15 of AVX2's 16 registers at rb = 2; all 4 keys' vectors at once spilled the accumulators).
    // On AVX-512 one load feeds the 4 keys (GCC would fold it into each FMA). On AVX2 the same
    // barrier made GCC 12 store the q vectors to the stack on every step, and letting it fold the
    // loads was faster on a Zen 1 (2 threads, context 4096, medians side by side: 32/8 bf16 2124
    // -> 1933 µs, 32/1 1686 -> 1601, 32/32 5581 -> 5223).
    Vec::T q0[rb], q1[rb];
#pragma GCC unroll 4
    for (int r = 0; r < rb; ++r) {
      q0[r] = Vec::load(w.q + (r0 + r) * ld + e);
      q1[r] = Vec::load(w.q + (r0 + r) * ld + e + N);
      if constexpr (N == 16) __asm__("" : "+x"(q0[r]), "+x"(q1[r]));
    }
#pragma GCC unroll 8
    for (int i = 0; i < KQ; ++i) {
      Vec::T a, b;
      load_pair<DT>(k[i], e, a, b);
#pragma GCC unroll 4
      for (int r = 0; r < rb; ++r) {
        acc[r][i] = Vec::fmadd(q0[r], a, acc[r][i]);
        acc[r][i] = Vec::fmadd(q1[r], b, acc[r][i]);
      }
    }
  }
  for (std::int64_t e = dv2; e < dv; e += N) {
    Vec::T a[KQ];
#pragma GCC unroll 8
    for (int i = 0; i < KQ; ++i) a[i] = load_vec<DT>(k[i], e);
#pragma GCC unroll 4
    for (int r = 0; r < rb; ++r) {
      Vec::T qv = Vec::load(w.q + (r0 + r) * ld + e);
      __asm__("" : "+x"(qv));
#pragma GCC unroll 8
      for (int i = 0; i < KQ; ++i) acc[r][i] = Vec::fmadd(qv, a[i], acc[r][i]);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < rb; ++r) {
    float* s = w.s + (r0 + r) * T + t;
#pragma GCC unroll 2
    for (int i = 0; i < KQ; i += 4) Vec::hsum4(acc[r][i], acc[r][i + 1], acc[r][i + 2], acc[r][i + 3], s + i);
    for (std::int64_t e = dv; e < d; ++e)  // head dims that are not a multiple of the width
      for (int i = 0; i < KQ; ++i) s[i] += w.q[(r0 + r) * ld + e] * load_one<DT>(k[i], e);
  }
}

// score_quad's sums for 4 rows [r0, r0 + 4) against 2 keys t, t + 1 (AVX2, groups of 4 rows or
// more, called twice per 4-key step). Two blocks of 2 rows × 4 keys load and widen each K chunk
// twice and, short of registers, fold each q load into its FMA: 20 loads and 8 unpacks per 16
// FMAs, and Zen 1 loads one 256-bit vector per cycle. Here each K chunk is widened once for 4 rows
// and each q vector feeds 2 FMAs: 12 loads (GCC reads a K chunk in each of its 2 unpacks) and 4
// unpacks per 16 FMAs, in 8 accumulators, 4 K halves and 2 q (15 of 16 registers). Each (row,
// key) sum takes the same FMAs in the same order and the same hsum4 tree as in score_quad, so the
// scores are the same bit for bit.
// Not inlined: inside run_chunk GCC 12 stored the K halves to the stack on every step (one Zen 1
// thread, 32/8 bf16 from L3: 408 µs against 373). score_madd_rows4_keys2 ran faster inlined.
template <int DT>
[[gnu::noinline]] void score_rows4_keys2(const Scratch& w, std::int64_t d, std::int64_t r0,
                                         const void* const* k, std::int64_t t) {
  const std::int64_t dv = d / N * N, dv2 = d / (2 * N) * (2 * N), ld = w.ld;
  const float* q = w.q + r0 * ld;
  Vec::T acc[4][2];
#pragma GCC unroll 4
  for (int r = 0; r < 4; ++r) acc[r][0] = acc[r][1] = Vec::zero();
  for (std::int64_t e = 0; e < dv2; e += 2 * N) {
    Vec::T a[2], b[2];
    load_pair<DT>(k[0], e, a[0], b[0]);
    load_pair<DT>(k[1], e, a[1], b[1]);
#pragma GCC unroll 4
    for (int r = 0; r < 4; ++r) {
      // In registers: GCC 12 would fold each q load into both of its FMAs, loading it twice.
      Vec::T q0 = Vec::load(q + r * ld + e), q1 = Vec::load(q + r * ld + e + N);
      __asm__("" : "+x"(q0), "+x"(q1));
      acc[r][0] = Vec::fmadd(q0, a[0], acc[r][0]);
      acc[r][1] = Vec::fmadd(q0, a[1], acc[r][1]);
      acc[r][0] = Vec::fmadd(q1, b[0], acc[r][0]);
      acc[r][1] = Vec::fmadd(q1, b[1], acc[r][1]);
    }
  }
  for (std::int64_t e = dv2; e < dv; e += N) {
    const Vec::T a0 = load_vec<DT>(k[0], e), a1 = load_vec<DT>(k[1], e);
#pragma GCC unroll 4
    for (int r = 0; r < 4; ++r) {
      const Vec::T qv = Vec::load(q + r * ld + e);
      acc[r][0] = Vec::fmadd(qv, a0, acc[r][0]);
      acc[r][1] = Vec::fmadd(qv, a1, acc[r][1]);
    }
  }
#pragma GCC unroll 2
  for (int r = 0; r < 4; r += 2) {
    alignas(16) float x[4];  // rows r and r + 1, keys t and t + 1
    Vec::hsum4(acc[r][0], acc[r][1], acc[r + 1][0], acc[r + 1][1], x);
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      float* s = w.s + (r0 + r + h) * T + t;
      s[0] = x[2 * h];
      s[1] = x[2 * h + 1];
      for (std::int64_t e = dv; e < d; ++e)
        for (int i = 0; i < 2; ++i) s[i] += q[(r + h) * ld + e] * load_one<DT>(k[i], e);
    }
  }
}

#if defined(__AVX512BF16__)
#include "kernels/bf16_pairs.h"

// Lanes [0, d - e) of 32 bf16 at row + e, zero past them (never read).
inline __m512i load_bf16_chunk(const void* row, std::int64_t e, std::int64_t d) {
  const __mmask32 m = d - e >= 32 ? ~__mmask32(0) : __mmask32((1u << (d - e)) - 1u);
  return _mm512_maskz_loadu_epi16(m, static_cast<const std::uint16_t*>(row) + e);
}

// Lanes [0, d - e) of 32 int8 at row + e as int16, zero past them (the int8 cache's integer dots).
inline __m512i load_i8_chunk(const void* row, std::int64_t e, std::int64_t d) {
  const __mmask32 m = d - e >= 32 ? ~__mmask32(0) : __mmask32((1u << (d - e)) - 1u);
  return _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(m, static_cast<const std::int8_t*>(row) + e));
}

// The dot-product accumulators: f32 for bf16 pairs (vdpbf16ps), int32 for int16 pairs (int8 caches,
// vpdpwssd; on Zen 4 both retire one per cycle, and vpmaddwd + vpaddd one pair per 1.1 cycles).
// Both sums are exact per instruction; int32 ones cannot overflow (see pv_dot).
template <int DT>
struct DotAccOf {
  using type = __m512;
};
template <>
struct DotAccOf<kI8> {
  using type = __m512i;
};
template <>
struct DotAccOf<kI16> {
  using type = __m512i;
};
template <int DT>
using DotAcc = typename DotAccOf<DT>::type;
inline __m512 dot_pairs(__m512 acc, __m512i a, __m512i b) { return _mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)b); }
// vpdpwssd written out: GCC 12 wraps _mm512_dpwssd_epi32 in two register copies per accumulator
// (in and out of a scratch register: 576 zmm register moves in the library against 344), and
// int8 steps without them ran 3-6 % faster side by side on Zen 4 (32/8 and 32/1, from L3 and
// from memory).
inline __m512i dot_pairs(__m512i acc, __m512i a, __m512i b) {
  asm("vpdpwssd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
  return acc;
}
inline __m512 as_f32(__m512 x) { return x; }
inline __m512 as_f32(__m512i x) { return _mm512_cvtepi32_ps(x); }
// out[0..4) = the sums of a, b, c, d (Vec::hsum4's shuffles); int32 ones are summed exactly (a score
// is at most 256 · 32767 · 128 < 2^31 in magnitude) and converted once.
inline void hsum4(__m512 a, __m512 b, __m512 c, __m512 d, float* out) { Vec::hsum4(a, b, c, d, out); }
inline void hsum4(__m512i a, __m512i b, __m512i c, __m512i d, float* out) {
  const __m512i ab = _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
  const __m512i cd = _mm512_add_epi32(_mm512_unpacklo_epi32(c, d), _mm512_unpackhi_epi32(c, d));
  const __m512i x = _mm512_add_epi32(_mm512_unpacklo_epi64(ab, cd), _mm512_unpackhi_epi64(ab, cd));
  const __m256i y = _mm256_add_epi32(_mm512_castsi512_si256(x), _mm512_extracti64x4_epi64(x, 1));
  _mm_storeu_ps(out, _mm_cvtepi32_ps(_mm_add_epi32(_mm256_castsi256_si128(y), _mm256_extracti128_si256(y, 1))));
}

template <int DT>
__m512i load_dot_chunk(const void* row, std::int64_t e, std::int64_t d) {
  if constexpr (DT == kI16) return _mm512_loadu_si512(static_cast<const std::int16_t*>(row) + e);  // zero padded
  if constexpr (DT == kI8) return load_i8_chunk(row, e, d);
  return load_bf16_chunk(row, e, d);
}

// Lanes 4r + i of the 4×4 block of scores from acc[p][i], whose lanes 0-7 hold row 2p's partial
// sums against key i and lanes 8-15 row 2p + 1's (score_quad_dot's row pairs): 21 shuffles and adds
// for 16 sums, where 4 hsum4 take 52.
inline __m512 hsum_pairs(const __m512 (&a)[2][4]) {
  __m512 w[2];
  for (int p = 0; p < 2; ++p) {
    const __m512 u =
        _mm512_add_ps(_mm512_unpacklo_ps(a[p][0], a[p][1]), _mm512_unpackhi_ps(a[p][0], a[p][1]));
    const __m512 v =
        _mm512_add_ps(_mm512_unpacklo_ps(a[p][2], a[p][3]), _mm512_unpackhi_ps(a[p][2], a[p][3]));
    const __m512d ud = _mm512_castps_pd(u), vd = _mm512_castps_pd(v);
    w[p] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(ud, vd)),
                         _mm512_castpd_ps(_mm512_unpackhi_pd(ud, vd)));
  }
  return _mm512_add_ps(_mm512_shuffle_f32x4(w[0], w[1], 0x88), _mm512_shuffle_f32x4(w[0], w[1], 0xdd));
}
inline __m512 hsum_pairs(const __m512i (&a)[2][4]) {
  __m512i w[2];
  for (int p = 0; p < 2; ++p) {
    const __m512i u =
        _mm512_add_epi32(_mm512_unpacklo_epi32(a[p][0], a[p][1]), _mm512_unpackhi_epi32(a[p][0], a[p][1]));
    const __m512i v =
        _mm512_add_epi32(_mm512_unpacklo_epi32(a[p][2], a[p][3]), _mm512_unpackhi_epi32(a[p][2], a[p][3]));
    w[p] = _mm512_add_epi32(_mm512_unpacklo_epi64(u, v), _mm512_unpackhi_epi64(u, v));
  }
  return _mm512_cvtepi32_ps(
      _mm512_add_epi32(_mm512_shuffle_i32x4(w[0], w[1], 0x88), _mm512_shuffle_i32x4(w[0], w[1], 0xdd)));
}

// q rows as row pairs for score_quad_dot's blocks of 4: qp[j][c] = (row 2j's 16 elements 16c ..,
// row 2j + 1's), 32 bf16 or int16 per chunk (an odd last row has no pair: no block of 4 reads it).
inline void pack_row_pairs(const std::uint16_t* qb, std::int64_t R, std::int64_t ld, std::uint16_t* qp) {
  for (std::int64_t j = 0; j < R / 2; ++j)
    for (std::int64_t c = 0; c < ld / 16; ++c)
      for (std::int64_t h = 0; h < 2; ++h)
        std::memcpy(qp + (j * (ld / 16) + c) * 32 + h * 16, qb + (2 * j + h) * ld + 16 * c, 32);
}

// 16 elements of a K row (bf16, int16, or int8 widened to int16) at e in both halves (zero past d).
template <int DT>
__m512i load_half_chunk(const void* row, std::int64_t e, std::int64_t d) {
  if constexpr (DT == kI8) {
    const auto* p = static_cast<const std::int8_t*>(row) + e;
    const __m128i x =
        e + 16 <= d ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(p))
                    : _mm_maskz_loadu_epi8(d - e <= 0 ? __mmask16(0) : __mmask16((1u << (d - e)) - 1u), p);
    return _mm512_broadcast_i64x4(_mm256_cvtepi8_epi16(x));
  }
  if (DT == kI16 || e + 16 <= d)
    return _mm512_broadcast_i64x4(
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const std::uint16_t*>(row) + e)));
  const __mmask16 m = d - e <= 0 ? __mmask16(0) : __mmask16((1u << (d - e)) - 1u);
  return _mm512_broadcast_i64x4(_mm256_maskz_loadu_epi16(m, static_cast<const std::uint16_t*>(row) + e));
}

// score_quad for kDot: 32 elements per vdpbf16ps (bf16) or vpdpwssd (int8 widened to int16, q as
// int16), K rows dotted in place. Blocks of 4 rows dot 2 rows at once instead, each a 256-bit half
// against 16 elements of the key broadcast to both (q packed by pack_row_pairs): the same products
// per instruction, and 8 accumulators to reduce where 16 took 2.5 times the shuffles (hsum_pairs).
template <int DT, int rb>
void score_quad_dot(const Scratch& w, std::int64_t d, std::int64_t r0, const void* const* k, std::int64_t t) {
  const std::int64_t ld = w.ld;
  if constexpr (rb == 4) {
    DotAcc<DT> acc[2][4];
#pragma GCC unroll 2
    for (int p = 0; p < 2; ++p)
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i) acc[p][i] = DotAcc<DT>{};
    const std::uint16_t* qp = w.qp + r0 * ld;  // pairs r0 / 2 and r0 / 2 + 1
    for (std::int64_t e = 0; e < ld; e += 16) {
      __m512i kv[4];
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i) kv[i] = load_half_chunk<DT>(k[i], e, d);
#pragma GCC unroll 2
      for (int p = 0; p < 2; ++p) {
        const __m512i qv = _mm512_loadu_si512(qp + p * 2 * ld + 2 * e);
#pragma GCC unroll 4
        for (int i = 0; i < 4; ++i) acc[p][i] = dot_pairs(acc[p][i], qv, kv[i]);
      }
    }
    const __m512 x = hsum_pairs(acc);
    _mm_storeu_ps(w.s + r0 * T + t, _mm512_castps512_ps128(x));
    _mm_storeu_ps(w.s + (r0 + 1) * T + t, _mm512_extractf32x4_ps(x, 1));
    _mm_storeu_ps(w.s + (r0 + 2) * T + t, _mm512_extractf32x4_ps(x, 2));
    _mm_storeu_ps(w.s + (r0 + 3) * T + t, _mm512_extractf32x4_ps(x, 3));
    return;
  }
  DotAcc<DT> acc[rb][4];
#pragma GCC unroll 4
  for (int r = 0; r < rb; ++r)
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) acc[r][i] = DotAcc<DT>{};
  for (std::int64_t e = 0; e < ld; e += 32) {
    __m512i kv[4];
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) kv[i] = load_dot_chunk<DT>(k[i], e, d);
#pragma GCC unroll 4
    for (int r = 0; r < rb; ++r) {
      const __m512i qv = _mm512_loadu_si512(w.qb + (r0 + r) * ld + e);
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i) acc[r][i] = dot_pairs(acc[r][i], qv, kv[i]);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < rb; ++r) hsum4(acc[r][0], acc[r][1], acc[r][2], acc[r][3], w.s + (r0 + r) * T + t);
}

// O[r] = O[r]·alpha[r] + Σ_t p[r][t]·v_t for rows [r0, r0 + rb), over `pairs` staged key pairs:
// stage holds, per pair, ld/32 chunks of 64 bf16 (unpacklo, unpackhi of rows t and t + 1), and O is
// in the lane order those unpacks give (bf16_pair_index), as in the f32 bf16 path.
// int8 caches: P and V are int16 pairs (P ≤ 32767, |v| ≤ 128, so a tile's 16 pairs sum to at most
// 2^27 per lane, exact in int32), and the tile's sums join O as pscale · sum.
// V pairs come from vpair(tp, e, vlo, vhi): the staged pairs, or (groups of at most RB rows, which
// read each pair once) unpacked from the rows in place (pv_dot_rows).
template <int DT, int rb, class VPair>
void pv_dot_with(const Scratch& w, std::int64_t r0, std::int64_t pairs, VPair&& vpair) {
  const std::int64_t ld = w.ld;
  for (std::int64_t e = 0; e < ld; e += 32) {
    DotAcc<DT> lo[rb], hi[rb];
#pragma GCC unroll 4
    for (int r = 0; r < rb; ++r) {
      if constexpr (kIntDot<DT>) {
        lo[r] = hi[r] = _mm512_setzero_si512();
      } else {
        const __m512 a = _mm512_set1_ps(w.alpha[r0 + r]);
        lo[r] = _mm512_mul_ps(_mm512_loadu_ps(w.o + (r0 + r) * ld + e), a);
        hi[r] = _mm512_mul_ps(_mm512_loadu_ps(w.o + (r0 + r) * ld + e + 16), a);
      }
    }
    for (std::int64_t tp = 0; tp < pairs; ++tp) {
      __m512i vlo, vhi;
      vpair(tp, e, vlo, vhi);
#pragma GCC unroll 4
      for (int r = 0; r < rb; ++r) {
        const __m512i pp = _mm512_set1_epi32(int(w.pb[(r0 + r) * w.pb_row_stride + tp * w.pb_pair_stride]));
        lo[r] = dot_pairs(lo[r], pp, vlo);
        hi[r] = dot_pairs(hi[r], pp, vhi);
      }
    }
#pragma GCC unroll 4
    for (int r = 0; r < rb; ++r) {
      float* o = w.o + (r0 + r) * ld + e;
      if constexpr (kIntDot<DT>) {
        const __m512 a = _mm512_set1_ps(w.alpha[r0 + r]), ps = _mm512_set1_ps(w.pscale[r0 + r]);
        _mm512_storeu_ps(o, _mm512_fmadd_ps(as_f32(lo[r]), ps, _mm512_mul_ps(_mm512_loadu_ps(o), a)));
        _mm512_storeu_ps(o + 16, _mm512_fmadd_ps(as_f32(hi[r]), ps, _mm512_mul_ps(_mm512_loadu_ps(o + 16), a)));
      } else {
        _mm512_storeu_ps(o, lo[r]);
        _mm512_storeu_ps(o + 16, hi[r]);
      }
    }
  }
}

template <int DT, int rb>
void pv_dot(const Scratch& w, std::int64_t r0, const std::uint16_t* stage, std::int64_t pairs) {
  pv_dot_with<DT, rb>(w, r0, pairs, [&](std::int64_t tp, std::int64_t e, __m512i& vlo, __m512i& vhi) {
    const std::uint16_t* vs = stage + (tp * w.ld + e) * 2;
    vlo = _mm512_loadu_si512(vs);
    vhi = _mm512_loadu_si512(vs + 32);
  });
}

// The same, V rows v[0 .. 2·pairs) read in place (v[nt] of an odd tile: a row of zeros): staging
// them had cost a store and a load of every pair for groups that read it once (32/8 heads: 22 % of a
// step's samples, one Zen 4 thread, cache in L2). `pf`: the next tile's V lines this pass asks for.
template <int DT, int rb>
void pv_dot_rows(const Scratch& w, std::int64_t d, std::int64_t r0, const void* const* v, std::int64_t pairs,
                 const SpreadPrefetch& pf = {}) {
  pv_dot_with<DT, rb>(w, r0, pairs, [&](std::int64_t tp, std::int64_t e, __m512i& vlo, __m512i& vhi) {
    pf.step(std::size_t(e / 32 * pairs + tp));
    const __m512i x = load_dot_chunk<DT>(v[2 * tp], e, d), y = load_dot_chunk<DT>(v[2 * tp + 1], e, d);
    vlo = _mm512_unpacklo_epi16(x, y);
    vhi = _mm512_unpackhi_epi16(x, y);
  });
}

// Groups of 16 or more rows per KV head (MQA, wide GQA, speculative steps) take the forward
// kernel's layout instead: scores Sᵀ[t][r] with lanes along the group's rows, from Qᵀ packed once
// per item as pairs (q[r][2i], q[r][2i+1]) and each key's pairs broadcast from its row, so no
// horizontal sums (hsum4 was 13 instructions per 4 scores); the online softmax then runs lane-wise
// over 16 rows at a time (max, exp and sums across key vectors, no per-row reductions), and writes
// P as [pair][row] dwords for pv_dot. 32/1, context 4096, one Zen 4 thread, side by side: bf16
// batch 8 4734 -> 3952 µs, batch 1 549 -> 461; int8 batch 8 5342 -> 4381 (3939 with vpdpwssd in
// place of vpmaddwd + vpaddd).

// Qᵀ of one group's rows as pairs: qt[i·R + r] = (qb[r][2i], qb[r][2i+1]), once per item.
inline void pack_rows_q(const std::uint16_t* qb, std::int64_t R, std::int64_t ld, std::uint32_t* qt) {
  for (std::int64_t r = 0; r < R; ++r)
    for (std::int64_t i = 0; i < ld / 2; ++i) qt[i * R + r] = load_pair(qb + r * ld + 2 * i);
}

// Sᵀ[t + k][rows 16·rv0 .. 16·(rv0 + RV)) (rows ldst apart) for the 4 keys k[0..4) (bf16 rows in
// place, or int16 rows widened from int8 when DT is kI16): a key's pair is one broadcast dword, and
// only the d elements of a row are read (an odd d's last pair is the element and a zero).
template <int DT, int RV>
void score_rows(const std::uint32_t* qt, std::int64_t R, std::int64_t d, const void* const* k, float* st,
                std::int64_t ldst, std::int64_t t, std::int64_t rv0) {
  DotAcc<DT> acc[4][RV];
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i)
#pragma GCC unroll 2
    for (int v = 0; v < RV; ++v) acc[i][v] = DotAcc<DT>{};
  const std::uint16_t* kr[4];
  for (int i = 0; i < 4; ++i) kr[i] = static_cast<const std::uint16_t*>(k[i]);
  const auto step = [&](std::int64_t i, const std::uint32_t* pairs) {
    __m512i qv[RV];
#pragma GCC unroll 2
    for (int v = 0; v < RV; ++v) qv[v] = _mm512_loadu_si512(qt + i * R + (rv0 + v) * 16);
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
      const __m512i kb = _mm512_set1_epi32(int(pairs[j]));
#pragma GCC unroll 2
      for (int v = 0; v < RV; ++v) acc[j][v] = dot_pairs(acc[j][v], qv[v], kb);
    }
  };
  std::uint32_t pairs[4];
  for (std::int64_t i = 0; i < d / 2; ++i) {
    for (int j = 0; j < 4; ++j) pairs[j] = load_pair(kr[j] + 2 * i);
    step(i, pairs);
  }
  if (d % 2 != 0) {
    for (int j = 0; j < 4; ++j) pairs[j] = kr[j][d - 1];
    step(d / 2, pairs);
  }
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j)
#pragma GCC unroll 2
    for (int v = 0; v < RV; ++v) _mm512_storeu_ps(st + (t + j) * ldst + (rv0 + v) * 16, as_f32(acc[j][v]));
}

// The online softmax of a tile for every row of the item at once, with lanes along the rows (all
// heads' rows side by side, 16 at a time): st [T][ldst] holds the tile's scores (row g·R + r of
// head g in column g·R + r); P goes to pb as [T/2][ldst] pairs (bf16, or int16 on a per-row scale
// for int8 caches), and m, l, alpha (and pscale) of the rows are updated. Max, exp and sums run
// across key vectors, with no per-row reductions: per row and tile, softmax_tile's reductions and
// scalar steps had been 14 % of a 32/8 step (one Zen 4 thread, bf16 cache in L2). int8 caches scale
// each lane by its head's K and V scales of the key (kscale, vscale: [T][ldsc], head g in column
// g). A row whose visible score is not finite gets l = NaN (the merge writes NaN); O is kept
// normalized (P divided by the new sum, max(1, l) so that rows with nothing visible keep 0).
// Each lane's arithmetic is its own row's: which rows share a vector changes no result.
template <int DT>
void softmax_lanes(const Scratch& w, std::int64_t HR, std::int64_t R, float* st, std::int64_t ldst,
                   std::int64_t nt, const float* kscale, const float* vscale, std::int64_t ldsc, float scale,
                   const std::int64_t* limit, const float* row_scale, std::uint32_t* pb) {
  const __m512 zero = _mm512_setzero_ps(), one = _mm512_set1_ps(1.f), neg_inf = _mm512_set1_ps(kNegInf);
  for (std::int64_t r0 = 0; r0 < HR; r0 += 16) {
    const __mmask16 rows = first_lanes(HR - r0);
    const __m512 rs = row_scale != nullptr
                          ? _mm512_mul_ps(_mm512_set1_ps(scale), _mm512_maskz_loadu_ps(rows, row_scale + r0))
                          : _mm512_set1_ps(scale);
    // Keys a row sees in this tile: [0, min(nt, limit)) (none for lanes past the rows).
    alignas(64) std::int32_t vis[16], head[16];
    for (std::int64_t i = 0; i < 16; ++i) {
      vis[i] = r0 + i < HR ? int(std::min<std::int64_t>(nt, std::max<std::int64_t>(limit[r0 + i], 0))) : 0;
      head[i] = int((r0 + i) / R - r0 / R);  // lane's head, from the block's first
    }
    const __m512i visible = _mm512_load_si512(vis), hidx = _mm512_load_si512(head);
    const float* ks = kscale + r0 / R;
    const float* vs = vscale + r0 / R;
    float* x = st + r0;  // scores become probabilities in place
    __m512 mx = neg_inf, bad = zero;
    for (std::int64_t t = 0; t < T; ++t) {
      const __mmask16 in = _mm512_cmpgt_epi32_mask(visible, _mm512_set1_epi32(int(t)));
      __m512 sc = rs;
      if constexpr (DT == kI8) sc = _mm512_mul_ps(rs, _mm512_permutexvar_ps(hidx, _mm512_loadu_ps(ks + t * ldsc)));
      __m512 v = _mm512_mul_ps(_mm512_loadu_ps(x + t * ldst), sc);
      bad = _mm512_mask_add_ps(bad, in, bad, _mm512_mul_ps(v, zero));
      v = _mm512_mask_blend_ps(in, neg_inf, v);
      _mm512_storeu_ps(x + t * ldst, v);
      mx = _mm512_max_ps(mx, v);
    }
    const __m512 m_old = _mm512_mask_loadu_ps(neg_inf, rows, w.m + r0);
    const __m512 m_new = _mm512_max_ps(m_old, mx);
    const __m512 m_safe = Vec::zero_if_neg_inf(m_new);
    __m512 sum = bad;
    for (std::int64_t t = 0; t < T; ++t) {
      const __m512 e = exp(_mm512_sub_ps(_mm512_loadu_ps(x + t * ldst), m_safe));
      _mm512_storeu_ps(x + t * ldst, e);
      sum = _mm512_add_ps(sum, e);
    }
    const __m512 a = exp(_mm512_sub_ps(m_old, m_safe));
    const __m512 l_old = _mm512_maskz_loadu_ps(rows, w.l + r0);
    const __m512 l_new = _mm512_fmadd_ps(l_old, a, sum);
    const __m512 inv = _mm512_div_ps(one, _mm512_max_ps(one, l_new));
    _mm512_mask_storeu_ps(w.alpha + r0, rows, _mm512_mul_ps(_mm512_mul_ps(a, l_old), inv));
    _mm512_mask_storeu_ps(w.l + r0, rows, l_new);
    _mm512_mask_storeu_ps(w.m + r0, rows, m_new);
    // P · vscale / l as pairs [T/2][ldst].
    __m512 pmax = zero;
    for (std::int64_t t = 0; t < T; ++t) {
      __m512 sc = inv;
      if constexpr (DT == kI8) sc = _mm512_mul_ps(inv, _mm512_permutexvar_ps(hidx, _mm512_loadu_ps(vs + t * ldsc)));
      const __m512 pv = _mm512_mul_ps(_mm512_loadu_ps(x + t * ldst), sc);
      _mm512_storeu_ps(x + t * ldst, pv);
      pmax = _mm512_max_ps(pmax, pv);
    }
    __m512 q = one;
    if constexpr (DT == kI8) {
      const __mmask16 pos = _mm512_cmp_ps_mask(pmax, zero, _CMP_GT_OQ);
      q = _mm512_maskz_div_ps(pos, _mm512_set1_ps(32767.f), pmax);
      _mm512_mask_storeu_ps(w.pscale + r0, rows, _mm512_maskz_div_ps(pos, pmax, _mm512_set1_ps(32767.f)));
    }
    for (std::int64_t tp = 0; tp < T / 2; ++tp) {
      const __m512 e0 = _mm512_loadu_ps(x + 2 * tp * ldst), e1 = _mm512_loadu_ps(x + (2 * tp + 1) * ldst);
      __m512i pair;
      if constexpr (DT == kI8) {
        const __m512i lo = _mm512_and_si512(_mm512_cvtps_epi32(_mm512_mul_ps(e0, q)), _mm512_set1_epi32(0xffff));
        pair = _mm512_or_si512(lo, _mm512_slli_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(e1, q)), 16));
      } else {
        pair = _mm512_or_si512(bf16_low(e0), _mm512_slli_epi32(bf16_low(e1), 16));
      }
      _mm512_storeu_si512(pb + tp * ldst + r0, pair);
    }
  }
}

// dst[t][c] = src[c][t] for 32 keys t and 16 rows c (rows n and on read as 0): a block of
// score_quad_dot's [row][key] scores into softmax_lanes' [key][row] layout, 64 shuffles per 16×16.
inline void transpose_scores(const float* src, std::int64_t n, float* dst, std::int64_t ldd) {
  static_assert(T == 32);
  for (int half = 0; half < 2; ++half) {
    __m512 r[16], u[16];
    for (int i = 0; i < 16; ++i) r[i] = i < n ? _mm512_loadu_ps(src + i * T + 16 * half) : _mm512_setzero_ps();
    for (int k = 0; k < 16; k += 2) {  // per 128-bit lane: (row k, row k + 1) interleaved
      u[k] = _mm512_unpacklo_ps(r[k], r[k + 1]);
      u[k + 1] = _mm512_unpackhi_ps(r[k], r[k + 1]);
    }
    for (int k = 0; k < 16; k += 4) {  // u[k + j]: column j of each 128-bit lane, rows k .. k + 3
      r[k] = _mm512_shuffle_ps(u[k], u[k + 2], 0x44);
      r[k + 1] = _mm512_shuffle_ps(u[k], u[k + 2], 0xee);
      r[k + 2] = _mm512_shuffle_ps(u[k + 1], u[k + 3], 0x44);
      r[k + 3] = _mm512_shuffle_ps(u[k + 1], u[k + 3], 0xee);
    }
    for (int m = 0; m < 2; ++m)  // 128-bit lanes (0, 2) and (1, 3) of rows 8m .. 8m + 7
      for (int j = 0; j < 4; ++j) {
        u[8 * m + j] = _mm512_shuffle_f32x4(r[8 * m + j], r[8 * m + 4 + j], 0x88);
        u[8 * m + 4 + j] = _mm512_shuffle_f32x4(r[8 * m + j], r[8 * m + 4 + j], 0xdd);
      }
    for (int j = 0; j < 8; ++j) {  // columns j and j + 8
      _mm512_storeu_ps(dst + (16 * half + j) * ldd, _mm512_shuffle_f32x4(u[j], u[8 + j], 0x88));
      _mm512_storeu_ps(dst + (16 * half + j + 8) * ldd, _mm512_shuffle_f32x4(u[j], u[8 + j], 0xdd));
    }
  }
}

// Stages V rows t, t + 1 of one head (b = nullptr past the tile: zeros) as bf16 pairs.
template <int DT>
void stage_pair(const void* a, const void* b, std::int64_t d, std::int64_t ld, std::uint16_t* dst) {
  for (std::int64_t e = 0; e < ld; e += 32) {
    const __m512i x = load_dot_chunk<DT>(a, e, d),
                  y = b != nullptr ? load_dot_chunk<DT>(b, e, d) : _mm512_setzero_si512();
    _mm512_storeu_si512(dst + 2 * e, _mm512_unpacklo_epi16(x, y));
    _mm512_storeu_si512(dst + 2 * e + 32, _mm512_unpackhi_epi16(x, y));
  }
}

// int8 caches: q as int16 on a per-row scale (max |q| / 32767, error ≤ max |q| / 65534 per element,
// below bf16's rounding for all but elements far under the row's max), zero past d. A row with a
// non-finite element gets a NaN scale: its scores are NaN and the row is poisoned, as with f32 q.
inline void quantize_row_i16(const float* q, std::int64_t d, std::int64_t ld, std::uint16_t* dst, float* scale) {
  __m512 mx = _mm512_setzero_ps(), bad = _mm512_setzero_ps();  // bad: NaN once an element is not finite
  for (std::int64_t e = 0; e < d; e += 16) {
    const __m512 x = _mm512_maskz_loadu_ps(first_lanes(d - e), q + e);
    mx = _mm512_max_ps(mx, _mm512_abs_ps(x));
    bad = _mm512_fmadd_ps(x, _mm512_setzero_ps(), bad);
  }
  const float m = _mm512_reduce_max_ps(mx);
  const bool finite = !__builtin_isnan(_mm512_reduce_add_ps(bad));
  const __m512 inv = _mm512_set1_ps(finite && m > 0.f ? 32767.f / m : 0.f);
  for (std::int64_t e = 0; e < ld; e += 16) {  // round to nearest even (MXCSR's default)
    const __m512 x = _mm512_maskz_loadu_ps(first_lanes(d - e), q + e);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + e),
                        _mm512_cvtepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(x, inv))));
  }
  *scale = !finite ? __builtin_nanf("") : m > 0.f ? m / 32767.f : 0.f;
}

// dst[0..ld) = q[0..d) rounded to bf16 as f32_to_bf16 rounds (nearest even, NaN kept quiet; the
// vcvtneps2bf16 instruction would flush subnormals), zero past d.
inline void round_row_bf16(const float* q, std::int64_t d, std::int64_t ld, std::uint16_t* dst) {
  const __m512i nan_bits = _mm512_set1_epi32(0x7f800000), abs_mask = _mm512_set1_epi32(0x7fffffff);
  for (std::int64_t e = 0; e < ld; e += 16) {
    const __m512i x = _mm512_maskz_loadu_epi32(first_lanes(d - e), q + e);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(x, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff))), 16);
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(x, abs_mask), nan_bits);
    r = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(x, 16), _mm512_set1_epi32(0x40));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + e), _mm512_cvtepi32_epi16(r));
  }
}

// out[0..d) = an O row in pv_dot's lane order (bf16_pair_index per 32-element chunk), in natural
// order: two two-source permutes per chunk.
inline void unpermute_row(const float* o, std::int64_t d, float* out) {
  alignas(64) std::int32_t idx[32];
  for (int j = 0; j < 32; ++j) idx[j] = (j % 8 < 4 ? 0 : 16) + j / 8 * 4 + j % 4;
  const __m512i i0 = _mm512_load_si512(idx), i1 = _mm512_load_si512(idx + 16);
  for (std::int64_t e = 0; e < d; e += 32) {
    const __m512 lo = _mm512_loadu_ps(o + e), hi = _mm512_loadu_ps(o + e + 16);
    _mm512_mask_storeu_ps(out + e, first_lanes(d - e), _mm512_permutex2var_ps(lo, i0, hi));
    _mm512_mask_storeu_ps(out + e + 16, first_lanes(d - e - 16), _mm512_permutex2var_ps(lo, i1, hi));
  }
}
#endif

#if defined(MHA_DECODE_MADD)
#include "kernels/decode_madd.h"
#endif

// O[r] = O[r]·alpha[r] + Σ_t p[r][t]·v_t for rows [r0, r0 + rb), VP vector pairs of columns at a time.
template <int DT, int rb, int VP>
std::int64_t pv_columns(const Scratch& w, std::int64_t d, std::int64_t r0, const void* const* vrow, std::int64_t nt,
                        std::int64_t e, const SpreadPrefetch& pf, std::size_t& step) {
  const std::int64_t ld = w.ld;
  for (; e + 2 * N * VP <= d; e += 2 * N * VP) {
    Vec::T o[rb][2 * VP];
#pragma GCC unroll 4
    for (int r = 0; r < rb; ++r) {
      const Vec::T a = Vec::set1(w.alpha[r0 + r]);
#pragma GCC unroll 8
      for (int c = 0; c < 2 * VP; ++c) o[r][c] = Vec::mul(Vec::load(w.o + (r0 + r) * ld + e + c * N), a);
    }
    // Each vector pair is used as soon as it is loaded: loading all 2·VP first (one row: 8) held
    // 18 vectors and spilled on AVX2 (32/32 bf16, one Zen 1 thread, context 256: 360 -> 317 µs).
    const auto key = [&](std::int64_t t) {
      Vec::T p[rb];
#pragma GCC unroll 4
      for (int r = 0; r < rb; ++r) p[r] = Vec::bcast(w.s + (r0 + r) * T + t);
#pragma GCC unroll 4
      for (int c = 0; c < VP; ++c) {
        Vec::T a, b;
        load_pair<DT>(vrow[t], e + 2 * N * c, a, b);
#pragma GCC unroll 4
        for (int r = 0; r < rb; ++r) {
          o[r][2 * c] = Vec::fmadd(p[r], a, o[r][2 * c]);
          o[r][2 * c + 1] = Vec::fmadd(p[r], b, o[r][2 * c + 1]);
        }
      }
    };
    // Keys two at a time, one prefetch step per pair: the step's arithmetic per key had been a
    // fifth of the loop's instructions.
    std::int64_t t = 0;
    for (; t + 2 <= nt; t += 2) {
      pf.step(step++);
      key(t);
      key(t + 1);
    }
    if (t < nt) {
      pf.step(step++);
      key(t);
    }
#pragma GCC unroll 4
    for (int r = 0; r < rb; ++r)
#pragma GCC unroll 8
      for (int c = 0; c < 2 * VP; ++c) Vec::store(w.o + (r0 + r) * ld + e + c * N, o[r][c]);
  }
  return e;
}

// Each O column sums its keys in order in one accumulator, whose FMAs wait on each other (4 cycles
// apart on Zen 3/4): fewer than 4 rows take more columns at once, so that 8 chains keep both FMA
// pipes busy. A single row (MHA, one query) with 2 had run at a quarter of the FMA rate. The sums are
// the same, bit for bit.
template <int DT, int rb>
void pv_block(const Scratch& w, std::int64_t d, std::int64_t r0, const void* const* vrow, std::int64_t nt,
              SpreadPrefetch pf = {}) {
  const std::int64_t ld = w.ld;
  constexpr int VP = rb == 1 ? 4 : rb == 2 ? 2 : 1;
  // pf: the next tile's V lines, spread over the first pv_columns pass's (column block, key pair) steps.
  pf.spread_over(std::size_t(std::max<std::int64_t>(d / (2 * N * VP), 1) * ((nt + 1) / 2)));
  std::size_t step = 0;
  std::int64_t e = pv_columns<DT, rb, VP>(w, d, r0, vrow, nt, 0, pf, step);
  if constexpr (VP > 1) e = pv_columns<DT, rb, 1>(w, d, r0, vrow, nt, e, pf, step);
  for (; e < d; ++e) {  // the rest, one element at a time
    for (int r = 0; r < rb; ++r) {
      float acc = w.o[(r0 + r) * ld + e] * w.alpha[r0 + r];
      for (std::int64_t t = 0; t < nt; ++t) acc += w.s[(r0 + r) * T + t] * load_one<DT>(vrow[t], e);
      w.o[(r0 + r) * ld + e] = acc;
    }
  }
}

// Calls f(r0, std::integral_constant<int, rb>) over R rows: blocks of B, then one of 3, 2 or 1.
template <int B, class F>
void for_row_blocks(std::int64_t R, F&& f) {
  std::int64_t r0 = 0;
  for (; r0 + B <= R; r0 += B) f(r0, std::integral_constant<int, B>{});
  const std::int64_t rest = R - r0;
  if constexpr (B > 3)
    if (rest == 3) f(r0, std::integral_constant<int, 3>{});
  if constexpr (B > 2)
    if (rest == 2) f(r0, std::integral_constant<int, 2>{});
  if (rest == 1) f(r0, std::integral_constant<int, 1>{});
}

// Scores of R rows against the 4 keys of a step: on AVX2 in blocks of 4 rows × 2 keys
// (score_rows4_keys2; int8 and its widened kI16 rows: score_madd_rows4_keys2), the rest in
// score_quad's (score_quad_madd's) blocks.
template <int DT>
void score_step(const Scratch& w, std::int64_t R, std::int64_t d, const void* const* k, std::int64_t t) {
  std::int64_t r4 = 0;
  if constexpr (N == 8)
    for (; r4 + 4 <= R; r4 += 4)
      for (int i = 0; i < 4; i += 2) {
#if defined(MHA_DECODE_MADD)
        if constexpr (DT == kI8 || DT == kI16)
          score_madd_rows4_keys2<DT>(w, d, r4, k + i, t + i);
        else
#endif
          score_rows4_keys2<DT>(w, d, r4, k + i, t + i);
      }
  for_row_blocks<SRB>(R - r4, [&](std::int64_t r0, auto rb) {
#if defined(MHA_DECODE_MADD)
    if constexpr (DT == kI8 || DT == kI16)
      score_quad_madd<DT, decltype(rb)::value>(w, d, r4 + r0, k, t);
    else
#endif
      score_quad<DT, decltype(rb)::value>(w, d, r4 + r0, k, t);
  });
}

// Online softmax over the tile for every row: s becomes p (times the V scale), alpha the rescale.
// kscale, vscale: [rows / rows_per_group][T], the int8 scales of each group's keys (null: 1).
void softmax_tile(const Scratch& w, std::int64_t rows, std::int64_t rows_per_group, std::int64_t nt,
                  const float* kscale_all, const float* vscale_all, float scale, const std::int64_t* limit,
                  const float* row_scale) {
  const Vec::T neg_inf = Vec::set1(kNegInf);
  for (std::int64_t r = 0; r < rows; ++r) {
    float* s = w.s + r * T;
    const float* kscale = kscale_all != nullptr ? kscale_all + r / rows_per_group * T : nullptr;
    const float* vscale = vscale_all != nullptr ? vscale_all + r / rows_per_group * T : nullptr;
    // Scale (times int8's K scale and q scale); keys past the tile or past the row's causal limit get -inf.
    const std::int64_t visible = std::min(nt, limit[r]);
    const Vec::T row_mult = Vec::set1(row_scale != nullptr ? scale * row_scale[r] : scale);
    Vec::T mv = neg_inf;
    Vec::T bad = Vec::zero();  // NaN in a lane once a visible score is not finite (README, "NaN and inf")
    for (std::int64_t t = 0; t < T; t += N) {
      Vec::T x = Vec::mul(Vec::load(s + t),
                          kscale != nullptr ? Vec::mul(row_mult, Vec::load(kscale + t)) : row_mult);
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
      Vec::store(s + t, Vec::mul(Vec::load(s + t),
                                 vscale != nullptr ? Vec::mul(Vec::load(vscale + t), vinv) : vinv));
    w.alpha[r] = alpha * w.l[r] * inv;
    w.l[r] = l_new;
    w.m[r] = m_new;
  }
}

// V rows of one head (off bytes into each token's row) for the P·V loops that read them in place
// as key pairs (pv_dot_rows, pv_madd<rb, true>): an odd tile's last key pairs with a row of zeros,
// long enough for any row they read (decode_ld(kMaxHeadDim) bf16).
inline void pair_rows(const std::uint8_t* const* vbase, std::size_t off, std::int64_t nt, const void** vrow) {
  alignas(64) static const std::uint8_t zeros[2 * ((kMaxHeadDim + 31) / 32 * 32)] = {};
  for (std::int64_t t = 0; t < nt; ++t) vrow[t] = vbase[t] + off;
  if (nt % 2 != 0) vrow[nt] = zeros;
}

// Pointers to the rows of tokens [t0, t0 + nt) of one sequence (paged or contiguous: one block).
// (head_off: bytes to the item's first head, so that krow[t] + g·head stride is its head g.)
void token_rows(const DecodeParams& p, const std::int32_t* table, std::int64_t t0, std::int64_t nt,
                std::size_t row_bytes, std::size_t head_off, const std::uint8_t** krow, const std::uint8_t** vrow,
                std::int64_t* rows) {
  const std::int64_t rpb = p.rows_per_block;
  std::int64_t blk = t0 / rpb, off = t0 % rpb;  // one division per tile, not per key
  for (std::int64_t t = 0; t < nt; ++t) {
    rows[t] = std::int64_t(table[blk]) * rpb + off;
    krow[t] = static_cast<const std::uint8_t*>(p.k) + std::size_t(rows[t]) * row_bytes + head_off;
    vrow[t] = static_cast<const std::uint8_t*>(p.v) + std::size_t(rows[t]) * row_bytes + head_off;
    if (++off == rpb) {
      off = 0;
      ++blk;
    }
  }
}

// Whether the next tile is asked for as two spans in address order (K's during the scores, V's
// inside P·V) instead of head by head (essay): for the dot-product kernels' groups of at most RB
// rows, whose P·V reads V in place (pv_dot_rows, which asks for the V span). One Zen 4 thread
// pair, side by side, context 4096: 32/8 bf16 698 -> 547 µs, 32/32 bf16 1965 -> 1837, int8 32/8
// 486 -> 443, batch 8 3447 -> 2923, 32/16 770 -> 636. Larger groups keep the per-head order:
// 32/4 bf16 with spans (and V left to the hardware) took 518 µs against 426, and f32 and f16 are
// widened (f16 32/8 lost 11 % to spans).
// AVX2 groups of at most RB rows (f32, bf16, int8) take spans too, V's spread over the P·V steps
// (pv_block, pv_madd), where before V was left to the hardware and the staging copy waited on it
// (a fifth of a 32/8 bf16 step's samples on Zen 1). One Zen 1 thread pair, context 4096, medians
// side by side: essay.
template <int DT>
bool span_prefetch(std::int64_t R) {
  return (kDot<DT> || (N == 8 && !kWidened<DT>)) && R <= RB;
}

// A tile as one span: the 64-byte lines from the one holding `first` to the end of n rows, when
// the rows follow one another and hold just the item's heads (a cache row of every head, or one
// head's rows in [B, H, S, D]); 0 otherwise.
std::size_t span_lines(const std::uint8_t* first, const std::int64_t* rows, std::int64_t n, std::int64_t heads,
                       std::size_t row_bytes, std::size_t hs, std::size_t hb) {
  if (n <= 0 || std::size_t(heads) * hb != row_bytes || (heads > 1 && hs != hb)) return 0;
  for (std::int64_t t = 1; t < n; ++t)
    if (rows[t] != rows[0] + t) return 0;
  return (reinterpret_cast<std::uintptr_t>(first) % 64 + std::size_t(n) * row_bytes + 63) / 64;
}

// Asks for lines [from, to) of the span starting at the line of `first`, into L2.
inline void prefetch_lines(const std::uint8_t* first, std::size_t from, std::size_t to) {
  const std::uint8_t* line = first - reinterpret_cast<std::uintptr_t>(first) % 64;
  for (std::size_t l = from; l < to; ++l) __builtin_prefetch(line + l * 64, 0, 2);
}

// Asks for bytes [0, n) of row, a 64-byte line at a time, four lines per loop step: the L1 prefetch
// loops had cost more instructions than the prefetches themselves (one Zen 4 thread, 32/8 in L2:
// 3 % of a step). Not for the next tile's L2 prefetches, which must stay spread out (run_chunk).
template <int Locality>
void prefetch_bytes(const std::uint8_t* row, std::size_t n) {
  std::size_t b = 0;
  for (; b + 256 <= n; b += 256) {
    __builtin_prefetch(row + b, 0, Locality);
    __builtin_prefetch(row + b + 64, 0, Locality);
    __builtin_prefetch(row + b + 128, 0, Locality);
    __builtin_prefetch(row + b + 192, 0, Locality);
  }
  for (; b < n; b += 64) __builtin_prefetch(row + b, 0, Locality);
}

void copy_bytes(std::uint8_t* dst, const std::uint8_t* src, std::size_t n) {
  std::size_t i = 0;
  for (; i + sizeof(Vec::T) <= n; i += sizeof(Vec::T))
    Vec::store(reinterpret_cast<float*>(dst + i), Vec::load(reinterpret_cast<const float*>(src + i)));
  for (; i < n; ++i) dst[i] = src[i];
}

// Memory order. An item covers every KV head of its tokens, and reads each cache row [Hkv·D]
// front to back: scores go 4 keys at a time through all heads, and V rows are copied, in row
// order, into [head][token] staging for P·V. Walking one head across the tile's rows instead
// strides by a whole row and runs at half the read bandwidth (measured: 15 vs 27 GB/s on two
// Zen 3 cores for 8 KV heads), because the prefetchers lose track of that many streams.
// PyTorch's [B, H, S, D] keeps each head's tokens together instead, so there an item is one head
// (DecodeItem): all heads per item read 2·hkv streams at once, and 32/32 heads f32 (Zen 3, batch
// 8, context 4096, side by side) took 86 ms against 57 with one head per item, as in BSHD. Items of
// one head read V in place (essay). Fewer heads per item in a cache, so that a tile of 32/32 f32
// (1 MB of K and V) would fit L2, was no faster (Zen 3, 2 threads, budgets of 64-256 KB).
template <int DT>
void run_chunk(const DecodeParams& p, const DecodeItem& it, float* scratch) {
  // The item's KV heads [g0, g0 + H) are its heads 0 .. H - 1 below (rows g·R ..).
  const std::int64_t G = p.hq / p.hkv, R = G * p.nq, d = p.d, H = it.g1 - it.g0, HR = H * R, ld = decode_ld(d);
  // Layout as stage_offset (decode.h) counts it.
  Scratch all;
  all.ld = ld;
  all.q = scratch;
  all.qb = reinterpret_cast<std::uint16_t*>(all.q + HR * ld);
  all.s = all.q + HR * ld + HR * ld / 2;
  all.pb = reinterpret_cast<std::uint32_t*>(all.s + HR * T);
  all.o = all.s + HR * T + HR * T / 2;
  all.m = all.o + HR * ld;
  all.l = all.m + HR;
  all.alpha = all.l + HR;
  std::int64_t* rel = reinterpret_cast<std::int64_t*>(all.alpha + HR + (HR & 1));  // [HR]
  all.qscale = reinterpret_cast<float*>(rel + HR);
  all.pscale = all.qscale + HR;
  std::uint8_t* stage_v = reinterpret_cast<std::uint8_t*>(scratch + stage_offset(p));
  // Row r of group g = i·G + j: query token i, head g·G + j. Token i sees keys [0, L − nq + i].
  const std::int64_t L = p.seqlens[it.b];
  for (std::int64_t g = 0; g < H; ++g)
    for (std::int64_t i = 0; i < p.nq; ++i)
      for (std::int64_t j = 0; j < G; ++j) {
        const std::int64_t r = g * R + i * G + j;
        const float* q = p.q + ((it.b * p.nq + i) * p.hq + (it.g0 + g) * G + j) * d;
#if defined(__AVX512BF16__) || defined(MHA_DECODE_MADD)
        if constexpr (kIntQ<DT>)
          quantize_row_i16(q, d, ld, all.qb + r * ld, all.qscale + r);
        else
#endif
#if defined(__AVX512BF16__)
            if constexpr (kDot<DT>)
          round_row_bf16(q, d, ld, all.qb + r * ld);
        else
#endif
          permute_row<DT>(q, all.q + r * ld, d, true);
        all.m[r] = kNegInf;
        all.l[r] = 0;
      }
  std::fill(all.o, all.o + HR * ld, 0.f);
  // Groups of 16 rows or more: rows as lanes (score_rows), Qᵀ pairs in the f32 q rows' place.
  [[maybe_unused]] const bool lanes = kDot<DT> && R % 16 == 0;
  // Set on every ISA, though only AVX-512 BF16 reads it: the per-head offsets below are taken
  // from it, and an unset pointer plus an offset is undefined (UBSan, on AVX2 hosts).
  all.qp = reinterpret_cast<std::uint16_t*>(all.q);
#if defined(__AVX512BF16__)
  auto* qt = reinterpret_cast<std::uint32_t*>(all.q);
  if (lanes)
    for (std::int64_t g = 0; g < H; ++g) pack_rows_q(all.qb + g * R * ld, R, ld, qt + g * R * ld / 2);
  else if (kDot<DT> && R >= 4)
    for (std::int64_t g = 0; g < H; ++g) pack_row_pairs(all.qb + g * R * ld, R, ld, all.qp + g * R * ld);
#endif

  const std::int32_t* table = p.tables + std::int64_t(p.seqs[it.b]) * p.blocks_per_seq;
  // A token's row of heads starts token_stride elements after the previous token's; head g of it
  // g·head_stride elements in (a cache: hkv·d and d; PyTorch's [B, H, S, D]: d and S·d). hb: one
  // head's d elements, as staged.
  const std::size_t row_bytes = std::size_t(p.token_stride) * elem_bytes(DT),
                    hs = std::size_t(p.head_stride) * elem_bytes(DT), hb = std::size_t(d) * elem_bytes(DT);
  const std::uint8_t *kbase[T], *vbase[T];
  const void* vrow[T];
  std::int64_t rows[T];
  float* kscale = scratch + stage_offset(p) + T * p.hkv * ld;  // [Hkv][T], after the V staging
  float* vscale = kscale + p.hkv * T;
#if defined(__AVX512BF16__)
  // softmax_lanes' scores [T][HRp], P pairs [T/2][HRp] and int8 scales [T][ldsc] (decode.h).
  const std::int64_t HRp = (HR + 15) / 16 * 16, ldsc = p.hkv + 16;
  float* stl = vscale + p.hkv * T;
  auto* pbl = reinterpret_cast<std::uint32_t*>(stl + T * HRp);
  float* kscale_t = stl + T * HRp + T / 2 * HRp;
  float* vscale_t = kscale_t + T * ldsc;
#endif
  // Non-f32 V rows read by more than one row block are staged as f32 (widen_row), else as they are.
  const bool widen_v = kWidened<DT> && R > RB, span = span_prefetch<DT>(R);
  const std::uint8_t *knext[T], *vnext[T];
  std::int64_t next_rows[T];
  for (std::int64_t t0 = it.t0; t0 < it.t1; t0 += T) {
    const std::int64_t nt = std::min(T, it.t1 - t0);
    token_rows(p, table, t0, nt, row_bytes, it.g0 * hs, kbase, vbase, rows);
    std::int64_t nt_next = std::min(T, it.t1 - t0 - T), h_next = H;
    if (nt_next > 0) {
      token_rows(p, table, t0 + T, nt_next, row_bytes, it.g0 * hs, knext, vnext, next_rows);
    } else if (it.next != nullptr) {  // the next item's first tile
      const DecodeItem& n = *it.next;
      nt_next = std::min(T, n.t1 - n.t0);
      h_next = std::min(H, n.g1 - n.g0);
      token_rows(p, p.tables + std::int64_t(p.seqs[n.b]) * p.blocks_per_seq, n.t0, nt_next, row_bytes, n.g0 * hs,
                 knext, vnext, next_rows);
    } else {
      nt_next = 0;
    }
    // The next tile's K lines spread over this tile's score units (4 keys × head), its V lines over
    // the heads' P·V; else head by head with the scores (below).
    const std::size_t klines =
                          span && nt_next > 0 ? span_lines(knext[0], next_rows, nt_next, h_next, row_bytes, hs, hb) : 0,
                      vlines = klines > 0 ? span_lines(vnext[0], next_rows, nt_next, h_next, row_bytes, hs, hb) : 0,
                      kper = (klines + (nt + 3) / 4 * H - 1) / ((nt + 3) / 4 * H), vper = (vlines + H - 1) / H;
#if defined(__AVX512BF16__)
    if constexpr (kIntDot<DT>) {  // softmax_lanes' [T][ldsc] scales: a row's heads are side by side
      for (std::int64_t t = 0; t < T; ++t)
        for (std::int64_t g = 0; g < H; ++g) {
          kscale_t[t * ldsc + g] = t >= nt ? 0.f : p.k_scale[rows[t] * p.hkv + it.g0 + g];
          vscale_t[t * ldsc + g] = t >= nt ? 0.f : p.v_scale[rows[t] * p.hkv + it.g0 + g];
        }
    }
    if constexpr (!kDot<DT>)  // softmax_tile's [H][T] scales (kDot needs none for bf16)
#endif
      if constexpr (DT == kI8)
        for (std::int64_t g = 0; g < H; ++g)
          for (std::int64_t t = 0; t < T; ++t) {
            kscale[g * T + t] = t >= nt ? 0.f : p.k_scale[rows[t] * p.hkv + it.g0 + g];
            vscale[g * T + t] = t >= nt ? 0.f : p.v_scale[rows[t] * p.hkv + it.g0 + g];
          }
    for (std::int64_t g = 0, r = 0; g < H; ++g)  // row g·R + i·G + j sees L − nq + i + 1 keys
      for (std::int64_t i = 0; i < p.nq; ++i)
        for (std::int64_t j = 0; j < G; ++j, ++r) rel[r] = L - p.nq + i + 1 - t0;
    for (std::int64_t t = 0; t < nt; t += 4) {
      for (std::int64_t g = 0; g < H; ++g) {
        // Head g of the same 4 rows of the next tile, into L2, a tile's math ahead of their use
        // (essay); spread over the heads so that a few misses are asked for at a time. Issued four
        // lines per loop step (prefetch_bytes), 32/8 bf16 steps took 25-35 % longer, and asking for
        // every other line (the adjacent-line prefetcher left to fetch the rest) 30 % longer.
        if (klines > 0) {
          const std::size_t u = std::size_t(t / 4 * H + g);
          prefetch_lines(knext[0], u * kper, std::min((u + 1) * kper, klines));
        } else {
          for (std::int64_t i = t; i < (g < h_next ? std::min(t + 4, nt_next) : 0); ++i)
            for (std::size_t b = g * hs; b < g * hs + hb; b += 64) {
              __builtin_prefetch(knext[i] + b, 0, 2);
              if constexpr (kPrefetchNextV) __builtin_prefetch(vnext[i] + b, 0, 2);
            }
        }
        for (std::int64_t i = t + 4; i < std::min(t + 8, nt); ++i) prefetch_bytes<3>(kbase[i] + g * hs, hb);
        Scratch w = all;
        w.q = all.q + g * R * ld;
        w.qb = all.qb + g * R * ld;
        w.qp = all.qp + g * R * ld;
        w.s = all.s + g * R * T;
        const void* k[8];  // this step's 4 keys, and for one row (below) the next step's 4
        for (int i = 0; i < 8; ++i) k[i] = kbase[std::min(t + i, nt - 1)] + std::size_t(g) * hs;
#if defined(__AVX512BF16__)
        alignas(64) std::int16_t kw[4][decode_ld(kMaxHeadDim)];
        if (kIntDot<DT> && R > SRB)  // int8 keys widened once for all row blocks
          for (int i = 0; i < 4; ++i) {
            for (std::int64_t e = 0; e < ld; e += 32) _mm512_store_si512(kw[i] + e, load_i8_chunk(k[i], e, d));
            k[i] = kw[i];
          }
        if (lanes) {
          constexpr int KT = kIntDot<DT> ? kI16 : kBf16;
          const std::uint32_t* q = qt + g * R * ld / 2;
          std::int64_t rv = 0;
          for (; rv + 2 <= R / 16; rv += 2) score_rows<KT, 2>(q, R, d, k, stl + g * R, HRp, t, rv);
          if (rv < R / 16) score_rows<KT, 1>(q, R, d, k, stl + g * R, HRp, t, rv);
          continue;
        }
        if (kIntDot<DT> && R > SRB) {
          for_row_blocks<SRB>(
              R, [&](std::int64_t r0, auto rb) { score_quad_dot<kI16, decltype(rb)::value>(w, d, r0, k, t); });
          continue;
        }
#endif
#if defined(MHA_DECODE_MADD)
        if constexpr (kMadd<DT>) {
          if (R >= 4 * SRB) {  // int8 keys widened to int16 once for all row blocks (decode_madd.h)
            alignas(32) std::int16_t kw[4][decode_ld(kMaxHeadDim)];
            const void* kk[4];
            for (int i = 0; i < 4; ++i) {
              widen_row_i16(k[i], d, ld, kw[i]);
              kk[i] = kw[i];
            }
            score_step<kI16>(w, R, d, kk, t);
          } else {
            score_step<kI8>(w, R, d, k, t);
          }
          continue;
        }
#endif
        if constexpr (kWidened<DT>)
          if (R >= 4 * SRB) {  // f16 and int8 keys widened once for all row blocks (essay)
            alignas(64) float kf[4][decode_ld(kMaxHeadDim)];
            const void* kk[4];
            for (int i = 0; i < 4; ++i) {
              widen_row<DT>(k[i], d, kf[i]);
              kk[i] = kf[i];
            }
            score_step<kF32>(w, R, d, kk, t);
            continue;
          }
        if (!kDot<DT> && R == 1) {  // one row: 8 keys at a time (score_quad), on every other step
          if (t % 8 == 0) score_quad<DT, 1, 8>(w, d, 0, k, t);
          continue;
        }
#if defined(__AVX512BF16__)
        if constexpr (kDot<DT>) {
          for_row_blocks<SRB>(
              R, [&](std::int64_t r0, auto rb) { score_quad_dot<DT, decltype(rb)::value>(w, d, r0, k, t); });
          continue;
        }
#endif
        score_step<DT>(w, R, d, k, t);
      }
    }
#if defined(__AVX512BF16__)
    if constexpr (kDot<DT>) {  // V as key pairs, [head][pair][ld·2], for groups of more than RB rows
      auto* stage = reinterpret_cast<std::uint16_t*>(stage_v);
      if (R > RB)
      for (std::int64_t t = 0; t < nt; t += 2)
        for (std::int64_t g = 0; g < H; ++g) {
          for (std::int64_t i = t + 2; i < std::min(t + 4, nt); ++i)  // the next pair's rows, into L1
            prefetch_bytes<3>(vbase[i] + g * hs, hb);
          stage_pair<DT>(vbase[t] + g * hs, t + 1 < nt ? vbase[t + 1] + g * hs : nullptr, d, ld,
                         stage + (g * (T / 2) + t / 2) * ld * 2);
        }
    } else
#endif
#if defined(MHA_DECODE_MADD)
        if constexpr (kMadd<DT>) {  // V as int8 key pairs, [head][pair][ld·2] (span groups: in place)
      auto* stage = reinterpret_cast<std::int8_t*>(stage_v);
      if (!span)
        for (std::int64_t t = 0; t < nt; t += 2)
          for (std::int64_t g = 0; g < H; ++g)
            stage_pair_i8(vbase[t] + g * hs, t + 1 < nt ? vbase[t + 1] + g * hs : nullptr, d,
                          stage + (g * (T / 2) + t / 2) * ld * 2);
    } else
#endif
    if (widen_v || (H > 1 && !span)) {  // span groups read V in place (essay)
      for (std::int64_t t = 0; t < nt; ++t)
        for (std::int64_t g = 0; g < H; ++g) {
          if (widen_v)  // f32 [head][token] rows ld apart, converted once for all row blocks
            widen_row<DT>(vbase[t] + g * hs, d, reinterpret_cast<float*>(stage_v) + (g * T + t) * ld);
          else
            copy_bytes(stage_v + std::size_t(g * T + t) * hb, vbase[t] + g * hs, hb);
        }
    }
#if defined(__AVX512BF16__)
    if constexpr (kDot<DT>) {  // every row of the item as a lane (softmax_lanes)
      if (!lanes)
        for (std::int64_t r0 = 0; r0 < HR; r0 += 16)
          transpose_scores(all.s + r0 * T, std::min<std::int64_t>(16, HR - r0), stl + r0, HRp);
      softmax_lanes<DT>(all, HR, R, stl, HRp, nt, kscale_t, vscale_t, ldsc, p.scale, rel,
                        kIntDot<DT> ? all.qscale : nullptr, pbl);
    } else
#endif
    {
      softmax_tile(all, HR, R, nt, DT == kI8 ? kscale : nullptr, DT == kI8 ? vscale : nullptr, p.scale, rel,
                   kIntQ<DT> ? all.qscale : nullptr);
#if defined(MHA_DECODE_MADD)
      if constexpr (kIntQ<DT>) pack_probabilities_i16(all, HR);
#endif
    }
    for (std::int64_t g = 0; g < H; ++g) {
      // This head's share of the next tile's V span, asked for inside its P·V (span implies R ≤ RB):
      // in one burst before it, 32/8 bf16 steps were 8-12 % slower.
      SpreadPrefetch pf;
      if (vlines > 0) {
        const std::size_t from = std::min(std::size_t(g) * vper, vlines), to = std::min(from + vper, vlines);
        pf = {vnext[0] - reinterpret_cast<std::uintptr_t>(vnext[0]) % 64 + from * 64, to - from};
        if (kDot<DT>) pf.spread_over(std::size_t(ld / 32 * ((nt + 1) / 2)));  // pv_dot_rows' steps
      }
      Scratch w = all;
      w.s = all.s + g * R * T;
      w.pb = all.pb + g * R * (T / 2);
      w.o = all.o + g * R * ld;
      w.alpha = all.alpha + g * R;
      w.pscale = all.pscale + g * R;
#if defined(__AVX512BF16__)
      if (kDot<DT>) {  // P as [pair][row]
        w.pb = pbl + g * R;
        w.pb_row_stride = 1;
        w.pb_pair_stride = HRp;
      }
#endif
#if defined(__AVX512BF16__)
      if constexpr (kDot<DT>) {
        if (R <= RB) {
          pair_rows(vbase, std::size_t(g) * hs, nt, vrow);
          for_row_blocks<RB>(
              R, [&](std::int64_t r0, auto rb) {
                pv_dot_rows<DT, decltype(rb)::value>(w, d, r0, vrow, (nt + 1) / 2, r0 == 0 ? pf : SpreadPrefetch{});
              });
          continue;
        }
        const auto* stage = reinterpret_cast<const std::uint16_t*>(stage_v) + g * (T / 2) * ld * 2;
        for_row_blocks<RB>(
            R, [&](std::int64_t r0, auto rb) { pv_dot<DT, decltype(rb)::value>(w, r0, stage, (nt + 1) / 2); });
        continue;
      }
#endif
#if defined(MHA_DECODE_MADD)
      if constexpr (kMadd<DT>) {
        if (span) {
          pair_rows(vbase, std::size_t(g) * hs, nt, vrow);
          for_row_blocks<RB>(R, [&](std::int64_t r0, auto rb) {
            pv_madd<decltype(rb)::value, true>(w, d, r0, nullptr, vrow, (nt + 1) / 2,
                                               r0 == 0 ? pf : SpreadPrefetch{});
          });
          continue;
        }
        const auto* stage = reinterpret_cast<const std::int8_t*>(stage_v) + g * (T / 2) * ld * 2;
        for_row_blocks<RB>(R, [&](std::int64_t r0, auto rb) {
          pv_madd<decltype(rb)::value>(w, d, r0, stage, nullptr, (nt + 1) / 2,
                                       r0 == 0 ? pf : SpreadPrefetch{});
        });
        continue;
      }
#endif
      if (widen_v) {
        for (std::int64_t t = 0; t < nt; ++t) vrow[t] = reinterpret_cast<float*>(stage_v) + (g * T + t) * ld;
        for_row_blocks<RB>(
            R, [&](std::int64_t r0, auto rb) { pv_block<kF32, decltype(rb)::value>(w, d, r0, vrow, nt); });
        continue;
      }
      for (std::int64_t t = 0; t < nt; ++t)
        vrow[t] = H > 1 && !span ? stage_v + std::size_t(g * T + t) * hb : vbase[t] + std::size_t(g) * hs;
      for_row_blocks<RB>(R, [&](std::int64_t r0, auto rb) {
        pv_block<DT, decltype(rb)::value>(w, d, r0, vrow, nt, r0 == 0 ? pf : SpreadPrefetch{});
      });
    }
  }
  for (std::int64_t r = 0; r < HR; ++r) {
    float* out = it.partial + r * (d + 2);
    out[0] = all.m[r];
    out[1] = all.l[r];
#if defined(__AVX512BF16__)
    if constexpr (kDot<DT>) {
      unpermute_row(all.o + r * ld, d, out + 2);
      continue;
    }
#endif
    permute_row<DT>(all.o + r * ld, out + 2, d, false);
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
