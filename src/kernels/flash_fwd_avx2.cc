// The portable flash forward body compiled for avx2 (flags set per file in CMakeLists.txt).
#define MHA_KERNEL_NS avx2
#include "kernels/flash_fwd_impl.h"
