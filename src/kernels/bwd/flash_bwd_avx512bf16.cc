// The flash backward body compiled for AVX-512 with BF16: bf16 q/k/v and dout take the vdpbf16ps
// path (flash_bwd_bf16dot.h), other dtypes the same f32 path as avx512.
#define MHA_KERNEL_NS avx512bf16
#include "kernels/bwd/flash_bwd_impl.h"
