// Communicator: mha's collectives over a duplicated MPI communicator, each bounded by a timeout.
//
// The all-reduce is a reduce-scatter and an all-gather, both as non-blocking MPI collectives that
// this file polls, so a rank that never arrives turns into a CommError instead of a hang:
//   1. MPI_Ialltoallv: rank r receives chunk r of every rank's buffer (P chunks of about n / P);
//   2. rank r sums its P received chunks in rank order 0, 1, ..., P−1 (a fixed bracketing);
//   3. MPI_Iallgatherv: every rank receives every reduced chunk.
// Traffic per rank is 2·(P−1)/P·n floats each way, as a ring all-reduce moves; unlike MPI_Allreduce
// the summation order is fixed, so every rank and every run get the same bits.
#include <fmt/format.h>
#include <sched.h>

#include <algorithm>
#include <chrono>

#include "mha/dist.h"

namespace mha::dist {

namespace {

using Clock = std::chrono::steady_clock;

std::string mpi_error_string(int rc) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS) return fmt::format("MPI error {}", rc);
  return std::string(text, std::size_t(len));
}

}  // namespace

Communicator::Communicator(MPI_Comm comm, std::chrono::milliseconds timeout) : timeout_(timeout) {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (!initialized || finalized)
    throw InvalidArgument("comm", "Communicator: MPI is not initialized (or already finalized), expected "
                                  "MPI_Init to have run");
  if (comm == MPI_COMM_NULL)
    throw InvalidArgument("comm", "Communicator: comm is MPI_COMM_NULL, expected a communicator of at least "
                                  "one rank");
  if (timeout.count() <= 0)
    throw InvalidArgument("timeout",
                          fmt::format("Communicator: timeout = {} ms, expected > 0", timeout.count()));
  check(MPI_Comm_dup(comm, &comm_), "Communicator");
  check(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN), "Communicator");
  check(MPI_Comm_rank(comm_, &rank_), "Communicator");
  check(MPI_Comm_size(comm_, &size_), "Communicator");
  counts_.resize(std::size_t(size_));
  displs_.resize(std::size_t(size_));
  recv_counts_.resize(std::size_t(size_));
  recv_displs_.resize(std::size_t(size_));
}

Communicator::~Communicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (comm_ != MPI_COMM_NULL && !broken_ && !finalized) MPI_Comm_free(&comm_);
}

void Communicator::check_usable(const char* func) const {
  if (broken_)
    throw CommError("comm", fmt::format("{}: rank {}: an earlier collective of this communicator failed; "
                                        "it cannot be used again",
                                        func, rank_));
}

void Communicator::check(int rc, const char* func) {
  if (rc == MPI_SUCCESS) return;
  broken_ = true;
  throw CommError("comm", fmt::format("{}: rank {} of {}: {}", func, rank_, size_, mpi_error_string(rc)));
}

// Polls a non-blocking collective until it completes or the timeout passes. Polling drives Open
// MPI's progress; after the first spins it yields the core, which matters when ranks outnumber cores.
void Communicator::wait(MPI_Request& request, const char* func) {
  const Clock::time_point start = Clock::now(), deadline = start + timeout_;
  for (long spins = 0;; ++spins) {
    int done = 0;
    const int rc = MPI_Test(&request, &done, MPI_STATUS_IGNORE);
    if (rc != MPI_SUCCESS) check(rc, func);
    if (done) break;
    if (Clock::now() > deadline) {
      broken_ = true;  // the request stays pending: freeing it would need the missing ranks
      throw CommError("comm", fmt::format("{}: rank {} of {} waited {} ms for the other ranks, expected "
                                          "every rank to call it (one died, is stuck, or called "
                                          "another collective)",
                                          func, rank_, size_, timeout_.count()));
    }
    if (spins > 1000) sched_yield();
  }
  comm_seconds_ += std::chrono::duration<double>(Clock::now() - start).count();
}

void Communicator::allreduce_sum(std::span<float> data) {
  constexpr const char* func = "Communicator.allreduce_sum";
  check_usable(func);
  const auto n = std::int64_t(data.size());
  if (n > std::int64_t(std::numeric_limits<int>::max()))
    throw InvalidArgument("data", fmt::format("{}: {} floats, expected at most {}", func, n,
                                              std::numeric_limits<int>::max()));
  const std::int64_t P = size_;
  // Chunk r: [r·n/P, (r+1)·n/P).
  for (std::int64_t r = 0; r < P; ++r) {
    const std::int64_t b = r * n / P, e = (r + 1) * n / P;
    counts_[std::size_t(r)] = int(e - b);
    displs_[std::size_t(r)] = int(b);
  }
  const int mine = counts_[std::size_t(rank_)];
  scratch_.resize(std::size_t(P) * std::size_t(std::max(mine, 1)));
  for (std::int64_t r = 0; r < P; ++r) {
    recv_counts_[std::size_t(r)] = mine;
    recv_displs_[std::size_t(r)] = int(r * mine);
  }
  MPI_Request request = MPI_REQUEST_NULL;
  check(MPI_Ialltoallv(data.data(), counts_.data(), displs_.data(), MPI_FLOAT, scratch_.data(),
                       recv_counts_.data(), recv_displs_.data(), MPI_FLOAT, comm_, &request),
        func);
  wait(request, func);
  float* chunk = data.data() + displs_[std::size_t(rank_)];
  std::copy_n(scratch_.data(), mine, chunk);
  for (std::int64_t r = 1; r < P; ++r) {
    const float* part = scratch_.data() + r * mine;
    for (int i = 0; i < mine; ++i) chunk[i] += part[i];
  }
  check(MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_FLOAT, data.data(), counts_.data(), displs_.data(), MPI_FLOAT,
                        comm_, &request),
        func);
  wait(request, func);
}

void Communicator::broadcast(std::span<std::byte> data, int root) {
  constexpr const char* func = "Communicator.broadcast";
  check_usable(func);
  if (root < 0 || root >= size_)
    throw InvalidArgument("root", fmt::format("{}: root = {}, expected a rank in [0, {})", func, root, size_));
  if (data.size() > std::size_t(std::numeric_limits<int>::max()))
    throw InvalidArgument("data", fmt::format("{}: {} bytes, expected at most {}", func, data.size(),
                                              std::numeric_limits<int>::max()));
  MPI_Request request = MPI_REQUEST_NULL;
  check(MPI_Ibcast(data.data(), int(data.size()), MPI_BYTE, root, comm_, &request), func);
  wait(request, func);
}

std::vector<std::uint64_t> Communicator::allgather(std::uint64_t value) {
  constexpr const char* func = "Communicator.allgather";
  check_usable(func);
  std::vector<std::uint64_t> all(static_cast<std::size_t>(size_));
  MPI_Request request = MPI_REQUEST_NULL;
  check(MPI_Iallgather(&value, 1, MPI_UINT64_T, all.data(), 1, MPI_UINT64_T, comm_, &request), func);
  wait(request, func);
  return all;
}

void Communicator::require_same(std::uint64_t value, const char* argument, const char* what) {
  const std::vector<std::uint64_t> all = allgather(value);
  for (int r = 1; r < size_; ++r)
    if (all[std::size_t(r)] != all[0])
      throw InvalidArgument(argument, fmt::format("rank {} of {}: rank {}'s {} differs from rank 0's (hash "
                                                  "{:016x} vs {:016x}), expected the same on every rank",
                                                  rank_, size_, r, what, all[std::size_t(r)], all[0]));
}

}  // namespace mha::dist
