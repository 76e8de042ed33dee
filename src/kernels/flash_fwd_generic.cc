// The portable flash forward body compiled for generic (flags set per file in CMakeLists.txt).
#define MHA_KERNEL_NS generic
#include "kernels/flash_fwd_impl.h"
