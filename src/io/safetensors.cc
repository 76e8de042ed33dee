#include "mha/safetensors.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "io/file.h"
#include "mha/errors.h"
#include "runtime/dtype_convert.h"

namespace mha {

namespace {

using json = nlohmann::json;

[[noreturn]] void io_fail(const std::string& path, const std::string& what) {
  throw IoError(path, fmt::format("safetensors '{}': {}", path, what));
}

// Bytes per element of the dtypes the format defines; 0 for a name it does not define.
std::uint64_t element_size(const std::string& dtype) {
  static const std::map<std::string, std::uint64_t> sizes = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E4M3", 1}, {"F8_E5M2", 1}, {"I16", 2}, {"U16", 2}, {"F16", 2},
      {"BF16", 2}, {"I32", 4}, {"U32", 4}, {"F32", 4},     {"F64", 8},     {"I64", 8}, {"U64", 8}};
  const auto it = sizes.find(dtype);
  return it == sizes.end() ? 0 : it->second;
}

std::string file_dtype(DType t) {
  switch (t) {
    case DType::f32: return "F32";
    case DType::f16: return "F16";
    case DType::bf16: return "BF16";
  }
  return "F32";
}

std::string shape_string(std::span<const std::int64_t> shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

SafeTensorInfo parse_entry(const std::string& path, const std::string& name, const json& e,
                           std::uint64_t data_bytes) {
  auto bad = [&](const std::string& what) { io_fail(path, fmt::format("tensor '{}': {}", name, what)); };
  if (!e.is_object()) bad("entry is not a JSON object");
  SafeTensorInfo t;
  if (!e.contains("dtype") || !e["dtype"].is_string()) bad("'dtype' missing or not a string");
  t.dtype = e["dtype"].get<std::string>();
  const std::uint64_t esize = element_size(t.dtype);
  if (esize == 0) bad(fmt::format("unknown dtype '{}'", t.dtype));
  if (!e.contains("shape") || !e["shape"].is_array()) bad("'shape' missing or not an array");
  std::uint64_t numel = 1;
  for (const json& d : e["shape"]) {
    if (!d.is_number_unsigned()) bad("shape entries must be non-negative integers");
    const std::uint64_t n = d.get<std::uint64_t>();
    if (n > (std::uint64_t(1) << 40)) bad(fmt::format("dimension {} is too large", n));
    t.shape.push_back(std::int64_t(n));
    // Checked: [2^40, 2^40] wraps to 0 elements and would pass as an empty tensor.
    if (__builtin_mul_overflow(numel, n, &numel) || numel > (std::uint64_t(1) << 48))
      bad("too many elements");
  }
  if (numel > 0 && numel * esize > data_bytes)
    io_fail(path, fmt::format("truncated: tensor '{}' needs {} bytes, but the file holds {} data bytes", name,
                              numel * esize, data_bytes));
  const json& off = e.contains("data_offsets") ? e["data_offsets"] : json();
  if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
    bad("'data_offsets' missing or not [begin, end]");
  t.begin = off[0].get<std::uint64_t>();
  t.end = off[1].get<std::uint64_t>();
  if (t.begin > t.end) bad(fmt::format("data_offsets [{}, {}] run backwards", t.begin, t.end));
  if (t.end - t.begin != numel * esize)
    bad(fmt::format("data_offsets [{}, {}] hold {} bytes, expected {} for {} {}", t.begin, t.end,
                    t.end - t.begin, numel * esize, t.dtype, shape_string(t.shape)));
  if (t.end > data_bytes)
    io_fail(path, fmt::format("truncated: tensor '{}' ends at data byte {}, but the file holds {} data bytes",
                              name, t.end, data_bytes));
  return t;
}

}  // namespace

SafeTensors SafeTensors::load(const std::string& path) {
  return parse(detail::read_file(path, "safetensors"), path);
}

SafeTensors SafeTensors::parse(std::vector<std::uint8_t> bytes, const std::string& path) {
  if (bytes.size() < 8)
    io_fail(path, fmt::format("truncated: {} bytes, the header length alone needs 8", bytes.size()));
  std::uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = header_len << 8 | bytes[std::size_t(i)];
  if (header_len > bytes.size() - 8)
    io_fail(path, fmt::format("truncated: the header claims {} bytes, the file has {} after the length",
                              header_len, bytes.size() - 8));
  SafeTensors f;
  f.path_ = path;
  const std::uint64_t data_bytes = bytes.size() - 8 - header_len;
  // Any nlohmann exception (a syntax error, a number too large for a double, ...) is a malformed file.
  try {
    const json header = json::parse(bytes.begin() + 8, bytes.begin() + 8 + std::ptrdiff_t(header_len));
    if (!header.is_object()) io_fail(path, "the JSON header is not an object");
    for (const auto& [name, entry] : header.items()) {
      if (name == "__metadata__") {
        if (!entry.is_object()) io_fail(path, "'__metadata__' is not an object");
        for (const auto& [k, v] : entry.items()) {
          if (!v.is_string()) io_fail(path, fmt::format("metadata '{}' is not a string", k));
          f.metadata_[k] = v.get<std::string>();
        }
        continue;
      }
      f.tensors_[name] = parse_entry(path, name, entry, data_bytes);
    }
  } catch (const json::exception& e) {
    io_fail(path, fmt::format("malformed JSON header: {}", e.what()));
  }
  // The format indexes the data section entirely, without overlaps or holes: sorted by offset,
  // each tensor starts where the previous one ends and the last ends with the file.
  std::vector<std::pair<const SafeTensorInfo*, const std::string*>> order;
  for (const auto& [name, info] : f.tensors_) order.emplace_back(&info, &name);
  std::sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
    return std::pair(a.first->begin, a.first->end) < std::pair(b.first->begin, b.first->end);
  });
  std::uint64_t at = 0;
  for (const auto& [info, name] : order) {
    if (info->begin != at)
      io_fail(path,
              fmt::format("tensor '{}' starts at data byte {}, expected {}: data {} another tensor's", *name,
                          info->begin, at, info->begin < at ? "overlapping" : "not indexed between it and"));
    at = info->end;
  }
  if (at != data_bytes)
    io_fail(path, fmt::format("{} data bytes after the last tensor, expected none", data_bytes - at));
  bytes.erase(bytes.begin(), bytes.begin() + 8 + std::ptrdiff_t(header_len));
  f.data_ = std::move(bytes);
  return f;
}

std::vector<std::string> SafeTensors::names() const {
  std::vector<std::string> out;
  for (const auto& [name, info] : tensors_) out.push_back(name);
  return out;
}

const SafeTensorInfo& SafeTensors::info(const std::string& name) const {
  const auto it = tensors_.find(name);
  if (it == tensors_.end())
    throw InvalidArgument(name, fmt::format("safetensors '{}': no tensor named '{}' ({} tensors in the file)",
                                            path_, name, tensors_.size()));
  return it->second;
}

std::vector<float> SafeTensors::read_f32(const std::string& name,
                                         std::span<const std::int64_t> expected_shape) const {
  const SafeTensorInfo& t = info(name);
  if (!std::equal(t.shape.begin(), t.shape.end(), expected_shape.begin(), expected_shape.end()))
    throw InvalidArgument(name, fmt::format("safetensors '{}': tensor '{}' has shape {}, expected {}", path_,
                                            name, shape_string(t.shape), shape_string(expected_shape)));
  const std::uint8_t* src = data_.data() + t.begin;
  const std::size_t n = std::size_t((t.end - t.begin) / element_size(t.dtype));
  std::vector<float> out(n);
  if (t.dtype == "F32") {
    if (n > 0) std::memcpy(out.data(), src, n * 4);  // an empty vector's data() may be null
  } else if (t.dtype == "F16" || t.dtype == "BF16") {
    const DType dt = t.dtype == "F16" ? DType::f16 : DType::bf16;
    for (std::size_t i = 0; i < n; ++i) {
      std::uint16_t h;
      std::memcpy(&h, src + 2 * i, 2);
      out[i] = detail::load_f32(&h, dt, 0);
    }
  } else {
    throw Unsupported(name, fmt::format("safetensors '{}': tensor '{}' is {}, expected F32, F16 or BF16",
                                        path_, name, t.dtype));
  }
  return out;
}

void save_safetensors(const std::string& path, std::span<const SafeTensorEntry> entries,
                      const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  std::set<std::string> seen;
  std::uint64_t offset = 0;
  for (const SafeTensorEntry& e : entries) {
    if (!seen.insert(e.name).second || e.name == "__metadata__")
      throw InvalidArgument("entries", fmt::format("tensor name '{}' repeated or reserved", e.name));
    std::uint64_t numel = 1;
    for (std::int64_t d : e.shape) {
      if (d < 0 || __builtin_mul_overflow(numel, std::uint64_t(d), &numel) ||
          numel > (std::uint64_t(1) << 48))
        throw InvalidArgument("entries",
                              fmt::format("tensor '{}' has shape {}, expected non-negative sizes of at most "
                                          "2^48 elements",
                                          e.name, shape_string(e.shape)));
    }
    const std::uint64_t bytes = numel * size_of(e.dtype);
    header[e.name] = {
        {"dtype", file_dtype(e.dtype)}, {"shape", e.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // the data starts 8-byte aligned
  detail::FileWriter out(path, "safetensors");
  std::uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = std::uint8_t(std::uint64_t(text.size()) >> (8 * i));
  out.write(len, 8);
  out.write(text.data(), text.size());
  for (const SafeTensorEntry& e : entries) {
    std::uint64_t numel = 1;
    for (std::int64_t d : e.shape) numel *= std::uint64_t(d);
    if (numel > 0) out.write(e.data, numel * size_of(e.dtype));
  }
  out.commit();
}

}  // namespace mha
