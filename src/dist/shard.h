// What a rank keeps of a MultiHeadAttention: its heads' rows of W_q, W_k, W_v (and biases), its
// heads' columns of W_out; and a hash of the config and full weights that the ranks compare.
#pragma once

#include <cstdint>

#include "mha/dist.h"

namespace mha::dist::detail {

// The rank's layer: `heads` = nq, `kv_heads` = nkv, the head dim made explicit.
MultiHeadAttentionConfig shard_config(const MultiHeadAttentionConfig& resolved, const HeadShard& s);

// The rank's weights; b_out is zeros (the full bias is added once, after the all-reduce).
MultiHeadAttentionWeights shard_weights(const MultiHeadAttentionConfig& resolved,
                                        const MultiHeadAttentionWeights& w, const HeadShard& s);

// FNV-1a over the config's fields and over every weight's size and bits.
std::uint64_t hash_config(const MultiHeadAttentionConfig& resolved);
std::uint64_t hash_weights(const MultiHeadAttentionWeights& w);

// Checks the weights' sizes against the config (InvalidArgument naming the weight), then that every
// rank has the same config and weights (InvalidArgument("config") / ("weights") on every rank).
void check_same_model(Communicator& comm, const char* func, const MultiHeadAttentionConfig& resolved,
                      const MultiHeadAttentionWeights& w);

}  // namespace mha::dist::detail
