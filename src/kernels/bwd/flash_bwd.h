// Contract of the flash-attention backward kernels, one implementation per ISA behind one dispatch
// point. Plain declarations and constants only (see attention_params.h).
#pragma once

#include <cstdint>

#include "kernels/attention_params.h"
#include "mha/runtime.h"

namespace mha::detail {

inline constexpr std::int64_t kBwdBlockQ = 64;  // query rows per block
inline constexpr std::int64_t kBwdBlockK = 64;  // keys per block (aligned to 64 in the sequence)
inline constexpr std::int64_t kBwdMaxDim = 256;

// Floats of per-thread scratch: Kᵀ, K, Vᵀ, Q, dO, S/P, dP/dS, dK, dV tiles and a few rows.
inline constexpr std::int64_t kBwdScratchFloats =
    9 * kBwdBlockK * kBwdMaxDim + 2 * kBwdBlockQ * kBwdBlockK + 4 * kBwdBlockK;

struct BackwardParams {
  AttentionParams a;  // q, k, v, mask, options; a.out is the forward's out and a.lse its lse (read)
  const void* dout = nullptr;
  DType dout_dtype = DType::f32;
  std::int64_t dout_stride[4] = {};
  void* dq = nullptr;
  void* dk = nullptr;
  void* dv = nullptr;
  DType dq_dtype = DType::f32, dk_dtype = DType::f32, dv_dtype = DType::f32;
  std::int64_t dq_stride[4] = {}, dk_stride[4] = {}, dv_stride[4] = {};

  // Driver-owned working memory. delta[(batch_index·hq + h)·rows + row] = rowsum(dO ∘ O);
  // dq_acc[chunk·acc_chunk + (batch_index·rows + row)·hq·dp + h·dp + d] holds the chunk's partial
  // dS·K (unscaled), rows = q.shape[1].
  const float* delta = nullptr;
  float* dq_acc = nullptr;
  std::int64_t rows = 0, dp = 0, acc_chunk = 0;
};

// One work item: key blocks [kb_begin, kb_end) of sequence b and KV head kvh, for every query head
// of its group. It owns those rows of dk and dv, and slot `chunk` of dq_acc for the sequence's rows
// of the group's heads.
struct BwdItem {
  std::int64_t b, kvh, kb_begin, kb_end, chunk;
};

// Per ISA: the item kernel, and delta = rowsum(dO ∘ O) of sequence b, head h into p.delta's layout
// (with the item kernel's multiply-add, so dP − delta is exact where the math says 0).
struct FlashBwdKernel {
  void (*item)(const BackwardParams& p, const BwdItem& item, float* scratch);
  void (*delta)(const BackwardParams& p, std::int64_t b, std::int64_t h, float* delta);
};

#define MHA_DECLARE_BWD(ns)                                                        \
  namespace ns {                                                                   \
  void flash_bwd(const BackwardParams&, const BwdItem&, float*);                   \
  void flash_bwd_delta(const BackwardParams&, std::int64_t, std::int64_t, float*); \
  }
MHA_DECLARE_BWD(generic)
MHA_DECLARE_BWD(avx2)
MHA_DECLARE_BWD(avx512)
MHA_DECLARE_BWD(avx512bf16)
#undef MHA_DECLARE_BWD

FlashBwdKernel flash_bwd_kernel(Isa isa);

// Runs the whole call: delta, the items over the global pool, then dq from the partials.
void run_flash_bwd(BackwardParams& p, FlashBwdKernel kernel);

}  // namespace mha::detail
