// A fixed-capacity, 64-byte aligned, uninitialized float buffer (scratch for kernels).
#pragma once

#include <cstddef>
#include <cstdlib>
#include <memory>
#include <new>

namespace mha::detail {

class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(std::size_t floats) { resize(floats); }

  // Grows (never shrinks); contents are not preserved.
  void resize(std::size_t floats) {
    if (floats <= size_) return;
    const std::size_t bytes = (floats * sizeof(float) + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, bytes);
    if (p == nullptr) throw std::bad_alloc();
    data_.reset(static_cast<float*>(p));
    size_ = floats;
  }
  float* data() { return data_.get(); }
  std::size_t size() const { return size_; }

 private:
  struct Free {
    void operator()(float* p) const { std::free(p); }
  };
  std::unique_ptr<float, Free> data_;
  std::size_t size_ = 0;
};

}  // namespace mha::detail
