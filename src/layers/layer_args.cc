#include "layers/layer_args.h"

#include <fmt/format.h>

#include "api/validate.h"
#include "mha/errors.h"
#include "mha/layers.h"
#include "runtime/dtype_convert.h"

namespace mha::detail {

void check_activation(const char* func, const char* name, const Tensor& t,
                      std::initializer_list<std::int64_t> shape) {
  // Messages are built only on failure: steady-state calls allocate nothing.
  auto message = [&] {
    return fmt::format("{}: {} is {}, expected [{}] f32 contiguous", func, name, t.describe(),
                       fmt::join(shape, ", "));
  };
  if (t.rank < 1 || t.rank > Tensor::kMaxRank) throw InvalidArgument(name, message());
  check_view(func, name, t, 1, Tensor::kMaxRank);
  if (t.dtype != DType::f32) throw Unsupported(name, message());
  bool ok = t.rank == int(shape.size()) && is_c_contiguous(t);
  for (int i = 0; ok && i < t.rank; ++i) ok = t.shape[std::size_t(i)] == shape.begin()[i];
  if (!ok) throw InvalidArgument(name, message());
}

void round_weights(std::vector<float>& w, DType dtype) {
  for (float& x : w) x = round_to(dtype, x);
}

void fuse_qkv(const MultiHeadAttentionWeights& w, std::vector<float>& w_qkv, std::vector<float>& b_qkv) {
  for (auto* m : {&w.w_query, &w.w_key, &w.w_value}) w_qkv.insert(w_qkv.end(), m->begin(), m->end());
  for (auto* b : {&w.b_query, &w.b_key, &w.b_value}) b_qkv.insert(b_qkv.end(), b->begin(), b->end());
}

void check_weight(const char* func, const std::string& name, const std::vector<float>& w, std::int64_t size) {
  if (std::int64_t(w.size()) != size)
    throw InvalidArgument(name,
                          fmt::format("{}: {} has {} elements, expected {}", func, name, w.size(), size));
}

}  // namespace mha::detail
