// A fixed-capacity, 64-byte aligned, uninitialized float buffer (scratch for kernels), and the
// allocation policy it shares with the KV cache.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <memory>
#include <new>
#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace mha::detail {

// bytes (rounded up) aligned to 64, or from 2 MiB on to 2 MiB and asked for transparent huge pages
// (free with std::free; nullptr when out of memory). Streaming a large buffer through 4 KiB pages
// costs a TLB miss every 4 KiB: on a 2-core Zen 4 (THP on madvise) a 512 MiB read ran at 29-34
// GB/s on 4 KiB pages and 54-66 GB/s on huge pages, in the same minutes.
inline void* allocate_aligned(std::size_t bytes) {
  constexpr std::size_t kHuge = std::size_t(2) << 20;
  const std::size_t align = bytes >= kHuge ? kHuge : 64;
  const std::size_t size = std::max(align, (bytes + align - 1) / align * align);
  void* p = std::aligned_alloc(align, size);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (p != nullptr && align == kHuge)
    madvise(p, size, MADV_HUGEPAGE);  // advice only: failure changes nothing
#endif
  return p;
}

class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(std::size_t floats) { resize(floats); }

  // Grows (never shrinks); contents are not preserved.
  void resize(std::size_t floats) {
    if (floats <= size_) return;
    void* p = allocate_aligned(floats * sizeof(float));
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
