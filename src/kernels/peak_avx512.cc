// The fp32 multiply-add peak loop compiled for avx512 (flags set per file in CMakeLists.txt).
#define MHA_KERNEL_NS avx512
#include "kernels/peak_impl.h"
