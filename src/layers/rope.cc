#include "mha/rope.h"

#include <fmt/format.h>

#include <cmath>

#include "api/validate.h"
#include "mha/attention.h"
#include "mha/errors.h"
#include "runtime/dtype_convert.h"
#include "runtime/thread_pool.h"

namespace mha {

namespace {

[[noreturn]] void bad(const std::string& argument, const std::string& message) {
  throw InvalidArgument(argument, "RopeTable: " + message);
}

}  // namespace

RopeTable::RopeTable(std::int64_t rotary_dim, std::int64_t max_positions, double theta)
    : rotary_dim_(rotary_dim), max_positions_(max_positions), theta_(theta) {
  if (rotary_dim < 2 || rotary_dim > kMaxHeadDim || rotary_dim % 2 != 0)
    bad("rotary_dim",
        fmt::format("rotary_dim = {}, expected an even number from 2 to {}", rotary_dim, kMaxHeadDim));
  if (max_positions < 1 || max_positions > (std::int64_t(1) << 24))
    bad("max_positions", fmt::format("max_positions = {}, expected 1 to 2^24", max_positions));
  if (!(theta > 0) || !std::isfinite(theta))
    bad("theta", fmt::format("theta = {}, expected a finite number > 0", theta));
  const std::int64_t half = rotary_dim / 2;
  cos_.resize(std::size_t(max_positions * half));
  sin_.resize(cos_.size());
  for (std::int64_t i = 0; i < half; ++i) {
    const double inv_freq = std::pow(theta, -2.0 * double(i) / double(rotary_dim));
    for (std::int64_t p = 0; p < max_positions; ++p) {
      const double angle = double(p) * inv_freq;
      cos_[std::size_t(p * half + i)] = float(std::cos(angle));
      sin_[std::size_t(p * half + i)] = float(std::sin(angle));
    }
  }
}

void RopeTable::apply(const Tensor& x, RopeStyle style, std::span<const std::int32_t> offsets) const {
  detail::check_view("RopeTable::apply", "x", x, 4, 4);
  detail::check_no_self_overlap("RopeTable::apply", "x", x);  // rotated in place: each element once
  const std::int64_t B = x.shape[0], S = x.shape[1], H = x.shape[2], D = x.shape[3];
  if (D < rotary_dim_)
    bad("x", fmt::format("x.shape[3] (head dim) = {}, expected >= rotary_dim = {}", D, rotary_dim_));
  if (!offsets.empty() && std::int64_t(offsets.size()) != B)
    bad("offsets",
        fmt::format("{} offsets for batch {}, expected one per batch entry (or none)", offsets.size(), B));
  for (std::int64_t b = 0; b < B && S > 0; ++b) {
    const std::int64_t first = offsets.empty() ? 0 : offsets[std::size_t(b)];
    if (first < 0 || first + S > max_positions_)
      bad("offsets",
          fmt::format("positions {}..{} of batch entry {}, expected within [0, {}) (max_positions)", first,
                      first + S - 1, b, max_positions_));
  }
  // Each (b, s, h) row is rotated on its own: no overlap between rows is needed, and the result
  // does not depend on the thread count.
  const std::int64_t half = rotary_dim_ / 2;
  const std::int64_t pair_stride = style == RopeStyle::interleaved ? 1 : half;
  const std::int64_t pair_step = style == RopeStyle::interleaved ? 2 : 1;
  detail::global_pool()->parallel_for(B * S, [&](std::int64_t item) {
    const std::int64_t b = item / S, s = item % S;
    const std::int64_t pos = (offsets.empty() ? 0 : offsets[std::size_t(b)]) + s;
    const float* c = cos_.data() + pos * half;
    const float* sn = sin_.data() + pos * half;
    for (std::int64_t h = 0; h < H; ++h) {
      const std::int64_t row = b * x.strides[0] + s * x.strides[1] + h * x.strides[2];
      for (std::int64_t i = 0; i < half; ++i) {
        const std::int64_t ia = row + (i * pair_step) * x.strides[3];
        const std::int64_t ib = ia + pair_stride * x.strides[3];
        const float a = detail::load_f32(x.data, x.dtype, ia), bv = detail::load_f32(x.data, x.dtype, ib);
        detail::store_f32(x.data, x.dtype, ia, a * c[i] - bv * sn[i]);
        detail::store_f32(x.data, x.dtype, ib, a * sn[i] + bv * c[i]);
      }
    }
  });
}

}  // namespace mha
