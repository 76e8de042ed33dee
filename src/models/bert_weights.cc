// BertWeights: BERT's init, and the Hugging Face tensor names for load and save.
#include <fmt/format.h>

#include "check/random.h"
#include "mha/bert.h"
#include "mha/errors.h"

namespace mha {

namespace {

MultiHeadAttentionConfig attention_config(const BertConfig& c) {
  MultiHeadAttentionConfig m;
  m.hidden = c.hidden;
  m.heads = c.heads;
  return m;
}

// One float tensor of the file: its name, shape, and where it lives in BertWeights.
struct Named {
  std::string name;
  std::vector<std::int64_t> shape;
  std::vector<float>* data;
};

// Every tensor except the attention's (MultiHeadAttentionWeights names those), in file order.
std::vector<Named> named(const BertConfig& c, BertWeights& w) {
  const std::int64_t h = c.hidden, i = c.intermediate;
  BertWeights* m = &w;
  std::vector<Named> t = {{"embeddings.word_embeddings.weight", {c.vocab_size, h}, &m->word},
                          {"embeddings.position_embeddings.weight", {c.max_positions, h}, &m->position},
                          {"embeddings.token_type_embeddings.weight", {c.type_vocab_size, h}, &m->token_type},
                          {"embeddings.LayerNorm.weight", {h}, &m->ln_gamma},
                          {"embeddings.LayerNorm.bias", {h}, &m->ln_beta}};
  for (std::size_t n = 0; n < m->layers.size(); ++n) {
    BertLayerWeights& l = m->layers[n];
    const std::string p = fmt::format("encoder.layer.{}.", n);
    t.push_back({p + "attention.output.LayerNorm.weight", {h}, &l.ln1_gamma});
    t.push_back({p + "attention.output.LayerNorm.bias", {h}, &l.ln1_beta});
    t.push_back({p + "intermediate.dense.weight", {i, h}, &l.w_in});
    t.push_back({p + "intermediate.dense.bias", {i}, &l.b_in});
    t.push_back({p + "output.dense.weight", {h, i}, &l.w_out});
    t.push_back({p + "output.dense.bias", {h}, &l.b_out});
    t.push_back({p + "output.LayerNorm.weight", {h}, &l.ln2_gamma});
    t.push_back({p + "output.LayerNorm.bias", {h}, &l.ln2_beta});
  }
  return t;
}

std::int64_t elements(const std::vector<std::int64_t>& shape) {
  std::int64_t n = 1;
  for (std::int64_t d : shape) n *= d;
  return n;
}

}  // namespace

BertWeights BertWeights::random(const BertConfig& config, std::uint64_t seed) {
  config.validate();
  check::Random rng(seed);
  BertWeights w;
  w.layers.resize(std::size_t(config.layers));
  for (const Named& t : named(config, w)) {
    const bool is_norm = t.name.find("LayerNorm") != std::string::npos;
    const bool is_bias = t.name.ends_with(".bias");
    t.data->resize(std::size_t(elements(t.shape)));
    for (float& x : *t.data)
      x = is_norm ? (is_bias ? 0.f : 1.f) : is_bias ? 0.f : float(0.02 * rng.normal());
  }
  for (std::size_t n = 0; n < w.layers.size(); ++n)
    w.layers[n].attention = MultiHeadAttentionWeights::random(attention_config(config), seed + 1 + n);
  return w;
}

BertWeights BertWeights::load(const SafeTensors& file, const BertConfig& config) {
  config.validate();
  // BertModel checkpoints name tensors from the encoder down; BertFor* heads prefix them "bert.".
  const std::string prefix = file.contains("bert.embeddings.word_embeddings.weight") ? "bert." : "";
  BertWeights w;
  w.layers.resize(std::size_t(config.layers));
  for (const Named& t : named(config, w)) *t.data = file.read_f32(prefix + t.name, t.shape);
  for (std::size_t n = 0; n < w.layers.size(); ++n)
    w.layers[n].attention = MultiHeadAttentionWeights::load(file, attention_config(config),
                                                            prefix + fmt::format("encoder.layer.{}.", n));
  return w;
}

std::vector<SafeTensorEntry> BertWeights::entries(const BertConfig& config) const {
  if (std::int64_t(layers.size()) != config.layers)
    throw InvalidArgument("config", fmt::format("BertWeights::entries: {} layers, config says {}",
                                                layers.size(), config.layers));
  std::vector<SafeTensorEntry> out;
  for (const Named& t : named(config, const_cast<BertWeights&>(*this))) {  // read only
    if (std::int64_t(t.data->size()) != elements(t.shape))
      throw InvalidArgument(t.name, fmt::format("BertWeights::entries: {} has {} values, expected {}", t.name,
                                                t.data->size(), elements(t.shape)));
    out.push_back({t.name, DType::f32, t.shape, t.data->data()});
  }
  for (std::size_t n = 0; n < layers.size(); ++n)
    for (SafeTensorEntry& e :
         layers[n].attention.entries(attention_config(config), fmt::format("encoder.layer.{}.", n)))
      out.push_back(std::move(e));
  return out;
}

}  // namespace mha
