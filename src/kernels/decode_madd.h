// int8 caches on AVX2: integer dots with vpmaddwd, a fragment included inside decode_impl.h's
// namespace when it is compiled for AVX2 without AVX-512 (it uses Scratch, T, kI8 and kI16).
//
// Widening int8 to f32 costs two instructions per 8 elements and then one FMA per 8 products;
// vpmaddwd multiplies 16 int16 pairs and adds each pair into an int32 lane, and Zen 3 retires two
// per cycle (measured: 0.157 ns each in independent chains, as many as FMAs), so one instruction
// (plus a vpaddd on any of the four vector pipes) does the work of two FMAs. K rows widen to int16
// with one vpmovsxbw per 16 elements: in place, or once per tile into a buffer when a group has
// 4·SRB rows or more (a 32/8 group's 2 row blocks ran 10 % slower with the buffer's stores). q is
// quantized to int16 per row (scale max |q| / 32767), P to int16 per row and tile (scale max P /
// 32767), and V is staged as interleaved int8 pairs (v[t][c], v[t+1][c]), no larger than the rows
// themselves (int16 pairs doubled the staging and cost 7 % from memory), widened as P·V reads them,
// so each vpmaddwd adds two keys into 8 outputs. The sums are exact in int32 (a score is at most
// 256 · 32767 · 128 < 2^31 in magnitude, a tile of O at most 32 · 32767 · 128 per lane) and the
// scales apply once per score and per tile of O, as in the AVX-512 BF16 kernel's vpdpwssd path,
// whose error bound this shares: both quantizations err less than bf16 rounding, so the naive bf16
// path is the yardstick.
// Side by side on Zen 3 (2 threads, context 4096 unless said, minimum of 3, against the f32
// widening it replaces): 32/8 batch 1 1129 -> 783 µs, batch 8 6855 -> 5863, context 32768 batch 1
// 6503 -> 5669, batch 8 54068 -> 44458; 32/1 batch 8 4921 -> 3633; 32/32 batch 1 2044 -> 1603. Each
// is now under the bf16 cache's time on the same rows (1163, 7230, 7337, 46362, 4643, 2800).
// On Zen 1 a 256-bit vpmaddwd takes 2 cycles (measured), so int8 dots at the FMA's rate per
// multiply-add and its edge is the bytes it does not read. There groups of 4 rows or more score 4
// rows × 2 keys per block (each K chunk widened once, not twice) and groups of at most 4 rows
// interleave V pairs from the rows in place instead of staging them, as the f32 path does (essay
// of decode_impl.h): one Zen 1 thread, context 4096, 32/8, medians side by side, 3430 -> 3350 ->
// 3200 µs; 2 threads 1720 -> 1620, where bf16 takes 1650.
//
// Nothing past a row's d elements is read (the tail chunk is copied into a zeroed buffer), and the
// lanes past d are zero in q, the staged V and therefore in O.

// 16 int8 elements of row from e on, zero past d.
inline __m128i load_i8x16(const void* row, std::int64_t e, std::int64_t d) {
  const auto* p = static_cast<const std::int8_t*>(row) + e;
  if (d - e >= 16) return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  alignas(16) std::int8_t tail[16] = {};
  if (d > e) std::memcpy(tail, p, std::size_t(d - e));
  return _mm_load_si128(reinterpret_cast<const __m128i*>(tail));
}

// The int16 chunk a score step dots: int8 rows widened here, kI16 rows (widened once per tile,
// zero padded) as they are.
template <int DT>
__m256i load_i16x16(const void* row, std::int64_t e, std::int64_t d) {
  if constexpr (DT == kI16)
    return _mm256_load_si256(reinterpret_cast<const __m256i*>(static_cast<const std::int16_t*>(row) + e));
  return _mm256_cvtepi8_epi16(load_i8x16(row, e, d));
}

// Elements [0, dq) of the int16 chunks: d rounded up to 16 (q, K and V are zero past d).
inline std::int64_t madd_width(std::int64_t d) { return (d + 15) / 16 * 16; }

inline __m256i madd_add(__m256i acc, __m256i a, __m256i b) {
  return _mm256_add_epi32(acc, _mm256_madd_epi16(a, b));
}

// out[0..4) = the sums of the int32 lanes of a, b, c, d (exact), as floats.
inline void hsum4_i32(__m256i a, __m256i b, __m256i c, __m256i d, float* out) {
  const __m256i ab = _mm256_add_epi32(_mm256_unpacklo_epi32(a, b), _mm256_unpackhi_epi32(a, b));
  const __m256i cd = _mm256_add_epi32(_mm256_unpacklo_epi32(c, d), _mm256_unpackhi_epi32(c, d));
  const __m256i x = _mm256_add_epi32(_mm256_unpacklo_epi64(ab, cd), _mm256_unpackhi_epi64(ab, cd));
  const __m128i y = _mm_add_epi32(_mm256_castsi256_si128(x), _mm256_extracti128_si256(x, 1));
  _mm_storeu_ps(out, _mm_cvtepi32_ps(y));
}

// 16 int16 in natural order from two vectors of 8 int32 (saturating; callers stay in range).
inline __m256i pack_i32x16(__m256i a, __m256i b) {
  return _mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), 0xd8);  // packs interleaves 128-bit lanes
}

inline float hmax(__m256 x) {
  __m128 h = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  h = _mm_max_ps(h, _mm_movehl_ps(h, h));
  return _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
}

// q as int16 on a per-row scale (max |q| / 32767; round to nearest even, MXCSR's default), zero
// from d to ld. A row with a non-finite element gets a NaN scale: its scores are NaN and the row
// is poisoned, as with f32 q.
inline void quantize_row_i16(const float* q, std::int64_t d, std::int64_t ld, std::uint16_t* dst,
                             float* scale) {
  const __m256 sign = _mm256_set1_ps(-0.f), zero = _mm256_setzero_ps();
  __m256 mx = zero, bad = zero;  // bad: NaN once an element is not finite
  std::int64_t e = 0;
  for (; e + 8 <= d; e += 8) {
    const __m256 x = _mm256_loadu_ps(q + e);
    mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, x));
    bad = _mm256_fmadd_ps(x, zero, bad);
  }
  float m = hmax(mx);
  bool finite = !__builtin_isnan(Vec::hsum(bad));
  for (; e < d; ++e) {
    m = std::max(m, std::fabs(q[e]));
    finite = finite && std::isfinite(q[e]);
  }
  const float inv = finite && m > 0.f ? 32767.f / m : 0.f;
  const __m256 vinv = _mm256_set1_ps(inv);
  for (e = 0; e + 16 <= d; e += 16) {
    const __m256i a = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(q + e), vinv));
    const __m256i b = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(q + e + 8), vinv));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + e), pack_i32x16(a, b));
  }
  for (; e < ld; ++e) dst[e] = e < d ? std::uint16_t(std::int16_t(std::nearbyint(q[e] * inv))) : 0;
  *scale = !finite ? __builtin_nanf("") : m > 0.f ? m / 32767.f : 0.f;
}

// A row of d int8 as ld int16, zero past d: K rows read by more than one row block.
inline void widen_row_i16(const void* row, std::int64_t d, std::int64_t ld, std::int16_t* dst) {
  for (std::int64_t e = 0; e < ld; e += 16)
    _mm256_store_si256(reinterpret_cast<__m256i*>(dst + e), _mm256_cvtepi8_epi16(load_i8x16(row, e, d)));
}

// Scores of rows [r0, r0 + rb) against keys t .. t + 3 (rows k[0..4), int8 or kI16), in units of
// qscale · kscale (softmax_tile applies both): 4·rb int32 accumulators, 4 key chunks, one q chunk.
template <int DT, int rb>
void score_quad_madd(const Scratch& w, std::int64_t d, std::int64_t r0, const void* const* k,
                     std::int64_t t) {
  const std::int64_t ld = w.ld, dq = madd_width(d);
  __m256i acc[rb][4];
#pragma GCC unroll 4
  for (int r = 0; r < rb; ++r)
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) acc[r][i] = _mm256_setzero_si256();
  for (std::int64_t e = 0; e < dq; e += 16) {
    __m256i kv[4];
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) kv[i] = load_i16x16<DT>(k[i], e, d);
#pragma GCC unroll 4
    for (int r = 0; r < rb; ++r) {
      const __m256i qv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.qb + (r0 + r) * ld + e));
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i) acc[r][i] = madd_add(acc[r][i], qv, kv[i]);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < rb; ++r) hsum4_i32(acc[r][0], acc[r][1], acc[r][2], acc[r][3], w.s + (r0 + r) * T + t);
}

// score_quad_madd's sums for 4 rows [r0, r0 + 4) against 2 keys t, t + 1, as score_rows4_keys2 does
// in f32: each K chunk is widened once for 4 rows, where two blocks of 2 rows × 4 keys widened it
// twice (vpmovsxbw takes 2 cycles on Zen 1, as long as a vpmaddwd). Sums in int32 are exact, so
// the scores are those of score_quad_madd.
template <int DT>
void score_madd_rows4_keys2(const Scratch& w, std::int64_t d, std::int64_t r0, const void* const* k,
                            std::int64_t t) {
  const std::int64_t ld = w.ld, dq = madd_width(d);
  const std::uint16_t* q = w.qb + r0 * ld;
  __m256i acc[4][2];
#pragma GCC unroll 4
  for (int r = 0; r < 4; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
  for (std::int64_t e = 0; e < dq; e += 16) {
    const __m256i k0 = load_i16x16<DT>(k[0], e, d), k1 = load_i16x16<DT>(k[1], e, d);
#pragma GCC unroll 4
    for (int r = 0; r < 4; ++r) {
      const __m256i qv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + r * ld + e));
      acc[r][0] = madd_add(acc[r][0], qv, k0);
      acc[r][1] = madd_add(acc[r][1], qv, k1);
    }
  }
#pragma GCC unroll 2
  for (int r = 0; r < 4; r += 2) {
    alignas(16) float x[4];  // rows r and r + 1, keys t and t + 1
    hsum4_i32(acc[r][0], acc[r][1], acc[r + 1][0], acc[r + 1][1], x);
    std::memcpy(w.s + (r0 + r) * T + t, x, 2 * sizeof(float));
    std::memcpy(w.s + (r0 + r + 1) * T + t, x + 2, 2 * sizeof(float));
  }
}

// Each row's P (≥ 0, times the V scale) as int16 pairs [R][T/2] on a per-row scale, pscale =
// max P / 32767 (0 when the row has no mass): an error of at most max P / 65534 per key.
inline void pack_probabilities_i16(const Scratch& w, std::int64_t rows) {
  static_assert(T == 32);
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* s = w.s + r * T;
    __m256 x[4];
    for (int i = 0; i < 4; ++i) x[i] = _mm256_loadu_ps(s + 8 * i);
    const float mx = hmax(_mm256_max_ps(_mm256_max_ps(x[0], x[1]), _mm256_max_ps(x[2], x[3])));
    const __m256 inv = _mm256_set1_ps(mx > 0.f ? 32767.f / mx : 0.f);
    __m256i p[4];
    for (int i = 0; i < 4; ++i) p[i] = _mm256_cvtps_epi32(_mm256_mul_ps(x[i], inv));
    auto* dst = reinterpret_cast<__m256i*>(w.pb + r * (T / 2));  // (p[2j], p[2j+1]) is dword j
    _mm256_storeu_si256(dst, pack_i32x16(p[0], p[1]));
    _mm256_storeu_si256(dst + 1, pack_i32x16(p[2], p[3]));
    w.pscale[r] = mx > 0.f ? mx / 32767.f : 0.f;
  }
}

// Stages V rows a, b of one head (b = nullptr past the tile: zeros) as int8 pairs: per 16
// columns c, 32 bytes (a[c], b[c]) in column order, which pv_madd widens to int16 as it reads.
// Columns e .. e + 15 of int8 rows a, b (b = nullptr: zeros) as pairs (a[c], b[c]): lo holds
// columns e .. e + 7, hi the rest.
inline void pair_i8x16(const void* a, const void* b, std::int64_t e, std::int64_t d, __m128i& lo,
                       __m128i& hi) {
  const __m128i x = load_i8x16(a, e, d), y = b != nullptr ? load_i8x16(b, e, d) : _mm_setzero_si128();
  lo = _mm_unpacklo_epi8(x, y);
  hi = _mm_unpackhi_epi8(x, y);
}

inline void stage_pair_i8(const void* a, const void* b, std::int64_t d, std::int8_t* dst) {
  for (std::int64_t e = 0; e < madd_width(d); e += 16) {
    __m128i lo, hi;
    pair_i8x16(a, b, e, d, lo, hi);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 2 * e), lo);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 2 * e + 16), hi);
  }
}

// O[r] = O[r]·alpha[r] + pscale[r] · Σ_pairs (p pair)·(v pair) for rows [r0, r0 + rb), over `pairs`
// key pairs: staged (stage_pair_i8, ld·2 bytes apart), or with kRows the V rows themselves
// (vrow[2·tp], vrow[2·tp + 1]; a zero row past an odd tile), interleaved here as stage_pair_i8
// would (groups of at most RB rows, whose one row block reads each pair once: staging them only
// moved the bytes, and waited on their loads). 2·rb int32 accumulators per 16 columns.
// pf: the next tile's V lines, spread over the (column chunk, pair) steps.
template <int rb, bool kRows = false>
void pv_madd(const Scratch& w, std::int64_t d, std::int64_t r0, const std::int8_t* stage,
             const void* const* vrow, std::int64_t pairs, SpreadPrefetch pf = {}) {
  const std::int64_t ld = w.ld, dq = madd_width(d);
  pf.spread_over(std::size_t(std::max<std::int64_t>(dq / 16 * pairs, 1)));
  for (std::int64_t e = 0; e < dq; e += 16) {
    __m256i lo[rb], hi[rb];
#pragma GCC unroll 4
    for (int r = 0; r < rb; ++r) lo[r] = hi[r] = _mm256_setzero_si256();
    for (std::int64_t tp = 0; tp < pairs; ++tp) {
      pf.step(std::size_t(e / 16 * pairs + tp));
      __m128i xlo, xhi;
      if constexpr (kRows) {
        pair_i8x16(vrow[2 * tp], vrow[2 * tp + 1], e, d, xlo, xhi);
      } else {
        const std::int8_t* vs = stage + (tp * ld + e) * 2;
        xlo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(vs));
        xhi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(vs + 16));
      }
      const __m256i vlo = _mm256_cvtepi8_epi16(xlo), vhi = _mm256_cvtepi8_epi16(xhi);
#pragma GCC unroll 4
      for (int r = 0; r < rb; ++r) {  // the pair's dword broadcast by a load (no shuffle)
        const __m256i pp = _mm256_castps_si256(
            _mm256_broadcast_ss(reinterpret_cast<const float*>(w.pb + (r0 + r) * (T / 2) + tp)));
        lo[r] = madd_add(lo[r], pp, vlo);
        hi[r] = madd_add(hi[r], pp, vhi);
      }
    }
#pragma GCC unroll 4
    for (int r = 0; r < rb; ++r) {
      float* o = w.o + (r0 + r) * ld + e;
      const __m256 a = _mm256_set1_ps(w.alpha[r0 + r]), ps = _mm256_set1_ps(w.pscale[r0 + r]);
      _mm256_storeu_ps(o,
                       _mm256_fmadd_ps(_mm256_cvtepi32_ps(lo[r]), ps, _mm256_mul_ps(_mm256_loadu_ps(o), a)));
      _mm256_storeu_ps(
          o + 8, _mm256_fmadd_ps(_mm256_cvtepi32_ps(hi[r]), ps, _mm256_mul_ps(_mm256_loadu_ps(o + 8), a)));
    }
  }
}
