// The exception hierarchy of mha. Every error names the argument it is about, the value seen and
// what was expected; on error nothing is written to any output.
#pragma once

#include <stdexcept>
#include <string>

namespace mha {

// Base of every exception mha throws.
class Error : public std::runtime_error {
 public:
  Error(std::string argument, const std::string& message)
      : std::runtime_error(message), argument_(std::move(argument)) {}
  // The name of the offending argument ("q", "mask", "cu_seqlens_k", a file path, ...).
  const std::string& argument() const noexcept { return argument_; }

 private:
  std::string argument_;
};

// A value is malformed: shapes that do not agree, sizes out of range, aliasing, bad offsets.
class InvalidArgument : public Error {
  using Error::Error;
};

// A well-formed request mha does not support (a dtype, a head dim above the limit, an ISA this CPU lacks).
class Unsupported : public Error {
  using Error::Error;
};

// A fixed-capacity resource (a cache, a pool) is full.
class CapacityExceeded : public Error {
  using Error::Error;
};

// Memory for the request could not be had (std::bad_alloc, or a size no allocator can give): the
// argument names what was being sized. Nothing was written.
class OutOfMemory : public Error {
  using Error::Error;
};

// A file could not be read or written, or its contents are malformed.
class IoError : public Error {
  using Error::Error;
};

}  // namespace mha
