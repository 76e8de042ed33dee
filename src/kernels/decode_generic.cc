// The flash-decode body compiled for generic (flags set per file in CMakeLists.txt).
#define MHA_KERNEL_NS generic
#include "kernels/decode_impl.h"
