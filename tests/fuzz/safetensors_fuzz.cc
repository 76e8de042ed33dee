// libFuzzer harness: any bytes through the safetensors parser, then every float tensor read back
// with its own shape: a file or an mha::Error, never a crash or a sanitizer report.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "mha/errors.h"
#include "mha/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const mha::SafeTensors f = mha::SafeTensors::parse(std::vector<std::uint8_t>(data, data + size), "fuzz");
    for (const std::string& name : f.names()) {
      const mha::SafeTensorInfo& t = f.info(name);
      try {
        const std::vector<float> x = f.read_f32(name, t.shape);
        std::size_t n = 1;
        for (std::int64_t d : t.shape) n *= std::size_t(d);
        if (x.size() != n) __builtin_trap();
      } catch (const mha::Unsupported&) {  // an I64 tensor, say
      }
    }
  } catch (const mha::Error&) {
  }
  return 0;
}
