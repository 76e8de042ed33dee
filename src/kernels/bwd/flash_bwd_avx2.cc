// The portable flash backward body compiled for avx2 (flags set per file in CMakeLists.txt).
#define MHA_KERNEL_NS avx2
#include "kernels/bwd/flash_bwd_impl.h"
