// NumPy .npy files (format versions 1.0 to 3.0, little-endian, C order): float32 / float16 arrays,
// and int32 / int64 index arrays.
#pragma once

#include <cstdint>
#include <span>
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
// The same from a file's bytes in memory; `name` stands for the path in messages.
NpyArray parse_npy(std::span<const std::uint8_t> bytes, const std::string& name);

// Integer arrays (token ids, sequence offsets): int32 or int64 ('<i4', '<i8') of rank 1 or 2, read
// as int32. The same errors as load_npy, and InvalidArgument for a value outside int32.
struct NpyInts {
  std::vector<std::int64_t> shape;
  std::vector<std::int32_t> values;  // C order
};
NpyInts load_npy_int32(const std::string& path);
NpyInts parse_npy_int32(std::span<const std::uint8_t> bytes, const std::string& name);

// Writes a C-order array, all or nothing: to a temporary file beside `path`, renamed over it once
// every byte is written (a full disk or a size limit leaves the old file). bf16 has no NumPy
// dtype: Unsupported.
void save_npy(const std::string& path, DType dtype, const std::vector<std::int64_t>& shape, const void* data);

}  // namespace mha
