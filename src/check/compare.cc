#include "check/compare.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace mha::check {

double pearson(const std::vector<double>& a, const std::vector<double>& b) {
  const double n = double(a.size());
  if (a.empty()) return 1;
  const double ma = std::accumulate(a.begin(), a.end(), 0.0) / n;
  const double mb = std::accumulate(b.begin(), b.end(), 0.0) / n;
  double sab = 0, saa = 0, sbb = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    sab += (a[i] - ma) * (b[i] - mb);
    saa += (a[i] - ma) * (a[i] - ma);
    sbb += (b[i] - mb) * (b[i] - mb);
  }
  if (saa == 0 && sbb == 0) return 1;  // both constant (e.g. all rows masked): identical
  if (saa == 0 || sbb == 0) return 0;
  return sab / std::sqrt(saa * sbb);
}

Agreement compare(std::span<const double> got, std::span<const double> ref) {
  Agreement a;
  a.pcc = pearson({got.begin(), got.end()}, {ref.begin(), ref.end()});
  for (std::size_t i = 0; i < got.size(); ++i) {
    a.max_err = std::max(a.max_err, std::fabs(got[i] - ref[i]));
    a.max_ref = std::max(a.max_ref, std::fabs(ref[i]));
  }
  return a;
}

Agreement compare(std::span<const float> got, std::span<const double> ref) {
  const std::vector<double> g(got.begin(), got.end());
  return compare(std::span<const double>(g), ref);
}

Agreement compare(std::span<const float> got, std::span<const float> ref) {
  const std::vector<double> g(got.begin(), got.end()), r(ref.begin(), ref.end());
  return compare(std::span<const double>(g), std::span<const double>(r));
}

}  // namespace mha::check
