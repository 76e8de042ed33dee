#include "runtime/thread_pool.h"

#include <chrono>
#include <memory>
#include <thread>

#include "mha/errors.h"
#include "mha/runtime.h"

namespace mha::detail {

namespace {
thread_local bool t_inside_body = false;

constexpr double kSpinMicros = 200;

void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#else
  std::this_thread::yield();
#endif
}

// Polls `done` for up to kSpinMicros; whether it came true.
template <class Pred>
bool spin_until(const Pred& done) {
  const auto start = std::chrono::steady_clock::now();
  for (;;) {
    for (int i = 0; i < 64; ++i) {
      if (done()) return true;
      cpu_relax();
    }
    if (std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count() > kSpinMicros)
      return done();
  }
}
}  // namespace

ThreadPool::ThreadPool(int threads) {
  if (threads < 1) threads = 1;
  workers_.reserve(std::size_t(threads - 1));
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { worker_loop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard lock(mutex_);
    stop_.store(true, std::memory_order_release);
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::drain() {
  t_inside_body = true;
  for (;;) {
    const std::int64_t i = next_.fetch_add(1, std::memory_order_relaxed);
    if (i >= count_) break;
    try {
      (*body_)(i);
    } catch (...) {
      std::lock_guard lock(mutex_);
      if (!error_) error_ = std::current_exception();
      next_.store(count_, std::memory_order_relaxed);  // stop handing out items
    }
  }
  t_inside_body = false;
}

void ThreadPool::worker_loop() {
  std::uint64_t seen = 0;
  const auto called = [&] {
    return stop_.load(std::memory_order_acquire) || generation_.load(std::memory_order_acquire) != seen;
  };
  for (;;) {
    if (!spin_until(called)) {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, called);
    }
    {
      std::lock_guard lock(mutex_);  // the loop's body_ and count_ were set under it
      if (stop_.load(std::memory_order_relaxed)) return;
      seen = generation_.load(std::memory_order_relaxed);
    }
    drain();
    if (busy_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      std::lock_guard lock(mutex_);  // a caller that went to sleep checks busy_ under it
      done_.notify_one();
    }
  }
}

void ThreadPool::parallel_for(std::int64_t n, const Body& body) {
  if (n <= 0) return;
  if (t_inside_body || workers_.empty() || n == 1) {
    for (std::int64_t i = 0; i < n; ++i) body(i);
    return;
  }
  std::lock_guard run(run_mutex_);
  {
    std::lock_guard lock(mutex_);
    body_ = &body;
    count_ = n;
    next_.store(0, std::memory_order_relaxed);
    error_ = nullptr;
    busy_.store(int(workers_.size()), std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_release);
  }
  wake_.notify_all();
  drain();
  const auto finished = [&] { return busy_.load(std::memory_order_acquire) == 0; };
  std::exception_ptr error;
  const bool spun = spin_until(finished);
  {
    std::unique_lock lock(mutex_);
    if (!spun) done_.wait(lock, finished);
    body_ = nullptr;
    error = error_;
  }
  if (error) std::rethrow_exception(error);
}

namespace {
std::mutex g_pool_mutex;
std::shared_ptr<ThreadPool> g_pool;
int g_threads = 0;

int hardware_threads() {
  const unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : int(n);
}
}  // namespace

std::shared_ptr<ThreadPool> global_pool() {
  std::lock_guard lock(g_pool_mutex);
  if (!g_pool) {
    if (g_threads == 0) g_threads = hardware_threads();
    g_pool = std::make_shared<ThreadPool>(g_threads);
  }
  return g_pool;
}

}  // namespace mha::detail

namespace mha {

void set_num_threads(int n) {
  if (n < 1 || n > 1024) {
    throw InvalidArgument("threads",
                          "set_num_threads: threads = " + std::to_string(n) + ", expected 1 to 1024");
  }
  std::lock_guard lock(detail::g_pool_mutex);
  if (n == detail::g_threads && detail::g_pool) return;
  detail::g_pool.reset();  // calls running on the old pool keep it until they return
  detail::g_threads = n;
}

int num_threads() {
  std::lock_guard lock(detail::g_pool_mutex);
  return detail::g_threads == 0 ? detail::hardware_threads() : detail::g_threads;
}

}  // namespace mha
