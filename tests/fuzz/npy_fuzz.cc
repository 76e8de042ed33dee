// libFuzzer harness: any bytes through the .npy parser give an array or an mha::Error, never a crash,
// a sanitizer report or another exception.
#include <cstddef>
#include <cstdint>

#include "mha/errors.h"
#include "mha/npy.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    mha::NpyArray a = mha::parse_npy({data, size}, "fuzz.npy");
    if (std::int64_t(a.bytes.size()) != a.numel() * std::int64_t(mha::size_of(a.dtype))) __builtin_trap();
    (void)a.view().numel();
  } catch (const mha::Error&) {
  }
  return 0;
}
