#include "io/file.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "mha/errors.h"

namespace mha::detail {

namespace {

[[noreturn]] void io_fail(const std::string& path, const char* what, const std::string& msg, int err) {
  throw IoError(
      path, fmt::format("{} '{}': {}{}{}", what, path, msg, err ? ": " : "", err ? std::strerror(err) : ""));
}

// The file a write to `path` lands in: symbolic links followed, so the rename replaces the file
// they point to and not the link.
std::string resolve(const std::string& path) {
  std::error_code ec;
  const auto status = std::filesystem::symlink_status(path, ec);
  if (!ec && std::filesystem::is_symlink(status)) {
    const auto target = std::filesystem::weakly_canonical(path, ec);
    if (!ec) return target.string();
  }
  return path;
}

}  // namespace

std::vector<std::uint8_t> read_file(const std::string& path, const char* what) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) io_fail(path, what, "cannot open the file", errno);
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) io_fail(path, what, "cannot stat the file", errno);
  if (S_ISDIR(st.st_mode)) io_fail(path, what, "is a directory, expected a file", 0);
  std::vector<std::uint8_t> bytes;
  try {
    if (S_ISREG(st.st_mode)) bytes.reserve(std::size_t(st.st_size));
    for (;;) {
      std::uint8_t buf[1 << 16];
      const ssize_t n = ::read(fd, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) io_fail(path, what, "read error", errno);
      if (n == 0) break;
      bytes.insert(bytes.end(), buf, buf + n);
    }
  } catch (const std::bad_alloc&) {
    throw OutOfMemory(path, fmt::format("{} '{}': cannot hold its {} bytes in memory", what, path,
                                        std::int64_t(st.st_size)));
  }
  return bytes;
}

FileWriter::FileWriter(const std::string& path, const char* what) : path_(resolve(path)), what_(what) {
  struct stat st {};
  if (::stat(path_.c_str(), &st) == 0) {
    if (S_ISDIR(st.st_mode)) io_fail(path, what, "is a directory, expected a file name", 0);
    if (!S_ISREG(st.st_mode)) {  // a device or FIFO: written in place
      fd_ = ::open(path_.c_str(), O_WRONLY | O_CLOEXEC);
      if (fd_ < 0) io_fail(path, what, "cannot open for writing", errno);
      return;
    }
  }
  static std::atomic<unsigned> counter{0};
  for (int attempt = 0; fd_ < 0; ++attempt) {
    temp_ = fmt::format("{}.tmp-{}-{}", path_, ::getpid(), counter.fetch_add(1));
    fd_ = ::open(temp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd_ < 0 && (errno != EEXIST || attempt > 100)) {
      const int err = errno;
      temp_.clear();
      io_fail(path, what, "cannot create a file beside it for writing", err);
    }
  }
}

FileWriter::~FileWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_ && !temp_.empty()) ::unlink(temp_.c_str());
}

void FileWriter::fail(const std::string& what, int err) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  io_fail(path_, what_.c_str(), what, err);
}

void FileWriter::write(const void* data, std::size_t bytes) {
  if (fd_ < 0) fail("write after close", 0);
  const char* p = static_cast<const char*>(data);
  while (bytes > 0) {
    const ssize_t n = ::write(fd_, p, bytes);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail("write error", errno);  // ENOSPC, EFBIG (SIGXFSZ ignored), EIO ...
    p += n;
    bytes -= std::size_t(n);
  }
}

void FileWriter::close() {
  if (fd_ < 0) return;
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) io_fail(path_, what_.c_str(), "write error on close", errno);
}

void FileWriter::commit() {
  if (committed_) return;
  close();
  if (!temp_.empty() && ::rename(temp_.c_str(), path_.c_str()) != 0)
    io_fail(path_, what_.c_str(), "cannot replace the file", errno);
  committed_ = true;
}

bool same_file(const std::string& a, const std::string& b) {
  std::error_code ea, eb;
  if (std::filesystem::exists(a, ea) && std::filesystem::exists(b, eb))
    return std::filesystem::equivalent(a, b, ea);
  const auto ca = std::filesystem::weakly_canonical(std::filesystem::absolute(a, ea), ea);
  const auto cb = std::filesystem::weakly_canonical(std::filesystem::absolute(b, eb), eb);
  return !ea && !eb && ca == cb;
}

}  // namespace mha::detail
