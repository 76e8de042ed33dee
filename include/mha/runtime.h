// Process-wide runtime settings: worker threads and the instruction set the kernels use.
#pragma once

#include <string_view>
#include <vector>

namespace mha {

// Threads used by every call. Default: the hardware concurrency (all cores). Results do not depend
// on it: work is partitioned by data and combined in a fixed order. Not to be called while another
// thread is inside an mha call.
void set_num_threads(int n);
int num_threads();

// Kernel families, ordered from most portable to most specialized.
enum class Isa { generic, avx2, avx512, avx512bf16 };

std::string_view to_string(Isa isa);
Isa parse_isa(std::string_view name);  // throws InvalidArgument
// Whether this CPU (and OS) can run the ISA's instructions, whether or not this build has kernels
// for it.
bool cpu_supports(Isa isa);
// The ISAs this build has kernels for and this CPU can run, generic first.
std::vector<Isa> supported_isas();
// The best ISA for this CPU, or MHA_ISA from the environment when set.
Isa default_isa();
// Forces an ISA for later calls (tests, benchmarks). Throws Unsupported if the CPU lacks it.
void set_isa(Isa isa);
Isa active_isa();

}  // namespace mha
