// The exact-erf GELU compiled for generic (flags set per file in CMakeLists.txt).
#define MHA_KERNEL_NS generic
#include "kernels/gelu_impl.h"
