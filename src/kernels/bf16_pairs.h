// bf16 pair helpers shared by the vdpbf16ps kernels (forward and backward fragments): a fragment
// included inside a kernel file's namespace when it is compiled with -mavx512bf16.
//
// vdpbf16ps takes dwords that each hold two bf16 values, consecutive along the reduction axis,
// and adds both products into one f32 lane; these helpers build such dwords.

inline __m512bh as_bh(__m512i x) { return (__m512bh)x; }

inline std::uint32_t load_pair(const std::uint16_t* p) {
  std::uint32_t x;
  std::memcpy(&x, p, sizeof x);
  return x;
}

// 16 bf16 values (low halves of the dword lanes) from 16 f32 values, rounded to nearest even.
inline __m512i bf16_low(__m512 x) { return _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(x)); }

// Dwords (lo[c], hi[c]) for 16 consecutive c of two bf16 rows; hi == nullptr pairs with zero.
inline __m512i pair_rows16(const std::uint16_t* lo, const std::uint16_t* hi) {
  const __m512i a = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(lo)));
  if (hi == nullptr) return a;
  const __m512i b = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(hi)));
  return _mm512_or_si512(a, _mm512_slli_epi32(b, 16));
}
