// A fixed set of worker threads running one data-parallel loop at a time.
//
// Threads spin a little before they sleep: a worker that has finished its items watches for the
// next loop for kSpinMicros, and the caller watches for the workers to finish as long, before
// either blocks on a condition variable. Waking a sleeping thread took 40-50 µs on a 2-vCPU cloud
// guest (a parallel_for of two 300 µs items: 345 µs median), which is a tenth of a decoding step;
// back-to-back calls (decoding steps, a layer's kernels) now find the workers awake.
//
// Determinism does not come from the pool: callers give every item its own output and never
// combine across items in thread order. The pool only decides which thread runs an item.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace mha::detail {

// A non-owning reference to a callable taking an item index. Unlike std::function it never
// allocates, so a steady-state call through the pool allocates nothing.
class ItemFn {
 public:
  template <class F>
  ItemFn(const F& f)
      : obj_(&f), call_([](const void* o, std::int64_t i) { (*static_cast<const F*>(o))(i); }) {}
  void operator()(std::int64_t i) const { call_(obj_, i); }

 private:
  const void* obj_;
  void (*call_)(const void*, std::int64_t);
};

class ThreadPool {
 public:
  using Body = ItemFn;

  explicit ThreadPool(int threads);  // threads >= 1, the caller included
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return int(workers_.size()) + 1; }

  // Runs body(i) for every i in [0, n), items handed out in increasing order to whichever thread
  // is free. Returns when all are done; rethrows the first exception thrown by a body. Calls from
  // different threads are serialized; a call from inside a body runs inline.
  void parallel_for(std::int64_t n, const Body& body);

 private:
  void worker_loop();
  void drain();

  std::vector<std::thread> workers_;
  std::mutex run_mutex_;  // one loop at a time

  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  // Written under mutex_; atomic so that spinning threads can watch them without it.
  std::atomic<std::uint64_t> generation_{0};
  std::atomic<int> busy_{0};
  std::atomic<bool> stop_{false};

  const Body* body_ = nullptr;
  std::int64_t count_ = 0;
  std::atomic<std::int64_t> next_{0};
  std::exception_ptr error_;
};

// The process-wide pool, sized by mha::set_num_threads (default: hardware concurrency). Callers
// hold the returned pointer for the length of their call: set_num_threads replaces the global pool
// without waiting, and the old one ends when its last call has returned.
std::shared_ptr<ThreadPool> global_pool();

}  // namespace mha::detail
