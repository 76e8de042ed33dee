#include "kernels/ceiling.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <vector>

#include "mha/errors.h"
#include "runtime/aligned_buffer.h"
#include "runtime/thread_pool.h"

namespace mha::detail {

namespace {

using Loop = double (*)(std::int64_t);

Loop peak_loop(Isa isa, PeakKind kind) {
  if (kind == PeakKind::bf16_dot) {
    if (isa != Isa::avx512bf16) throw Unsupported("isa", "the bf16 dot-product ceiling needs isa avx512bf16");
    return &avx512bf16::peak_dot_loop;
  }
  switch (isa) {
    case Isa::avx512bf16:
    case Isa::avx512: return &avx512::peak_fma_loop;
    case Isa::avx2: return &avx2::peak_fma_loop;
    case Isa::generic: break;
  }
  return &generic::peak_fma_loop;
}

// All pool threads run `iters` iterations at once; returns aggregate GFLOP/s. A start barrier
// makes every item run on its own thread (one thread cannot take a second item before all have
// arrived), and the slowest thread's time counts.
double run_once(Loop loop, std::int64_t iters) {
  const std::shared_ptr<ThreadPool> pool = global_pool();
  const int n = pool->size();
  std::atomic<int> arrived{0};
  std::vector<double> seconds(static_cast<std::size_t>(n)), flops(static_cast<std::size_t>(n));
  pool->parallel_for(n, [&](std::int64_t i) {
    arrived.fetch_add(1);
    while (arrived.load() < n) {
    }
    const auto t0 = std::chrono::steady_clock::now();
    flops[std::size_t(i)] = loop(iters);
    seconds[std::size_t(i)] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  });
  double total = 0;
  for (double f : flops) total += f;
  return total / *std::max_element(seconds.begin(), seconds.end()) * 1e-9;
}

using ReadLoop = float (*)(const float*, std::int64_t, int);

ReadLoop read_loop(Isa isa) {
  switch (isa) {
    case Isa::avx512bf16:
    case Isa::avx512: return &avx512::read_loop;
    case Isa::avx2: return &avx2::read_loop;
    case Isa::generic: break;
  }
  return &generic::read_loop;
}

}  // namespace

double measure_read_bandwidth_gbps(Isa isa, const std::vector<ReadRegion>& regions, int runs) {
  const ReadLoop loop = read_loop(isa);
  const std::shared_ptr<ThreadPool> pool = global_pool();
  const int n = pool->size();
  // Each thread's share of a region is whole multiples of 512 floats, so every stream runs full
  // lines; the few bytes left over are not read and not counted.
  std::vector<std::int64_t> share;
  double bytes = 0;
  for (const ReadRegion& r : regions) {
    share.push_back(std::int64_t(r.bytes / sizeof(float)) / n / 512 * 512);
    bytes += double(share.back()) * n * sizeof(float);
  }
  double best = 0;
  for (int r = 0; r < 2 * runs; ++r) {
    const int streams = r % 2 == 0 ? 1 : 8;
    std::atomic<int> arrived{0};
    std::vector<double> seconds(static_cast<std::size_t>(n));
    std::atomic<float> sink{0};
    pool->parallel_for(n, [&](std::int64_t i) {
      arrived.fetch_add(1);
      while (arrived.load() < n) {
      }
      const auto t0 = std::chrono::steady_clock::now();
      float sum = 0;
      for (std::size_t j = 0; j < regions.size(); ++j)
        if (share[j] > 0)
          sum += loop(static_cast<const float*>(regions[j].p) + i * share[j], share[j], streams);
      sink.store(sum, std::memory_order_relaxed);
      seconds[std::size_t(i)] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    });
    best = std::max(best, bytes / *std::max_element(seconds.begin(), seconds.end()) * 1e-9);
  }
  return best;
}

double measure_read_bandwidth_gbps(Isa isa, std::size_t bytes, int runs) {
  const std::shared_ptr<ThreadPool> pool = global_pool();
  const std::int64_t n = pool->size(), slice = std::int64_t(bytes / sizeof(float)) / n / 512 * 512;
  AlignedBuffer buffer(std::size_t(slice * n));
  pool->parallel_for(n, [&](std::int64_t i) {  // touch every page from the thread that reads it
    std::fill(buffer.data() + i * slice, buffer.data() + (i + 1) * slice, 1.0f);
  });
  return measure_read_bandwidth_gbps(isa, {{buffer.data(), std::size_t(slice * n) * sizeof(float)}}, runs);
}

double measure_ceiling_gflops(Isa isa, PeakKind kind, double seconds) {
  const Loop loop = peak_loop(isa, kind);
  // Calibrate the iteration count to about `seconds`, then take the best of seven runs.
  std::int64_t iters = 1 << 14;
  for (;;) {
    const auto t0 = std::chrono::steady_clock::now();
    loop(iters);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (s > seconds / 8 || iters > (std::int64_t(1) << 40)) {
      iters = std::int64_t(double(iters) * seconds / std::max(s, 1e-9));
      break;
    }
    iters *= 4;
  }
  double best = 0;
  for (int r = 0; r < 7; ++r) best = std::max(best, run_once(loop, std::max<std::int64_t>(iters, 1)));
  return best;
}

}  // namespace mha::detail
