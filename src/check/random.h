// A small, portable random source (splitmix64), so generated data is the same on every platform.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

namespace mha::check {

class Random {
 public:
  // The seed is hashed into the state: splitmix64's state only advances by a constant, so seeding
  // it with seed · constant made seeds s and s + k the same stream k draws apart, and `mha check`
  // sweeps of nearby seeds fell back into step with each other after a few cases.
  explicit Random(std::uint64_t seed) : state_(mix(seed + 0x632be59bd9b4e019ull)) {}

  std::uint64_t next() { return mix(state_ += 0x9e3779b97f4a7c15ull); }
  // Uniform in [0, 1).
  double uniform() { return double(next() >> 11) * 0x1.0p-53; }
  // Uniform integer in [lo, hi].
  std::int64_t range(std::int64_t lo, std::int64_t hi) {
    return lo + std::int64_t(next() % std::uint64_t(hi - lo + 1));
  }
  // Standard normal (Box-Muller).
  double normal() {
    const double u1 = 1.0 - uniform(), u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }

 private:
  static std::uint64_t mix(std::uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }

  std::uint64_t state_;
};

// n standard-normal floats, reproducible from `seed`.
inline std::vector<float> normal_vector(std::size_t n, std::uint64_t seed) {
  Random rng(seed);
  std::vector<float> v(n);
  for (auto& x : v) x = float(rng.normal());
  return v;
}

}  // namespace mha::check
