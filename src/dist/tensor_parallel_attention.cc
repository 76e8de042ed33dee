// TensorParallelAttention: the rank's heads as a MultiHeadAttention of their own (fused QKV
// projection, flash core, RoPE, plans), whose output projection gives the rank's partial sum; one
// all-reduce and the bias make the layer's output.
#include <fmt/format.h>

#include <chrono>

#include "dist/shard.h"
#include "layers/layer_args.h"
#include "mha/dist.h"

namespace mha::dist {

TensorParallelAttention::TensorParallelAttention(Communicator& comm, const MultiHeadAttentionConfig& config,
                                                 const MultiHeadAttentionWeights& weights)
    : comm_(comm), config_(config.resolved()) {
  constexpr const char* func = "TensorParallelAttention";
  shard_ = shard_heads(config_.heads, config_.kv_heads, comm.rank(), comm.size());
  detail::check_same_model(comm, func, config_, weights);
  local_ = std::make_unique<MultiHeadAttention>(detail::shard_config(config_, shard_),
                                                detail::shard_weights(config_, weights, shard_));
  if (config_.bias) {
    b_out_ = weights.b_out;
    mha::detail::round_weights(b_out_, config_.weight_dtype);
  }
}

TensorParallelAttention::~TensorParallelAttention() = default;

void TensorParallelAttention::forward(const Tensor& x, const Tensor& out, const Tensor* mask,
                                      std::span<const std::int32_t> positions) {
  const auto start = std::chrono::steady_clock::now();
  // A mask with a heads dimension of the full model's Hq: the rank reads its heads' slice.
  Tensor local_mask;
  if (mask != nullptr) {
    local_mask = *mask;
    const int heads_dim = mask->rank - 3;  // [.., heads, seqlen_q, seqlen_k]
    if (heads_dim >= 0 && mask->shape[std::size_t(heads_dim)] == config_.heads && shard_.nq != config_.heads) {
      local_mask.data = static_cast<char*>(mask->data) +
                        shard_.q0 * mask->strides[std::size_t(heads_dim)] * std::int64_t(size_of(mask->dtype));
      local_mask.shape[std::size_t(heads_dim)] = shard_.nq;
    }
  }
  // The partial sum lands in out (every argument is checked first, nothing is sent before).
  local_->forward(x, out, mask != nullptr ? &local_mask : nullptr, positions);
  const double comm_before = comm_.comm_seconds();
  float* o = static_cast<float*>(out.data);
  const std::int64_t rows = x.shape[0] * x.shape[1];
  comm_.allreduce_sum({o, std::size_t(rows * config_.hidden)});
  if (!b_out_.empty())
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t c = 0; c < config_.hidden; ++c) o[r * config_.hidden + c] += b_out_[std::size_t(c)];
  last_comm_seconds_ = comm_.comm_seconds() - comm_before;
  last_seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace mha::dist
