// Agreement between two results: Pearson correlation and max absolute error.
#pragma once

#include <span>
#include <vector>

namespace mha::check {

// Pearson correlation; 1 for two constant (or empty) vectors, 0 when only one is constant.
double pearson(const std::vector<double>& a, const std::vector<double>& b);

struct Agreement {
  double pcc = 1;
  double max_err = 0;  // max |got - ref|
  double max_ref = 0;  // max |ref|, the scale max_err is read against
};

Agreement compare(std::span<const double> got, std::span<const double> ref);
Agreement compare(std::span<const float> got, std::span<const double> ref);
Agreement compare(std::span<const float> got, std::span<const float> ref);

}  // namespace mha::check
