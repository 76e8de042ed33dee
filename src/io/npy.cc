// .npy: magic "\x93NUMPY", version, header length (u16 for 1.0, u32 for 2.0/3.0), then a Python
// dict literal {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), } padded with spaces and
// a newline, then the raw data.
#include "mha/npy.h"

#include <fmt/format.h>

#include <cctype>
#include <cstring>
#include <limits>

#include "io/file.h"
#include "io/npy_write.h"
#include "mha/errors.h"

namespace mha {

namespace {

[[noreturn]] void io_fail(const std::string& path, const std::string& what) {
  throw IoError(path, fmt::format("npy '{}': {}", path, what));
}

// A minimal reader of the header's dict literal: keys and values we need, nothing else accepted.
class HeaderParser {
 public:
  HeaderParser(const std::string& text, const std::string& path) : s_(text), path_(path) {}

  void parse(std::string& descr, bool& fortran, std::vector<std::int64_t>& shape) {
    bool have_descr = false, have_order = false, have_shape = false;
    expect('{');
    for (;;) {
      skip_ws();
      if (peek() == '}') break;
      const std::string key = string_literal();
      expect(':');
      if (key == "descr") {
        descr = string_literal();
        have_descr = true;
      } else if (key == "fortran_order") {
        fortran = boolean();
        have_order = true;
      } else if (key == "shape") {
        shape = tuple();
        have_shape = true;
      } else {
        fail(fmt::format("unexpected header key '{}'", key));
      }
      skip_ws();
      if (peek() == ',') ++pos_;
    }
    if (!have_descr || !have_order || !have_shape)
      fail("header lacks one of 'descr', 'fortran_order', 'shape'");
  }

 private:
  [[noreturn]] void fail(const std::string& what) {
    io_fail(path_, fmt::format("malformed header at byte {}: {}", pos_, what));
  }
  void skip_ws() {
    while (pos_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[pos_]))) ++pos_;
  }
  char peek() {
    if (pos_ >= s_.size()) fail("header ends early");
    return s_[pos_];
  }
  void expect(char c) {
    skip_ws();
    if (peek() != c) fail(fmt::format("expected '{}', found '{}'", c, s_[pos_]));
    ++pos_;
  }
  std::string string_literal() {
    skip_ws();
    const char quote = peek();
    if (quote != '\'' && quote != '"') fail("expected a quoted string");
    const std::size_t end = s_.find(quote, pos_ + 1);
    if (end == std::string::npos) fail("unterminated string");
    std::string out = s_.substr(pos_ + 1, end - pos_ - 1);
    pos_ = end + 1;
    return out;
  }
  bool boolean() {
    skip_ws();
    if (s_.compare(pos_, 4, "True") == 0) {
      pos_ += 4;
      return true;
    }
    if (s_.compare(pos_, 5, "False") == 0) {
      pos_ += 5;
      return false;
    }
    fail("expected True or False");
  }
  std::vector<std::int64_t> tuple() {
    expect('(');
    std::vector<std::int64_t> dims;
    for (;;) {
      skip_ws();
      if (peek() == ')') {
        ++pos_;
        break;
      }
      if (!std::isdigit(static_cast<unsigned char>(peek()))) fail("expected a dimension");
      std::int64_t v = 0;
      while (pos_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[pos_]))) {
        if (v > (std::numeric_limits<std::int64_t>::max() - 9) / 10) fail("dimension overflows");
        v = v * 10 + (s_[pos_++] - '0');
      }
      dims.push_back(v);
      skip_ws();
      if (peek() == ',') ++pos_;
    }
    return dims;
  }

  const std::string& s_;
  const std::string& path_;
  std::size_t pos_ = 0;
};

}  // namespace

std::int64_t NpyArray::numel() const {
  std::int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

Tensor NpyArray::view() {
  Tensor t;
  t.data = bytes.data();
  t.dtype = dtype;
  t.rank = int(shape.size());
  std::int64_t stride = 1;
  for (int i = t.rank - 1; i >= 0; --i) {
    t.shape[std::size_t(i)] = shape[std::size_t(i)];
    t.strides[std::size_t(i)] = stride;
    stride *= shape[std::size_t(i)];
  }
  return t;
}

namespace {

// The header's fields and the data bytes after it, checked against the shape for `elem` bytes
// per element once the caller knows the dtype.
struct RawNpy {
  std::string descr;
  bool fortran = false;
  std::vector<std::int64_t> shape;
  std::span<const std::uint8_t> body;
};

RawNpy parse_raw(std::span<const std::uint8_t> data, const std::string& path) {
  const std::int64_t file_size = std::int64_t(data.size());
  const char* pre = reinterpret_cast<const char*>(data.data());
  if (file_size < 10)
    io_fail(path, fmt::format("file of {} bytes is too short for an npy header", file_size));
  if (std::memcmp(pre, "\x93NUMPY", 6) != 0)
    io_fail(path, "bad magic, expected \\x93NUMPY (not an .npy file)");
  const int major = static_cast<unsigned char>(pre[6]);
  std::int64_t header_len = 0, prefix = 0;
  if (major == 1) {
    header_len = static_cast<unsigned char>(pre[8]) | (static_cast<unsigned char>(pre[9]) << 8);
    prefix = 10;
  } else if (major == 2 || major == 3) {
    if (file_size < 12) io_fail(path, "truncated header length");
    header_len = std::int64_t(static_cast<unsigned char>(pre[8])) |
                 std::int64_t(static_cast<unsigned char>(pre[9])) << 8 |
                 std::int64_t(static_cast<unsigned char>(pre[10])) << 16 |
                 std::int64_t(static_cast<unsigned char>(pre[11])) << 24;
    prefix = 12;
  } else {
    io_fail(path, fmt::format("format version {}.{}, expected 1.0, 2.0 or 3.0", major, int(pre[7])));
  }
  if (prefix + header_len > file_size)
    io_fail(path, fmt::format("truncated: header of {} bytes but the file has {}", header_len, file_size));
  const std::string header(pre + prefix, std::size_t(header_len));
  RawNpy raw;
  HeaderParser(header, path).parse(raw.descr, raw.fortran, raw.shape);
  raw.body = data.subspan(std::size_t(prefix + header_len));
  return raw;
}

// Checks order, rank and the data size for `elem`-byte elements; returns the data.
std::span<const std::uint8_t> checked_body(const RawNpy& raw, std::size_t elem, int max_rank, const std::string& path) {
  if (raw.fortran) throw Unsupported(path, fmt::format("npy '{}': fortran_order = True, expected C order", path));
  if (raw.shape.empty() || raw.shape.size() > std::size_t(max_rank))
    throw Unsupported(path, fmt::format("npy '{}': rank {}, expected 1 to {}", path, raw.shape.size(), max_rank));
  std::int64_t bytes = std::int64_t(elem);
  for (auto d : raw.shape)
    if (__builtin_mul_overflow(bytes, d, &bytes)) io_fail(path, "shape overflows");
  const std::int64_t available = std::int64_t(raw.body.size());
  if (available < bytes)
    io_fail(path, fmt::format("truncated: shape needs {} data bytes, the file has {}", bytes, available));
  if (available > bytes)
    io_fail(path, fmt::format("{} bytes of trailing data after the array, expected exactly {}",
                              available - bytes, bytes));
  return raw.body;
}

}  // namespace

NpyArray parse_npy(std::span<const std::uint8_t> data, const std::string& path) {
  RawNpy raw = parse_raw(data, path);
  NpyArray a;
  if (raw.descr == "<f4" || raw.descr == "=f4") {
    a.dtype = DType::f32;
  } else if (raw.descr == "<f2" || raw.descr == "=f2") {
    a.dtype = DType::f16;
  } else {
    throw Unsupported(
        path, fmt::format("npy '{}': dtype '{}', expected float32 ('<f4') or float16 ('<f2')", path, raw.descr));
  }
  const std::span<const std::uint8_t> body = checked_body(raw, size_of(a.dtype), Tensor::kMaxRank, path);
  a.shape = std::move(raw.shape);
  a.bytes.assign(body.begin(), body.end());
  return a;
}

NpyInts parse_npy_int32(std::span<const std::uint8_t> data, const std::string& path) {
  RawNpy raw = parse_raw(data, path);
  const bool i4 = raw.descr == "<i4" || raw.descr == "=i4", i8 = raw.descr == "<i8" || raw.descr == "=i8";
  if (!i4 && !i8)
    throw Unsupported(path,
                      fmt::format("npy '{}': dtype '{}', expected int32 ('<i4') or int64 ('<i8')", path, raw.descr));
  const std::span<const std::uint8_t> body = checked_body(raw, i4 ? 4 : 8, 2, path);
  NpyInts a;
  a.shape = std::move(raw.shape);
  a.values.resize(body.size() / (i4 ? 4 : 8));
  for (std::size_t i = 0; i < a.values.size(); ++i) {
    std::int64_t v = 0;
    if (i4) {
      std::int32_t x;
      std::memcpy(&x, body.data() + 4 * i, 4);
      v = x;
    } else {
      std::memcpy(&v, body.data() + 8 * i, 8);
    }
    if (v < INT32_MIN || v > INT32_MAX)
      throw InvalidArgument(path, fmt::format("npy '{}': element {} = {} does not fit int32", path, i, v));
    a.values[i] = std::int32_t(v);
  }
  return a;
}

NpyInts load_npy_int32(const std::string& path) { return parse_npy_int32(detail::read_file(path, "npy"), path); }

NpyArray load_npy(const std::string& path) { return parse_npy(detail::read_file(path, "npy"), path); }

namespace detail {

void write_npy(FileWriter& out, DType dtype, const std::vector<std::int64_t>& shape, const void* data) {
  std::string dims;  // "(2, 3)", but "(5,)" for one dimension
  std::int64_t n = 1;
  for (std::size_t i = 0; i < shape.size(); ++i) {
    dims += fmt::format("{}{}", i ? ", " : "", shape[i]);
    if (shape[i] < 0 || __builtin_mul_overflow(n, shape[i], &n))
      throw InvalidArgument("shape", fmt::format("save_npy: shape ({}) is not a valid array shape", dims));
  }
  if (shape.size() == 1) dims += ",";
  std::string header = fmt::format("{{'descr': '{}', 'fortran_order': False, 'shape': ({}), }}",
                                   dtype == DType::f32 ? "<f4" : "<f2", dims);
  // Pad so that the data starts on a 64-byte boundary, newline last.
  const std::size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header.push_back('\n');
  const char pre[10] = {
      '\x93', 'N', 'U', 'M', 'P', 'Y', 1, 0, char(header.size() & 0xff), char(header.size() >> 8)};
  out.write(pre, 10);
  out.write(header.data(), header.size());
  out.write(data, std::size_t(n) * size_of(dtype));
}

}  // namespace detail

void save_npy(const std::string& path, DType dtype, const std::vector<std::int64_t>& shape,
              const void* data) {
  if (dtype == DType::bf16)
    throw Unsupported(path, fmt::format("npy '{}': bf16 has no NumPy dtype, expected f32 or f16", path));
  detail::FileWriter out(path, "npy");
  detail::write_npy(out, dtype, shape, data);
  out.commit();
}

}  // namespace mha
