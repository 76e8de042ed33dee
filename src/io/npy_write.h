// The .npy encoder behind save_npy, writing into a FileWriter so that a caller with several
// outputs commits them together (the CLI).
#pragma once

#include <cstdint>
#include <vector>

#include "io/file.h"
#include "mha/tensor.h"

namespace mha::detail {

// Header and data of a C-order f32/f16 array; the caller commits.
void write_npy(FileWriter& out, DType dtype, const std::vector<std::int64_t>& shape, const void* data);

}  // namespace mha::detail
