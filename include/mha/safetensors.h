// safetensors files (the format checkpoints come in): an 8-byte little-endian header length, a JSON
// header {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}}
// and the raw little-endian data.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "mha/tensor.h"

namespace mha {

// One tensor of a loaded file. `dtype` is the file's spelling ("F32", "BF16", "I64", ...): tensors
// of any dtype may sit in a file; reading as floats accepts F32, F16 and BF16.
struct SafeTensorInfo {
  std::string dtype;
  std::vector<std::int64_t> shape;
  std::uint64_t begin = 0, end = 0;  // byte range within the data section
};

class SafeTensors {
 public:
  // Reads and checks the whole file. IoError naming the path: missing or unreadable file, truncated
  // file, malformed JSON header, entries that lack fields, offsets that leave the file or do not
  // match dtype × shape, or that overlap or leave holes (the format indexes every data byte).
  static SafeTensors load(const std::string& path);
  // The same from a file's bytes in memory; `name` stands for the path in messages.
  static SafeTensors parse(std::vector<std::uint8_t> bytes, const std::string& name);

  const std::string& path() const { return path_; }
  bool contains(const std::string& name) const { return tensors_.count(name) != 0; }
  std::vector<std::string> names() const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // InvalidArgument naming the tensor when it is not in the file.
  const SafeTensorInfo& info(const std::string& name) const;

  // The tensor as f32 (F16 and BF16 widened exactly). InvalidArgument naming the tensor when it is
  // missing or its shape is not `expected_shape`; Unsupported for other dtypes.
  std::vector<float> read_f32(const std::string& name, std::span<const std::int64_t> expected_shape) const;

 private:
  std::string path_;
  std::map<std::string, SafeTensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
  std::vector<std::uint8_t> data_;
};

// One tensor to write: contiguous data of `dtype` and `shape`.
struct SafeTensorEntry {
  std::string name;
  DType dtype = DType::f32;
  std::vector<std::int64_t> shape;
  const void* data = nullptr;
};

// Writes a file with the entries in the given order (data 8-byte aligned, as the reference writer
// does), all or nothing: a temporary file beside `path` is renamed over it once complete. IoError
// naming the path when it cannot be written; InvalidArgument for a repeated name.
void save_safetensors(const std::string& path, std::span<const SafeTensorEntry> entries,
                      const std::map<std::string, std::string>& metadata = {});

}  // namespace mha
