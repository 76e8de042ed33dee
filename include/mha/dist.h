// Tensor parallelism across processes over MPI: libmha_dist (target mha::dist). libmha itself never
// links MPI; this header is the only one that includes <mpi.h>.
//
// The split is Megatron's. Every rank holds the same hidden states x. The QKV projection is
// column-parallel: rank r owns query heads [r·Hq/P, (r+1)·Hq/P) and the KV heads they read (Hkv/P
// of them, or one replica when Hkv < P and P is a multiple of Hkv, as vLLM does), with the matching
// rows of W_q, W_k, W_v and their biases. Attention is local to the rank. The output projection is
// row-parallel: rank r multiplies its heads' context by its columns of W_out, and one all-reduce
// sums the P partial outputs; the bias is added once, after the sum. A decode step is the same with
// each rank's KV cache holding only its KV heads, so the cache capacity grows with the rank count.
//
// Determinism: the all-reduce sums the partials in rank order (0, 1, ..., P−1) on every rank, not
// in whatever order an MPI reduction algorithm picks, so every rank gets the same bits, and every
// run does. Errors never hang: collectives wait at most the communicator's timeout, then throw
// CommError on the ranks that were waiting; a config or weights that differ between ranks, a head
// count the ranks cannot split, or ranks that call different operations throw on every rank.
#pragma once

#include <mpi.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "mha/errors.h"
#include "mha/kv_cache.h"
#include "mha/layers.h"
#include "mha/tensor.h"

namespace mha::dist {

// A collective could not complete: MPI returned an error, or not every rank arrived within the
// timeout (a rank died, is stuck, or called another collective). The communicator is unusable
// afterwards (further calls throw CommError at once).
class CommError : public Error {
  using Error::Error;
};

class Communicator {
 public:
  // Duplicates `comm` (mha's messages never mix with the caller's) with MPI_ERRORS_RETURN on the
  // duplicate. Collective over `comm`. InvalidArgument("comm") when MPI is not initialized or comm
  // is MPI_COMM_NULL; InvalidArgument("timeout") when it is not positive.
  explicit Communicator(MPI_Comm comm = MPI_COMM_WORLD,
                        std::chrono::milliseconds timeout = std::chrono::seconds(60));
  ~Communicator();  // frees the duplicate (not after a CommError: that would wait on the lost rank)
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  MPI_Comm comm() const { return comm_; }
  std::chrono::milliseconds timeout() const { return timeout_; }

  // Collectives: every rank calls them, in the same order.
  // data = Σ_r data_r, summed in rank order on every rank. Every rank passes the same length.
  void allreduce_sum(std::span<float> data);
  // root's bytes into every rank's `data` (the same length everywhere).
  void broadcast(std::span<std::byte> data, int root = 0);
  // Every rank's `value`, in rank order.
  std::vector<std::uint64_t> allgather(std::uint64_t value);
  // Throws InvalidArgument(argument) on every rank unless every rank passed the same value; the
  // message names the first rank that differs from rank 0 and `what`.
  void require_same(std::uint64_t value, const char* argument, const char* what);

  // Seconds spent inside this communicator's collectives since construction or the last reset.
  double comm_seconds() const { return comm_seconds_; }
  void reset_comm_seconds() { comm_seconds_ = 0; }

 private:
  void check_usable(const char* func) const;
  void check(int rc, const char* func);
  void wait(MPI_Request& request, const char* func);

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 0;
  std::chrono::milliseconds timeout_;
  bool broken_ = false;
  double comm_seconds_ = 0;
  std::vector<float> scratch_;  // the all-reduce's received chunks
  std::vector<int> counts_, displs_, recv_counts_, recv_displs_;
};

// The heads a rank owns: query heads [q0, q0 + nq) and KV heads [kv0, kv0 + nkv) of the full model.
struct HeadShard {
  std::int64_t q0 = 0, nq = 0, kv0 = 0, nkv = 0;
  bool kv_replicated = false;  // Hkv < P: the KV head is held by P / Hkv neighbouring ranks
};
// InvalidArgument("heads") when P does not divide Hq; InvalidArgument("kv_heads") when Hkv is
// neither a multiple of P nor a divisor of it.
HeadShard shard_heads(std::int64_t heads, std::int64_t kv_heads, int rank, int size);

// MultiHeadAttention over P ranks. Construction is collective: each rank keeps its shard of the
// weights (the full weights may be dropped afterwards), and a hash of the config and the full
// weights is compared across ranks (InvalidArgument("weights") / ("config") on every rank if any
// differs).
class TensorParallelAttention {
 public:
  TensorParallelAttention(Communicator& comm, const MultiHeadAttentionConfig& config,
                          const MultiHeadAttentionWeights& weights);
  ~TensorParallelAttention();

  const MultiHeadAttentionConfig& config() const { return config_; }
  const HeadShard& shard() const { return shard_; }

  // Collective. x, out: [batch, seq, hidden] f32 contiguous, the same x on every rank; out is the
  // full layer output on every rank (the same bits on every rank). mask and positions as
  // MultiHeadAttention::forward; a mask with a heads dimension of size Hq is sliced to the rank's
  // heads. Bad arguments throw before any communication (InvalidArgument naming them).
  void forward(const Tensor& x, const Tensor& out, const Tensor* mask = nullptr,
               std::span<const std::int32_t> positions = {});

  // The last forward's wall time and the part of it spent in the all-reduce, in seconds.
  double last_seconds() const { return last_seconds_; }
  double last_comm_seconds() const { return last_comm_seconds_; }

 private:
  Communicator& comm_;
  MultiHeadAttentionConfig config_;
  HeadShard shard_;
  std::unique_ptr<MultiHeadAttention> local_;  // the rank's heads; its b_out is zero
  std::vector<float> b_out_;                   // added once, after the sum
  double last_seconds_ = 0, last_comm_seconds_ = 0;
};

// A causal attention layer with a KV cache for decoding, over P ranks: continuous batching as
// DecodeEngine does, with each rank's cache holding only its KV heads. Every method is collective
// and carries rank 0's decision: the ranks first agree on the operation and its sizes (a rank
// calling something else makes every rank throw InvalidArgument("operation")), then run it.
class TensorParallelDecoder {
 public:
  // config: the layer (config.causal is ignored: decoding is causal); cache: the full model's cache
  // (kv_heads = config.kv_heads, head_dim = the layer's); each rank allocates cache.kv_heads / P
  // heads (or one replica) of it. Weights are checked across ranks as TensorParallelAttention does.
  TensorParallelDecoder(Communicator& comm, const MultiHeadAttentionConfig& config,
                        const MultiHeadAttentionWeights& weights, const KvCacheConfig& cache);
  ~TensorParallelDecoder();

  const HeadShard& shard() const { return shard_; }
  const KvCache& cache() const { return *cache_; }  // this rank's heads
  // Active sequences in admission order: the row order of step()'s x and out.
  std::span<const std::int32_t> active() const { return active_; }

  // A prompt x [n, hidden] (f32 contiguous): projects it, writes its K/V at positions [0, n), runs
  // causal prefill attention in chunks of `chunk` tokens (0: one chunk) and writes the layer's
  // output [n, hidden]. Returns the sequence id. CapacityExceeded (on every rank, nothing changed)
  // when the cache cannot hold it.
  std::int32_t admit(const Tensor& x, const Tensor& out, std::int64_t chunk = 0);
  // A sequence whose K/V were computed elsewhere (a prefill node, a cached prefix): k, v
  // [n, Hkv, D] of the full model (f32/f16/bf16); each rank stores its heads. No output.
  std::int32_t admit_kv(const Tensor& k, const Tensor& v);
  // One token for every active sequence: x, out [A, hidden] in the order of active().
  void step(const Tensor& x, const Tensor& out);
  void retire(std::int32_t seq);

  // The last admit/step's wall time and the part of it spent communicating, in seconds.
  double last_seconds() const { return last_seconds_; }
  double last_comm_seconds() const { return last_comm_seconds_; }

 private:
  struct Op;
  void agree(const Op& op);
  // qkv_ [rows, (nq + 2·nkv)·Dh] = x·W_qkvᵀ + b for the rank's heads; sizes ctx_ [rows, nq·Dh].
  void project(const float* x, std::int64_t rows);
  // out = Σ_ranks ctx·W_outᵀ + b_out, ctx [rows, nq·Dh].
  void output(std::int64_t rows, float* out);

  Communicator& comm_;
  MultiHeadAttentionConfig config_;
  HeadShard shard_;
  std::vector<float> w_qkv_, b_qkv_, w_out_, b_out_;
  std::unique_ptr<KvCache> cache_;
  std::unique_ptr<RopeTable> rope_;
  std::vector<std::int32_t> active_, positions_;
  std::vector<float> qkv_, ctx_;
  double last_seconds_ = 0, last_comm_seconds_ = 0;
};

}  // namespace mha::dist
