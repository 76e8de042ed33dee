// The flash forward body compiled for AVX-512 with BF16: bf16 inputs take the vdpbf16ps path
// (flash_fwd_bf16dot.h), f32 and f16 inputs the same f32 path as avx512.
#define MHA_KERNEL_NS avx512bf16
#include "kernels/flash_fwd_impl.h"
