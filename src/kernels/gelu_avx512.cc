// The exact-erf GELU compiled for avx512 (flags set per file in CMakeLists.txt).
#define MHA_KERNEL_NS avx512
#include "kernels/gelu_impl.h"
