// The portable flash forward body compiled for avx512 (flags set per file in CMakeLists.txt).
#define MHA_KERNEL_NS avx512
#include "kernels/flash_fwd_impl.h"
