// Reshaping views of tensors (no data touched), for the entry points that take [n, H, D] where the
// kernels want [batch, n, H, D].
#pragma once

#include "mha/tensor.h"

namespace mha::detail {

// A rank-3 view [n, H, D] as [1, n, H, D].
inline Tensor with_batch_dim(const Tensor& t) {
  Tensor b = t;
  b.rank = 4;
  b.shape = {1, t.shape[0], t.shape[1], t.shape[2]};
  b.strides = {0, t.strides[0], t.strides[1], t.strides[2]};
  return b;
}

}  // namespace mha::detail
