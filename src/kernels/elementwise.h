// Element-wise kernels of the layers between their products, one body per ISA (gelu_impl.h).
#pragma once

#include <cstdint>

#include "mha/runtime.h"

namespace mha::detail {

using GeluKernel = void (*)(float* x, std::int64_t n);

namespace generic { void gelu_erf(float* x, std::int64_t n); }
namespace avx2 { void gelu_erf(float* x, std::int64_t n); }
namespace avx512 { void gelu_erf(float* x, std::int64_t n); }

// The body for an ISA (avx512bf16 uses the AVX-512 one: there is no bf16 in it).
GeluKernel gelu_kernel(Isa isa);

}  // namespace mha::detail
