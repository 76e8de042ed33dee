#pragma once

namespace mha {
inline constexpr const char* kVersion = "0.1.0";
}
