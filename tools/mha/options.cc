#include "options.h"

#include <fmt/format.h>

#include <charconv>
#include <cmath>
#include <cstdint>

namespace mha::cli {

namespace {

template <class T>
std::string exact_integer(const std::string& text) {
  T value{};
  const char* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (ec == std::errc::result_out_of_range)
    return fmt::format("value {} is out of range, expected {} to {}", text, std::numeric_limits<T>::min(),
                       std::numeric_limits<T>::max());
  if (ec != std::errc() || ptr != end)
    return fmt::format("value '{}' is not a{} decimal integer", text,
                       std::is_unsigned_v<T> ? " non-negative" : "n");
  return {};
}

}  // namespace

void require_exact_integers(CLI::App& app) {
  for (CLI::Option* opt : app.get_options()) {
    const std::string type = opt->get_type_name();
    if (type == "INT")
      opt->check(CLI::Validator([](std::string& s) { return exact_integer<std::int64_t>(s); }, ""));
    else if (type == "UINT")
      opt->check(CLI::Validator([](std::string& s) { return exact_integer<std::uint64_t>(s); }, ""));
  }
  for (CLI::App* sub : app.get_subcommands({})) require_exact_integers(*sub);
}

CLI::Validator finite_range(double lo, double hi) {
  return CLI::Validator(
      [lo, hi](std::string& s) -> std::string {
        double v = 0;
        const char* end = s.data() + s.size();
        const auto [ptr, ec] = std::from_chars(s.data(), end, v);
        if (ec != std::errc() || ptr != end || !std::isfinite(v) || v < lo || v > hi)
          return fmt::format("value '{}', expected a finite number from {} to {}", s, lo, hi);
        return {};
      },
      fmt::format("NUMBER in [{} - {}]", lo, hi));
}

}  // namespace mha::cli
