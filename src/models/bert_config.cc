// BertConfig: the fields of a Hugging Face config.json the encoder needs.
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "io/file.h"
#include "mha/bert.h"
#include "mha/errors.h"

namespace mha {

namespace {

using json = nlohmann::json;

std::int64_t field(const json& j, const std::string& name, const char* key, std::int64_t fallback,
                   bool required) {
  const auto it = j.find(key);
  if (it == j.end()) {
    if (required) throw IoError(name, fmt::format("{}: config has no \"{}\"", name, key));
    return fallback;
  }
  if (!it->is_number_integer())
    throw IoError(name, fmt::format("{}: \"{}\" is {}, expected an integer", name, key, it->dump()));
  return it->get<std::int64_t>();
}

std::string text_field(const json& j, const char* key, const char* fallback) {
  const auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : fallback;
}

}  // namespace

BertConfig BertConfig::parse_json(std::string_view text, const std::string& name) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw IoError(name, fmt::format("{}: malformed JSON: {}", name, e.what()));
  }
  if (!j.is_object()) throw IoError(name, fmt::format("{}: expected a JSON object", name));
  // BERT's own activation is the exact-erf GELU; the tanh approximation and others would need
  // another epilogue, so they are refused rather than silently computed differently.
  if (const std::string act = text_field(j, "hidden_act", "gelu"); act != "gelu")
    throw Unsupported(name, fmt::format("{}: hidden_act \"{}\", only \"gelu\" (exact erf) is supported", name, act));
  if (const std::string pos = text_field(j, "position_embedding_type", "absolute"); pos != "absolute")
    throw Unsupported(name, fmt::format("{}: position_embedding_type \"{}\", only \"absolute\" is supported",
                                        name, pos));
  BertConfig c;
  c.vocab_size = field(j, name, "vocab_size", 0, true);
  c.hidden = field(j, name, "hidden_size", 0, true);
  c.layers = field(j, name, "num_hidden_layers", 0, true);
  c.heads = field(j, name, "num_attention_heads", 0, true);
  c.intermediate = field(j, name, "intermediate_size", 0, true);
  c.max_positions = field(j, name, "max_position_embeddings", c.max_positions, false);
  c.type_vocab_size = field(j, name, "type_vocab_size", c.type_vocab_size, false);
  if (const auto it = j.find("layer_norm_eps"); it != j.end()) {
    if (!it->is_number())
      throw IoError(name, fmt::format("{}: \"layer_norm_eps\" is {}, expected a number", name, it->dump()));
    c.layer_norm_eps = it->get<double>();
  }
  c.validate();
  return c;
}

BertConfig BertConfig::load(const std::string& path) {
  const std::vector<std::uint8_t> bytes = detail::read_file(path, "config");
  return parse_json(std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()), path);
}

void BertConfig::validate() const {
  auto positive = [](const char* name, std::int64_t v) {
    if (v < 1) throw InvalidArgument(name, fmt::format("BertConfig: {} = {}, expected >= 1", name, v));
  };
  positive("vocab_size", vocab_size);
  positive("hidden", hidden);
  positive("layers", layers);
  positive("heads", heads);
  positive("intermediate", intermediate);
  positive("max_positions", max_positions);
  positive("type_vocab_size", type_vocab_size);
  if (hidden % heads != 0)
    throw InvalidArgument("heads", fmt::format("BertConfig: heads = {} does not divide hidden = {}", heads, hidden));
  if (!(layer_norm_eps > 0))
    throw InvalidArgument("layer_norm_eps",
                          fmt::format("BertConfig: layer_norm_eps = {}, expected > 0", layer_norm_eps));
}

}  // namespace mha
