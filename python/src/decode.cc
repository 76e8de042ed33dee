// KvCache and DecodeEngine for Python. Methods that produce arrays take them as `out` arguments
// (names starting with _); the Python subclasses in mha/decode.py allocate them in the caller's
// array type.
#include <algorithm>
#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "arrays.h"
#include "bindings.h"
#include "mha/decode.h"
#include "mha/errors.h"
#include "mha/kv_cache.h"

namespace mha::py {

namespace {

KvCacheConfig config_of(std::int64_t kv_heads, std::int64_t head_dim, const std::string& dtype,
                        std::int64_t max_seqs, std::int64_t max_seq_len, std::int64_t block_size,
                        std::int64_t num_blocks) {
  return {.kv_heads = kv_heads, .head_dim = head_dim, .dtype = parse_cache_dtype(dtype, "dtype"),
          .max_seqs = max_seqs, .max_seq_len = max_seq_len, .block_size = block_size, .num_blocks = num_blocks};
}

#define MHA_CACHE_ARGS                                                                                   \
  nb::kw_only(), nb::arg("kv_heads"), nb::arg("head_dim"), nb::arg("dtype") = "bf16", nb::arg("max_seqs") = 1, \
      nb::arg("max_seq_len"), nb::arg("block_size") = 0, nb::arg("num_blocks") = 0

std::vector<std::int32_t> to_vector(std::span<const std::int32_t> s) { return {s.begin(), s.end()}; }

// A KvCache (and the DecodeEngine that owns one) may be called from several Python threads, and the
// GIL is released while it works: each call runs f under the cache's lock, the GIL released first
// (so a thread waiting for the lock never holds the GIL that the lock's holder may want back).
// Without it, four threads stepping one engine 500 times each lost 123 of the 2000 tokens: two steps
// read the same lengths and wrote the same positions. Locks are striped by address (no allocation,
// no registry); no call takes two, so sharing one between caches only costs waiting.
std::mutex& lock_of(const KvCache& c) {
  static std::array<std::mutex, 64> locks;
  return locks[reinterpret_cast<std::uintptr_t>(&c) / alignof(KvCache) % locks.size()];
}

template <class F>
auto locked(const KvCache& c, F&& f) {
  nb::gil_scoped_release release;
  const std::lock_guard<std::mutex> lock(lock_of(c));
  return f();
}

}  // namespace

void bind_decode(nb::module_& m) {
  m.def(
      "attention_with_kvcache",
      [](const InArray& q, const OutArray& k_cache, const OutArray& v_cache, const InArray& cache_seqlens,
         const OutArray& out, const std::optional<OutArray>& lse, const std::optional<InArray>& k,
         const std::optional<InArray>& v, const std::optional<InArray>& rotary_cos,
         const std::optional<InArray>& rotary_sin, bool rotary_interleaved, const std::optional<InArray>& block_table,
         std::optional<float> scale, bool causal, std::int64_t window_left, std::int64_t window_right) {
        const Tensor tq = tensor_of(q, "q", "bshd", "bshd"), tkc = tensor_of(k_cache, "k_cache", "bshd", "bshd"),
                     tvc = tensor_of(v_cache, "v_cache", "bshd", "bshd"), to = tensor_of(out, "out", "bshd", "bshd");
        std::optional<Tensor> tl, tk, tv, tcos, tsin;
        if (lse) tl = tensor_of(*lse, "lse", "bhs", "bhs");
        if (k) tk = tensor_of(*k, "k", "bshd", "bshd");
        if (v) tv = tensor_of(*v, "v", "bshd", "bshd");
        if (rotary_cos) tcos = tensor_of(*rotary_cos, "rotary_cos", "pr", "pr");
        if (rotary_sin) tsin = tensor_of(*rotary_sin, "rotary_sin", "pr", "pr");
        KvCacheCallOptions o{.scale = scale, .causal = causal, .window_left = window_left,
                             .window_right = window_right, .k_new = tk ? &*tk : nullptr, .v_new = tv ? &*tv : nullptr,
                             .rotary_cos = tcos ? &*tcos : nullptr, .rotary_sin = tsin ? &*tsin : nullptr,
                             .rotary_interleaved = rotary_interleaved};
        if (block_table) o.block_table = int32_span(*block_table, "block_table");
        const auto lens = int32_span(cache_seqlens, "cache_seqlens");
        nb::gil_scoped_release release;
        attention_with_kvcache(tq, tkc, tvc, lens, to, o, tl ? &*tl : nullptr);
      },
      nb::arg("q"), nb::arg("k_cache"), nb::arg("v_cache"), nb::arg("cache_seqlens"), nb::arg("out"),
      nb::arg("lse").none() = nb::none(), nb::arg("k").none() = nb::none(), nb::arg("v").none() = nb::none(),
      nb::arg("rotary_cos").none() = nb::none(), nb::arg("rotary_sin").none() = nb::none(),
      nb::arg("rotary_interleaved") = true, nb::arg("block_table").none() = nb::none(),
      nb::arg("scale").none() = nb::none(), nb::arg("causal") = false, nb::arg("window_left") = -1,
      nb::arg("window_right") = -1,
      "mha::attention_with_kvcache on array views: appends k, v into the caches in place and writes out.");
  nb::class_<KvCache>(m, "KvCache",
                      "One layer's K and V for many sequences, contiguous (block_size = 0) or paged; "
                      "dtype 'f32', 'f16', 'bf16' or 'int8' (per-token scales).")
      .def(
          "__init__",
          [](KvCache* self, std::int64_t kv_heads, std::int64_t head_dim, const std::string& dtype,
             std::int64_t max_seqs, std::int64_t max_seq_len, std::int64_t block_size,
             std::int64_t num_blocks) {
            new (self) KvCache(config_of(kv_heads, head_dim, dtype, max_seqs, max_seq_len, block_size, num_blocks));
          },
          MHA_CACHE_ARGS)
      .def_prop_ro("kv_heads", [](const KvCache& c) { return c.config().kv_heads; })
      .def_prop_ro("head_dim", [](const KvCache& c) { return c.config().head_dim; })
      .def_prop_ro("dtype", [](const KvCache& c) { return std::string(to_string(c.config().dtype)); })
      .def_prop_ro("paged", &KvCache::paged)
      .def_prop_ro("free_blocks", [](const KvCache& c) { return locked(c, [&] { return c.free_blocks(); }); })
      .def_prop_ro("total_blocks", &KvCache::total_blocks)
      .def_prop_ro("nbytes", &KvCache::bytes)
      .def(
          "add_sequence", [](KvCache& c) { return locked(c, [&] { return c.add_sequence(); }); },
          "A free sequence id (CapacityExceededError when none).")
      .def(
          "free_sequence", [](KvCache& c, std::int32_t seq) { locked(c, [&] { c.free_sequence(seq); }); },
          nb::arg("seq"))
      .def(
          "active",
          [](const KvCache& c, std::int32_t seq) { return locked(c, [&] { return c.active(seq); }); },
          nb::arg("seq"))
      .def(
          "length",
          [](const KvCache& c, std::int32_t seq) { return locked(c, [&] { return c.length(seq); }); },
          nb::arg("seq"))
      .def(
          "truncate",
          [](KvCache& c, std::int32_t seq, std::int64_t length) {
            locked(c, [&] { c.truncate(seq, length); });
          },
          nb::arg("seq"), nb::arg("length"))
      .def(
          "block_table",
          [](const KvCache& c, std::int32_t seq) {
            return locked(c, [&] { return to_vector(c.block_table(seq)); });
          },
          nb::arg("seq"))
      .def(
          "fill",
          [](KvCache& c, std::int32_t seq, const InArray& k, const InArray& v) {
            const Tensor tk = tensor_of(k, "k", "shd", "shd"), tv = tensor_of(v, "v", "shd", "shd");
            locked(c, [&] { c.fill(seq, tk, tv); });
          },
          nb::arg("seq"), nb::arg("k"), nb::arg("v"), "Writes k, v [n, Hkv, D] at positions [0, n) of seq.")
      .def(
          "append",
          [](KvCache& c, const InArray& seqs, const InArray& k, const InArray& v) {
            const auto s = int32_span(seqs, "seqs");
            const Tensor tk = tensor_of(k, "k", "bshd", "bshd"), tv = tensor_of(v, "v", "bshd", "bshd");
            locked(c, [&] { c.append(s, tk, tv); });
          },
          nb::arg("seqs"), nb::arg("k"), nb::arg("v"),
          "Appends k, v [len(seqs), n, Hkv, D] at each sequence's length (all or nothing).")
      .def(
          "read",
          [](const KvCache& c, std::int32_t seq, std::int64_t begin, std::optional<std::int64_t> end) {
            std::size_t shape[3] = {0, std::size_t(c.config().kv_heads), std::size_t(c.config().head_dim)};
            std::unique_ptr<float[]> k, v;
            locked(c, [&] {  // the length and the rows, read under one lock
              const std::int64_t stop = end.value_or(c.length(seq));
              shape[0] = std::size_t(std::max<std::int64_t>(stop - begin, 0));
              k.reset(new float[shape[0] * shape[1] * shape[2]]);
              v.reset(new float[shape[0] * shape[1] * shape[2]]);
              c.read(seq, begin, stop, k.get(), v.get());
            });
            nb::capsule own_k(k.get(), [](void* p) noexcept { delete[] static_cast<float*>(p); });
            float* kp = k.release();
            nb::capsule own_v(v.get(), [](void* p) noexcept { delete[] static_cast<float*>(p); });
            float* vp = v.release();
            return nb::make_tuple(nb::ndarray<nb::numpy, float>(kp, 3, shape, own_k),
                                  nb::ndarray<nb::numpy, float>(vp, 3, shape, own_v));
          },
          nb::arg("seq"), nb::arg("begin") = 0, nb::arg("end").none() = nb::none(),
          "Tokens [begin, end) of a sequence (end: its length) as float32 NumPy arrays [n, Hkv, D] "
          "(int8 dequantized).");

  nb::class_<DecodeEngine>(m, "DecodeEngine",
                           "Continuous batching over one KV cache: admit sequences with their prompt, step "
                           "every active sequence one token at a time, retire them.")
      .def(
          "__init__",
          [](DecodeEngine* self, std::int64_t q_heads, std::int64_t kv_heads, std::int64_t head_dim,
             const std::string& dtype, std::int64_t max_seqs, std::int64_t max_seq_len,
             std::int64_t block_size, std::int64_t num_blocks) {
            new (self)
                DecodeEngine(config_of(kv_heads, head_dim, dtype, max_seqs, max_seq_len, block_size, num_blocks), q_heads);
          },
          nb::kw_only(), nb::arg("q_heads"), nb::arg("kv_heads"), nb::arg("head_dim"),
          nb::arg("dtype") = "bf16", nb::arg("max_seqs") = 1, nb::arg("max_seq_len"),
          nb::arg("block_size") = 0, nb::arg("num_blocks") = 0)
      .def_prop_ro("q_heads", &DecodeEngine::q_heads)
      .def_prop_ro(
          "active",
          [](const DecodeEngine& e) { return locked(e.cache(), [&] { return to_vector(e.active()); }); })
      .def_prop_ro("cache", &DecodeEngine::cache, nb::rv_policy::reference_internal)
      .def("blocks_for", &DecodeEngine::blocks_for, nb::arg("tokens"))
      .def(
          "_admit",
          [](DecodeEngine& e, const InArray& q, const InArray& k, const InArray& v, const OutArray& out,
             std::int64_t chunk) {
            const Tensor tq = tensor_of(q, "q", "shd", "shd"), tk = tensor_of(k, "k", "shd", "shd"),
                         tv = tensor_of(v, "v", "shd", "shd"), to = tensor_of(out, "out", "shd", "shd");
            return locked(e.cache(), [&] { return e.admit(tq, tk, tv, to, chunk); });
          },
          nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("out"), nb::arg("chunk") = 0)
      .def(
          "_step",
          [](DecodeEngine& e, const InArray& q, const InArray& k, const InArray& v, const OutArray& out) {
            const Tensor tq = tensor_of(q, "q", "bshd", "bshd"), tk = tensor_of(k, "k", "bshd", "bshd"),
                         tv = tensor_of(v, "v", "bshd", "bshd"), to = tensor_of(out, "out", "bshd", "bshd");
            locked(e.cache(), [&] { e.step(tq, tk, tv, to); });
          },
          nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("out"))
      .def(
          "retire", [](DecodeEngine& e, std::int32_t seq) { locked(e.cache(), [&] { e.retire(seq); }); },
          nb::arg("seq"));
}

}  // namespace mha::py
