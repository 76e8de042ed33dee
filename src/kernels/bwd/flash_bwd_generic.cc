// The portable flash backward body compiled for generic (flags set per file in CMakeLists.txt).
#define MHA_KERNEL_NS generic
#include "kernels/bwd/flash_bwd_impl.h"
