// The fp32 multiply-add peak loop compiled for avx2 (flags set per file in CMakeLists.txt).
#define MHA_KERNEL_NS avx2
#include "kernels/peak_impl.h"
