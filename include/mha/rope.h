// Rotary position embedding (RoPE), applied in place to q or k before attention.
//
// For position p and pair index i < rotary_dim / 2, the angle is p · theta^(-2i / rotary_dim) and
// the pair (x_a, x_b) becomes (x_a·cos − x_b·sin, x_a·sin + x_b·cos). The two conventions differ
// only in which elements form pair i:
//   interleaved (GPT-J, Meta's original LLaMA): (x[2i], x[2i+1])
//   half        (GPT-NeoX, Hugging Face LLaMA):  (x[i], x[i + rotary_dim/2])
// Elements at or beyond rotary_dim are left as they are (partial rotary).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "mha/tensor.h"

namespace mha {

enum class RopeStyle { interleaved, half };

class RopeTable {
 public:
  // cos/sin for positions [0, max_positions) and rotary_dim / 2 frequencies, computed once in
  // double and stored in f32. rotary_dim: even, 2..kMaxHeadDim (256); max_positions >= 1; theta > 0 and finite.
  RopeTable(std::int64_t rotary_dim, std::int64_t max_positions, double theta = 10000.0);

  std::int64_t rotary_dim() const { return rotary_dim_; }
  std::int64_t max_positions() const { return max_positions_; }
  double theta() const { return theta_; }

  // Rotates x [B, S, H, D] in place (f32, f16 or bf16; any strides without overlap), D >= rotary_dim.
  // Token s of batch entry b sits at position offsets[b] + s (one offset per batch entry: each
  // sequence's own cache position); an empty `offsets` means 0 for every entry. Throws
  // InvalidArgument naming the argument (nothing is changed) for a bad view, a wrong number of
  // offsets, or a position outside [0, max_positions).
  void apply(const Tensor& x, RopeStyle style, std::span<const std::int32_t> offsets = {}) const;

 private:
  std::int64_t rotary_dim_, max_positions_;
  double theta_;
  std::vector<float> cos_, sin_;  // [max_positions][rotary_dim / 2]
};

}  // namespace mha
