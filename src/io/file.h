// Whole-file reads and all-or-nothing writes, with errors as IoError naming the path.
//
// A write goes to a temporary file beside the target and replaces the target by rename() only when
// commit() is called after every byte was written, flushed and closed: a failure midway (disk
// full, a file-size limit, a signal) leaves the old file as it was and removes the temporary.
// Several FileWriters committed one after the other make a call's outputs appear together or not
// at all, short of a failing rename. A target that exists and is not a regular file (/dev/null, a
// FIFO) is written in place: there is nothing to replace.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace mha::detail {

// The file's bytes. IoError: missing, unreadable, or a directory.
std::vector<std::uint8_t> read_file(const std::string& path, const char* what);

class FileWriter {
 public:
  // Opens the temporary file (or the target itself when it is not a regular file). `what` prefixes
  // messages ("npy", "safetensors").
  FileWriter(const std::string& path, const char* what);
  ~FileWriter();  // removes the temporary file unless committed
  FileWriter(const FileWriter&) = delete;
  FileWriter& operator=(const FileWriter&) = delete;

  void write(const void* data, std::size_t bytes);
  // Flushes and closes; IoError when any write failed. Idempotent.
  void close();
  // close(), then publishes the file under its name.
  void commit();

 private:
  [[noreturn]] void fail(const std::string& what, int err);

  std::string path_, temp_, what_;
  int fd_ = -1;
  bool committed_ = false;
};

// Whether two paths name the same file: the same existing file, or the same absolute path once
// symbolic links and '..' are resolved (for files not created yet).
bool same_file(const std::string& a, const std::string& b);

}  // namespace mha::detail
