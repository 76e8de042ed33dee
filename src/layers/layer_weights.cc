// Weights of the layers: seeded random init, safetensors load, and the entries to save them.
#include <fmt/format.h>

#include <cmath>

#include "check/random.h"
#include "mha/errors.h"
#include "mha/layers.h"

namespace mha {

namespace {

// nn.Linear's init: uniform in ±1/√fan_in for the weight and the bias.
std::vector<float> uniform(std::int64_t n, std::int64_t fan_in, check::Random& rng) {
  const double bound = 1.0 / std::sqrt(double(fan_in));
  std::vector<float> v(static_cast<std::size_t>(n));
  for (float& x : v) x = float((2 * rng.uniform() - 1) * bound);
  return v;
}

SafeTensorEntry entry(const std::string& name, std::vector<std::int64_t> shape,
                      const std::vector<float>& data) {
  return {name, DType::f32, std::move(shape), data.data()};
}

// Names and shapes of a MultiHeadAttention's tensors, in one place for load and save.
struct MhaTensor {
  std::string name;
  std::vector<std::int64_t> shape;
  std::vector<float> MultiHeadAttentionWeights::*field;
};

std::vector<MhaTensor> mha_tensors(const MultiHeadAttentionConfig& config) {
  const MultiHeadAttentionConfig c = config.resolved();
  const std::int64_t q = c.heads * c.head_dim, kv = c.kv_heads * c.head_dim;
  using W = MultiHeadAttentionWeights;
  std::vector<MhaTensor> t = {{"attention.self.query.weight", {q, c.hidden}, &W::w_query},
                              {"attention.self.key.weight", {kv, c.hidden}, &W::w_key},
                              {"attention.self.value.weight", {kv, c.hidden}, &W::w_value},
                              {"attention.output.dense.weight", {c.hidden, q}, &W::w_out}};
  if (c.bias) {
    t.push_back({"attention.self.query.bias", {q}, &W::b_query});
    t.push_back({"attention.self.key.bias", {kv}, &W::b_key});
    t.push_back({"attention.self.value.bias", {kv}, &W::b_value});
    t.push_back({"attention.output.dense.bias", {c.hidden}, &W::b_out});
  }
  return t;
}

const char* const kSelfNames[3] = {"W_query.weight", "W_key.weight", "W_value.weight"};

}  // namespace

SelfAttentionWeights SelfAttentionWeights::random(std::int64_t d_in, std::int64_t d_out, std::uint64_t seed) {
  if (d_in < 1 || d_out < 1)
    throw InvalidArgument(
        "d_in",
        fmt::format("SelfAttentionWeights::random: d_in = {}, d_out = {}, expected >= 1", d_in, d_out));
  check::Random rng(seed);
  SelfAttentionWeights w{d_in, d_out};
  w.w_query = uniform(d_in * d_out, d_in, rng);
  w.w_key = uniform(d_in * d_out, d_in, rng);
  w.w_value = uniform(d_in * d_out, d_in, rng);
  return w;
}

SelfAttentionWeights SelfAttentionWeights::load(const SafeTensors& file, std::int64_t d_in,
                                                std::int64_t d_out, const std::string& prefix) {
  SelfAttentionWeights w{d_in, d_out};
  const std::int64_t shape[2] = {d_out, d_in};
  w.w_query = file.read_f32(prefix + kSelfNames[0], shape);
  w.w_key = file.read_f32(prefix + kSelfNames[1], shape);
  w.w_value = file.read_f32(prefix + kSelfNames[2], shape);
  return w;
}

std::vector<SafeTensorEntry> SelfAttentionWeights::entries(const std::string& prefix) const {
  return {entry(prefix + kSelfNames[0], {d_out, d_in}, w_query),
          entry(prefix + kSelfNames[1], {d_out, d_in}, w_key),
          entry(prefix + kSelfNames[2], {d_out, d_in}, w_value)};
}

MultiHeadAttentionConfig MultiHeadAttentionConfig::resolved() const {
  constexpr const char* func = "MultiHeadAttentionConfig";
  MultiHeadAttentionConfig c = *this;
  auto bad = [&](const char* field, const std::string& what) {
    throw InvalidArgument(field, fmt::format("{}: {}", func, what));
  };
  if (c.hidden < 1) bad("hidden", fmt::format("hidden = {}, expected >= 1", c.hidden));
  if (c.heads < 1) bad("heads", fmt::format("heads = {}, expected >= 1", c.heads));
  if (c.kv_heads == 0) c.kv_heads = c.heads;
  if (c.kv_heads < 1 || c.heads % c.kv_heads != 0)
    bad("kv_heads", fmt::format("kv_heads = {}, expected a divisor of heads = {}", c.kv_heads, c.heads));
  if (c.head_dim == 0) {
    if (c.hidden % c.heads != 0)
      bad("head_dim", fmt::format("head_dim = 0 needs heads = {} to divide hidden = {}", c.heads, c.hidden));
    c.head_dim = c.hidden / c.heads;
  }
  if (c.head_dim < 1) bad("head_dim", fmt::format("head_dim = {}, expected >= 1", c.head_dim));
  if (c.rope) {
    if (c.rope->rotary_dim == 0) c.rope->rotary_dim = c.head_dim;
    if (c.rope->rotary_dim > c.head_dim)
      bad("rope", fmt::format("rope.rotary_dim = {}, expected at most head_dim = {}", c.rope->rotary_dim,
                              c.head_dim));
  }
  return c;
}

MultiHeadAttentionWeights MultiHeadAttentionWeights::random(const MultiHeadAttentionConfig& config,
                                                            std::uint64_t seed) {
  const MultiHeadAttentionConfig c = config.resolved();
  check::Random rng(seed);
  MultiHeadAttentionWeights w;
  for (const MhaTensor& t : mha_tensors(c)) {
    std::int64_t n = 1;
    for (std::int64_t d : t.shape) n *= d;
    const bool is_out =
        t.field == &MultiHeadAttentionWeights::w_out || t.field == &MultiHeadAttentionWeights::b_out;
    w.*t.field = uniform(n, is_out ? c.heads * c.head_dim : c.hidden, rng);
  }
  return w;
}

MultiHeadAttentionWeights MultiHeadAttentionWeights::load(const SafeTensors& file,
                                                          const MultiHeadAttentionConfig& config,
                                                          const std::string& prefix) {
  MultiHeadAttentionWeights w;
  for (const MhaTensor& t : mha_tensors(config)) w.*t.field = file.read_f32(prefix + t.name, t.shape);
  return w;
}

std::vector<SafeTensorEntry> MultiHeadAttentionWeights::entries(const MultiHeadAttentionConfig& config,
                                                                const std::string& prefix) const {
  std::vector<SafeTensorEntry> out;
  for (const MhaTensor& t : mha_tensors(config))
    out.push_back(entry(prefix + t.name, t.shape, this->*t.field));
  return out;
}

}  // namespace mha
