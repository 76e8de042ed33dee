// The fp32 multiply-add peak loop compiled for generic (flags set per file in CMakeLists.txt).
#define MHA_KERNEL_NS generic
#include "kernels/peak_impl.h"
