// The flash-decode body compiled for AVX-512 BF16: bf16 caches take the vdpbf16ps path.
#define MHA_KERNEL_NS avx512bf16
#include "kernels/decode_impl.h"
