// NumPy .npy files (format versions 1.0 to 3.0, little-endian float32 / float16, C order).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "mha/tensor.h"

namespace mha {

struct NpyArray {
  DType dtype = DType::f32;
  std::vector<std::int64_t> shape;
  std::vector<std::uint8_t> bytes;  // C-order data

  std::int64_t numel() const;
  // A contiguous view of the data; rank = shape.size() (1 to 4).
  Tensor view();
};

// Throws IoError naming the path on a missing, truncated or malformed file, and Unsupported for a
// dtype other than float32/float16, Fortran order, or big-endian data.
NpyArray load_npy(const std::string& path);

// Writes a C-order array. bf16 has no NumPy dtype: Unsupported.
void save_npy(const std::string& path, DType dtype, const std::vector<std::int64_t>& shape, const void* data);

}  // namespace mha
