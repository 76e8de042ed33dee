// A minimal vector type for the kernel body, chosen by the flags its translation unit is compiled
// with: AVX-512 (16 lanes), AVX2+FMA (8 lanes) or SSE2 (4 lanes, the x86-64 baseline). Everything
// has internal linkage (see attention_params.h).
#ifndef MHA_KERNEL_NS
#error "define MHA_KERNEL_NS before including simd.h"
#endif

#include <immintrin.h>

#include <cstdint>

// GCC 12 reports its own AVX-512 intrinsics (unpack, extract) as reading an uninitialized "__Y"
// when they inline into some kernels: a known false positive of the headers, not of this code.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include "runtime/dtype_convert.h"

namespace mha::detail::MHA_KERNEL_NS {
namespace {

#if defined(__AVX512F__)

struct Vec {
  using T = __m512;
  static constexpr int N = 16;
  static T zero() { return _mm512_setzero_ps(); }
  static T set1(float x) { return _mm512_set1_ps(x); }
  static T load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, T x) { _mm512_storeu_ps(p, x); }
  static T bcast(const float* p) { return _mm512_set1_ps(*p); }
  static T fmadd(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
  static T fnmadd(T a, T b, T c) { return _mm512_fnmadd_ps(a, b, c); }
  static T mul(T a, T b) { return _mm512_mul_ps(a, b); }
  static T div(T a, T b) { return _mm512_div_ps(a, b); }
  static T add(T a, T b) { return _mm512_add_ps(a, b); }
  static T sub(T a, T b) { return _mm512_sub_ps(a, b); }
  static T max(T a, T b) { return _mm512_max_ps(a, b); }
  static T min(T a, T b) { return _mm512_min_ps(a, b); }
  // x where lanes [lo, hi] (relative, clamped by the caller to [-1, N]) else `fill`.
  static T keep_lanes(T x, int lo, int hi, T fill) {
    const unsigned upto = hi >= N - 1 ? 0xffffu : (1u << (hi + 1)) - 1u;
    const unsigned from = lo <= 0 ? 0xffffu : ~((1u << lo) - 1u);
    return _mm512_mask_mov_ps(fill, __mmask16(upto & from), x);
  }
  // a == -inf ? 0 : a
  static T zero_if_neg_inf(T a) {
    const __mmask16 m = _mm512_cmp_ps_mask(a, set1(-__builtin_inff()), _CMP_EQ_OQ);
    return _mm512_mask_mov_ps(a, m, zero());
  }
  static T zero_if_less(T x, T limit, T y) {
    return _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(x, limit, _CMP_LT_OQ), zero());
  }
  static T two_pow(T n) {  // 2^n for integral n in [-126, 127]
    const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_castsi512_ps(e);
  }
  static T load_f16(const std::uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static T load_bf16(const std::uint16_t* p) {
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
  }
  static T load_i8(const std::int8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  // 2N bf16 in one load, widened by interleaving with zeros: a gets elements 8c..8c+3 and b
  // 8c+4..8c+7 of each 16-byte chunk c (bf16_pair_index below).
  static void load_bf16_pair(const std::uint16_t* p, T& a, T& b) {
    const __m512i x = _mm512_loadu_si512(p), z = _mm512_setzero_si512();
    a = _mm512_castsi512_ps(_mm512_unpacklo_epi16(z, x));
    b = _mm512_castsi512_ps(_mm512_unpackhi_epi16(z, x));
  }
  static float hsum(T x) { return _mm512_reduce_add_ps(x); }
  // out[0..4) = hsum(a), hsum(b), hsum(c), hsum(d): the four reductions share their shuffles
  // (13 instructions instead of 4 × 8).
  static void hsum4(T a, T b, T c, T d, float* out) {
    const T ab = add(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    const T cd = add(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
    const __m512d abd = _mm512_castps_pd(ab), cdd = _mm512_castps_pd(cd);
    const T x =
        add(_mm512_castpd_ps(_mm512_unpacklo_pd(abd, cdd)), _mm512_castpd_ps(_mm512_unpackhi_pd(abd, cdd)));
    const __m256 y = _mm256_add_ps(_mm512_castps512_ps256(x),
                                   _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1)));
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(y), _mm256_extractf128_ps(y, 1)));
  }
};

// Mask of the first n of 16 lanes (n clamped to [0, 16]): the tail of a row that ends mid-vector.
inline __mmask16 first_lanes(std::int64_t n) {
  return n >= 16 ? __mmask16(0xffff) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1u);
}

#elif defined(__AVX2__)

struct Vec {
  using T = __m256;
  static constexpr int N = 8;
  static T zero() { return _mm256_setzero_ps(); }
  static T set1(float x) { return _mm256_set1_ps(x); }
  static T load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, T x) { _mm256_storeu_ps(p, x); }
  static T bcast(const float* p) { return _mm256_broadcast_ss(p); }
  static T fmadd(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
  static T fnmadd(T a, T b, T c) { return _mm256_fnmadd_ps(a, b, c); }
  static T mul(T a, T b) { return _mm256_mul_ps(a, b); }
  static T div(T a, T b) { return _mm256_div_ps(a, b); }
  static T add(T a, T b) { return _mm256_add_ps(a, b); }
  static T sub(T a, T b) { return _mm256_sub_ps(a, b); }
  static T max(T a, T b) { return _mm256_max_ps(a, b); }
  static T min(T a, T b) { return _mm256_min_ps(a, b); }
  static T keep_lanes(T x, int lo, int hi, T fill) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i in = _mm256_andnot_si256(_mm256_or_si256(_mm256_cmpgt_epi32(_mm256_set1_epi32(lo), lane),
                                                           _mm256_cmpgt_epi32(lane, _mm256_set1_epi32(hi))),
                                           _mm256_set1_epi32(-1));
    return _mm256_blendv_ps(fill, x, _mm256_castsi256_ps(in));
  }
  static T zero_if_neg_inf(T a) {
    return _mm256_blendv_ps(a, zero(), _mm256_cmp_ps(a, set1(-__builtin_inff()), _CMP_EQ_OQ));
  }
  static T zero_if_less(T x, T limit, T y) {
    return _mm256_blendv_ps(y, zero(), _mm256_cmp_ps(x, limit, _CMP_LT_OQ));
  }
  static T two_pow(T n) {
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_castsi256_ps(e);
  }
  static T load_f16(const std::uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static T load_bf16(const std::uint16_t* p) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  }
  static T load_i8(const std::int8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  static void load_bf16_pair(const std::uint16_t* p, T& a, T& b) {  // see the AVX-512 version
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)), z = _mm256_setzero_si256();
    a = _mm256_castsi256_ps(_mm256_unpacklo_epi16(z, x));
    b = _mm256_castsi256_ps(_mm256_unpackhi_epi16(z, x));
  }
  static float hsum(T x) {
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
  }
  static void hsum4(T a, T b, T c, T d, float* out) {  // see the AVX-512 version
    const T ab = add(_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
    const T cd = add(_mm256_unpacklo_ps(c, d), _mm256_unpackhi_ps(c, d));
    const __m256d abd = _mm256_castps_pd(ab), cdd = _mm256_castps_pd(cd);
    const T x =
        add(_mm256_castpd_ps(_mm256_unpacklo_pd(abd, cdd)), _mm256_castpd_ps(_mm256_unpackhi_pd(abd, cdd)));
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1)));
  }
};

#else  // SSE2: every x86-64 CPU

struct Vec {
  using T = __m128;
  static constexpr int N = 4;
  static T zero() { return _mm_setzero_ps(); }
  static T set1(float x) { return _mm_set1_ps(x); }
  static T load(const float* p) { return _mm_loadu_ps(p); }
  static void store(float* p, T x) { _mm_storeu_ps(p, x); }
  static T bcast(const float* p) { return _mm_set1_ps(*p); }
  static T fmadd(T a, T b, T c) { return _mm_add_ps(_mm_mul_ps(a, b), c); }
  static T fnmadd(T a, T b, T c) { return _mm_sub_ps(c, _mm_mul_ps(a, b)); }
  static T mul(T a, T b) { return _mm_mul_ps(a, b); }
  static T div(T a, T b) { return _mm_div_ps(a, b); }
  static T add(T a, T b) { return _mm_add_ps(a, b); }
  static T sub(T a, T b) { return _mm_sub_ps(a, b); }
  static T max(T a, T b) { return _mm_max_ps(a, b); }
  static T min(T a, T b) { return _mm_min_ps(a, b); }
  static T select(__m128 mask, T yes, T no) {
    return _mm_or_ps(_mm_and_ps(mask, yes), _mm_andnot_ps(mask, no));
  }
  static T keep_lanes(T x, int lo, int hi, T fill) {
    const __m128i lane = _mm_setr_epi32(0, 1, 2, 3);
    const __m128i out =
        _mm_or_si128(_mm_cmpgt_epi32(_mm_set1_epi32(lo), lane), _mm_cmpgt_epi32(lane, _mm_set1_epi32(hi)));
    return select(_mm_castsi128_ps(out), fill, x);
  }
  static T zero_if_neg_inf(T a) { return select(_mm_cmpeq_ps(a, set1(-__builtin_inff())), zero(), a); }
  static T zero_if_less(T x, T limit, T y) { return select(_mm_cmplt_ps(x, limit), zero(), y); }
  static T two_pow(T n) {
    const __m128i e = _mm_slli_epi32(_mm_add_epi32(_mm_cvtps_epi32(n), _mm_set1_epi32(127)), 23);
    return _mm_castsi128_ps(e);
  }
  static T load_bf16(const std::uint16_t* p) {  // bf16 is the high half of an f32
    const __m128i w = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
    return _mm_castsi128_ps(_mm_unpacklo_epi16(_mm_setzero_si128(), w));
  }
  static void load_bf16_pair(const std::uint16_t* p, T& a, T& b) {  // in order: one 16-byte chunk
    const __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)), z = _mm_setzero_si128();
    a = _mm_castsi128_ps(_mm_unpacklo_epi16(z, x));
    b = _mm_castsi128_ps(_mm_unpackhi_epi16(z, x));
  }
  static T load_f16(const std::uint16_t* p) {  // no F16C in the baseline
    return _mm_setr_ps(f16_to_f32(p[0]), f16_to_f32(p[1]), f16_to_f32(p[2]), f16_to_f32(p[3]));
  }
  static T load_i8(const std::int8_t* p) {  // sign-extend 4 bytes without SSE4.1
    int bytes;
    __builtin_memcpy(&bytes, p, 4);
    __m128i w = _mm_cvtsi32_si128(bytes);
    w = _mm_unpacklo_epi8(w, w);
    w = _mm_srai_epi32(_mm_unpacklo_epi16(w, w), 24);
    return _mm_cvtepi32_ps(w);
  }
  static float hsum(T x) {
    const __m128 h = _mm_add_ps(x, _mm_movehl_ps(x, x));
    return _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps(h, h, 1)));
  }
  static void hsum4(T a, T b, T c, T d, float* out) {                // see the AVX-512 version
    const T ab = add(_mm_unpacklo_ps(a, b), _mm_unpackhi_ps(a, b));  // a0+a2 b0+b2 a1+a3 b1+b3
    const T cd = add(_mm_unpacklo_ps(c, d), _mm_unpackhi_ps(c, d));
    _mm_storeu_ps(out, add(_mm_movelh_ps(ab, cd), _mm_movehl_ps(cd, ab)));
  }
};

#endif

// x, rounded: the compiler may not fuse the operation that made x into the one that uses it
// (GCC contracts a * b - c into an FMA when the intrinsics are plain vector operators).
inline Vec::T rounded(Vec::T x) {
  __asm__("" : "+v"(x));
  return x;
}

// Which of 2N consecutive bf16 lands in lane i of load_bf16_pair's (a, b) (i < N: a, else b).
constexpr int bf16_pair_index(int i) {
  const int j = i % Vec::N;
  return j / 4 * 8 + (i < Vec::N ? 0 : 4) + j % 4;
}

// e^r for |r| <= ln2/2, as 2^(r·log2 e) by a degree-6 polynomial fitted to 2^t on |t| <= 1/2 for
// least relative error (1.9e-9, below f32's 6e-8; about 1 ulp in f32 arithmetic, as the degree-7
// Taylor polynomial it replaced, with one FMA less).
inline Vec::T exp_reduced(Vec::T r) {
  constexpr double k = 1.44269504088896341;
  constexpr double c1 = 0.6931472057374539 * k, c2 = 0.2402264689060621 * k * k,
                   c3 = 0.05550328776556443 * k * k * k, c4 = 0.009618488958655299 * k * k * k * k,
                   c5 = 0.0013399931385201004 * k * k * k * k * k,
                   c6 = 0.00015345811978810083 * k * k * k * k * k * k;
  Vec::T p = Vec::fmadd(Vec::set1(float(c6)), r, Vec::set1(float(c5)));
  p = Vec::fmadd(p, r, Vec::set1(float(c4)));
  p = Vec::fmadd(p, r, Vec::set1(float(c3)));
  p = Vec::fmadd(p, r, Vec::set1(float(c2)));
  p = Vec::fmadd(p, r, Vec::set1(float(c1)));
  return Vec::fmadd(p, r, Vec::set1(1.0f));
}

// exp(x): x = n·ln2 + r with |r| <= ln2/2 (ln2 split so n·ln2_hi is exact), e^r by exp_reduced,
// then times 2^n. At most 1.4 ulp (1.9 without FMA) over [-100, 80], measured. NaN in, NaN out:
// x86 max returns its second operand when either is NaN, so x goes second. AVX-512 scales by 2^n with vscalefps (n rounded by vrndscaleps), which
// handles the exponent's range itself: results below 2^-126 are subnormal, -inf gives 0, and it
// saves the exponent-field build, clamp and select of the other ISAs, which return exactly 0
// below -87 (the true value is < 2^-125, negligible next to a row maximum's exp(0) = 1).
inline Vec::T exp(Vec::T x) {
#if defined(__AVX512F__)
  const Vec::T xc = Vec::max(Vec::set1(-105.0f), x);  // e^-105 < 2^-151 rounds to 0
  const Vec::T n = _mm512_roundscale_ps(Vec::mul(xc, Vec::set1(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#else
  const Vec::T lo = Vec::set1(-87.0f);
  const Vec::T xc = Vec::max(lo, x);
  const Vec::T shifter = Vec::set1(12582912.0f);  // 1.5·2^23: adding it rounds to an integer
  const Vec::T n = Vec::sub(Vec::fmadd(xc, Vec::set1(1.44269504088896341f), shifter), shifter);
#endif
  Vec::T r = Vec::fnmadd(n, Vec::set1(0.693145751953125f), xc);
  r = Vec::fnmadd(n, Vec::set1(1.428606765330187045e-06f), r);
#if defined(__AVX512F__)
  return _mm512_scalef_ps(exp_reduced(r), n);
#else
  return Vec::zero_if_less(x, lo, Vec::mul(exp_reduced(r), Vec::two_pow(n)));
#endif
}

}  // namespace
}  // namespace mha::detail::MHA_KERNEL_NS
