#include "api/validate.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "mha/errors.h"

namespace mha::detail {

namespace {

template <class E = InvalidArgument, class... Args>
[[noreturn]] void fail(const char* func, const std::string& argument, fmt::format_string<Args...> f,
                       Args&&... args) {
  throw E(argument, fmt::format("{}: {}", func, fmt::format(f, std::forward<Args>(args)...)));
}

}  // namespace

Span check_view(const char* func, const std::string& name, const Tensor& t, int min_rank, int max_rank) {
  if (t.rank < min_rank || t.rank > max_rank) {
    if (min_rank == max_rank) fail(func, name, "{} has rank {}, expected rank {}", name, t.rank, min_rank);
    fail(func, name, "{} has rank {}, expected rank {} to {}", name, t.rank, min_rank, max_rank);
  }
  if (t.dtype != DType::f32 && t.dtype != DType::f16 && t.dtype != DType::bf16) {
    fail<Unsupported>(func, name, "{}.dtype = {} is not a dtype mha knows, expected f32, f16 or bf16", name,
                      int(t.dtype));
  }
  std::int64_t numel = 1;
  std::int64_t last = 0;  // offset of the last element, in elements
  for (int i = 0; i < t.rank; ++i) {
    const std::int64_t s = t.shape[std::size_t(i)], st = t.strides[std::size_t(i)];
    if (s < 0) fail(func, name, "{}.shape[{}] = {} is negative, expected >= 0", name, i, s);
    if (st < 0) fail(func, name, "{}.strides[{}] = {} is negative, expected >= 0", name, i, st);
    std::int64_t term = 0;
    if (s > 0 && (__builtin_mul_overflow(s - 1, st, &term) || __builtin_add_overflow(last, term, &last) ||
                  __builtin_mul_overflow(numel, s, &numel))) {
      fail(func, name, "{} {} overflows a 64-bit offset, expected an addressable view", name, t.describe());
    }
    if (s == 0) numel = 0;
  }
  if (numel == 0) return {};
  std::int64_t bytes = 0;
  if (__builtin_add_overflow(last, 1, &bytes) ||
      __builtin_mul_overflow(bytes, std::int64_t(size_of(t.dtype)), &bytes) ||
      bytes > std::numeric_limits<std::int64_t>::max() / 2) {
    fail(func, name, "{} {} overflows a 64-bit byte offset, expected an addressable view", name,
         t.describe());
  }
  if (t.data == nullptr) {
    fail(func, name, "{}.data is null but {} has {} elements, expected a valid pointer", name, name, numel);
  }
  const char* b = static_cast<const char*>(t.data);
  return {b, b + bytes};
}

bool is_c_contiguous(const Tensor& t) {
  for (int i = 0; i < t.rank; ++i)
    if (t.shape[std::size_t(i)] == 0) return true;  // no elements: any strides describe them (NumPy agrees)
  std::int64_t stride = 1;
  for (int i = t.rank - 1; i >= 0; --i) {
    if (t.shape[std::size_t(i)] != 1 && t.strides[std::size_t(i)] != stride) return false;
    stride *= t.shape[std::size_t(i)];
  }
  return true;
}

void check_no_self_overlap(const char* func, const std::string& name, const Tensor& t) {
  std::array<std::pair<std::int64_t, std::int64_t>, Tensor::kMaxRank> dims;  // (stride, size), no allocation
  std::size_t n = 0;
  for (int i = 0; i < t.rank; ++i)
    if (t.shape[std::size_t(i)] == 0) return;  // no elements, nothing written twice
  for (int i = 0; i < t.rank; ++i)
    if (t.shape[std::size_t(i)] > 1) dims[n++] = {t.strides[std::size_t(i)], t.shape[std::size_t(i)]};
  for (std::size_t i = 1; i < n; ++i)  // insertion sort of at most 4 (GCC 12 misreads std::sort here)
    for (std::size_t j = i; j > 0 && dims[j] < dims[j - 1]; --j) std::swap(dims[j], dims[j - 1]);
  std::int64_t span = 1;
  for (std::size_t i = 0; i < n; ++i) {
    const auto [stride, size] = dims[i];
    if (stride < span) {
      fail(func, name, "{} {} has overlapping elements, expected each element stored once", name,
           t.describe());
    }
    span = stride * (size - 1) + span;
  }
}

bool overlaps(const Span& a, const Span& b) {
  return a.begin != a.end && b.begin != b.end && a.begin < b.end && b.begin < a.end;
}

MaskView check_mask(const char* func, const Tensor& m, std::int64_t batch, std::int64_t heads,
                    std::int64_t nq, std::int64_t nk) {
  MaskView view{check_view(func, "mask", m, 1, 4), {}};
  const std::int64_t want[4] = {batch, heads, nq, nk};
  const char* dim_names[4] = {"batch", "heads", "seqlen_q", "seqlen_k"};
  const int pad = 4 - m.rank;
  for (int i = 0; i < 4; ++i) {
    const std::int64_t size = i < pad ? 1 : m.shape[std::size_t(i - pad)];
    const std::int64_t stride = i < pad ? 0 : m.strides[std::size_t(i - pad)];
    if (size != 1 && size != want[i]) {
      fail(func, "mask",
           "mask.shape = {} does not broadcast to [{}, {}, {}, {}]: dim {} ({}) "
           "is {}, expected 1 or {}",
           m.describe(), want[0], want[1], want[2], want[3], i - pad, dim_names[i], size, want[i]);
    }
    view.strides[std::size_t(i)] = size == 1 ? 0 : stride;
  }
  return view;
}

AttentionParams validate_attention(const char* func, const Tensor& q, const Tensor& k, const Tensor& v,
                                   const Tensor* out_arg, const AttentionOptions& o, const Tensor* lse,
                                   std::int64_t max_head_dim) {
  const Span sq = check_view(func, "q", q, 4, 4);
  const Span sk = check_view(func, "k", k, 4, 4);
  const Span sv = check_view(func, "v", v, 4, 4);
  Tensor absent_out;  // stands for the reference's own output: right shape, no memory
  const Tensor& out = out_arg != nullptr ? *out_arg : absent_out;
  const Span so = out_arg != nullptr ? check_view(func, "out", out, 4, 4) : Span{};

  // dtypes
  if (k.dtype != q.dtype)
    fail(func, "k", "k.dtype = {} differs from q.dtype = {}, expected the same dtype", to_string(k.dtype),
         to_string(q.dtype));
  if (v.dtype != q.dtype)
    fail(func, "v", "v.dtype = {} differs from q.dtype = {}, expected the same dtype", to_string(v.dtype),
         to_string(q.dtype));
  if (out_arg != nullptr && out.dtype != DType::f32 && out.dtype != q.dtype)
    fail<Unsupported>(func, "out", "out.dtype = {}, expected f32 or q's {}", to_string(out.dtype),
                      to_string(q.dtype));

  // shapes
  const std::int64_t B = q.shape[0], Nq = q.shape[1], Hq = q.shape[2], D = q.shape[3];
  const std::int64_t Nk = k.shape[1], Hkv = k.shape[2], Dv = v.shape[3];
  if (k.shape[0] != B) fail(func, "k", "k.shape[0] (batch) = {}, expected q.shape[0] = {}", k.shape[0], B);
  if (v.shape[0] != B) fail(func, "v", "v.shape[0] (batch) = {}, expected q.shape[0] = {}", v.shape[0], B);
  if (v.shape[1] != Nk)
    fail(func, "v", "v.shape[1] (seqlen_k) = {}, expected k.shape[1] = {}", v.shape[1], Nk);
  if (v.shape[2] != Hkv)
    fail(func, "v", "v.shape[2] (kv heads) = {}, expected k.shape[2] = {}", v.shape[2], Hkv);
  if (Hq < 1) fail(func, "q", "q.shape[2] (heads) = {}, expected >= 1", Hq);
  if (Hkv < 1) fail(func, "k", "k.shape[2] (kv heads) = {}, expected >= 1", Hkv);
  if (Hq % Hkv != 0)
    fail(func, "k",
         "k.shape[2] (kv heads) = {} does not divide q.shape[2] (heads) = {}, "
         "expected Hq to be a multiple of Hkv",
         Hkv, Hq);
  if (D < 1) fail(func, "q", "q.shape[3] (head dim) = {}, expected 1 to {}", D, max_head_dim);
  if (D > max_head_dim)
    fail<Unsupported>(func, "q", "q.shape[3] (head dim) = {}, expected 1 to {}", D, max_head_dim);
  if (k.shape[3] != D) fail(func, "k", "k.shape[3] (head dim) = {}, expected q.shape[3] = {}", k.shape[3], D);
  if (Dv < 1) fail(func, "v", "v.shape[3] (head dim) = {}, expected 1 to {}", Dv, max_head_dim);
  if (Dv > max_head_dim)
    fail<Unsupported>(func, "v", "v.shape[3] (head dim) = {}, expected 1 to {}", Dv, max_head_dim);
  const std::array<std::int64_t, 4> want_out{B, Nq, Hq, Dv};
  for (int i = 0; i < 4 && out_arg != nullptr; ++i) {
    if (out.shape[std::size_t(i)] != want_out[std::size_t(i)])
      fail(func, "out", "out.shape = {}, expected [{}, {}, {}, {}] ([B, Nq, Hq, Dv])", out.describe(), B, Nq,
           Hq, Dv);
  }

  AttentionParams p;
  p.q = q.data;
  p.k = k.data;
  p.v = v.data;
  p.out = out.data;
  p.in_dtype = q.dtype;
  p.out_dtype = out.dtype;
  for (int i = 0; i < 4; ++i) {
    p.q_stride[i] = q.strides[std::size_t(i)];
    p.k_stride[i] = k.strides[std::size_t(i)];
    p.v_stride[i] = v.strides[std::size_t(i)];
    p.out_stride[i] = out.strides[std::size_t(i)];
  }
  p.batch = B;
  p.hq = Hq;
  p.hkv = Hkv;
  p.nq = Nq;
  p.nk = Nk;
  p.d = D;
  p.dv = Dv;

  // variable-length batches
  const bool varlen = !o.cu_seqlens_q.empty() || !o.cu_seqlens_k.empty();
  if (varlen) {
    const auto& cq = o.cu_seqlens_q;
    const auto& ck = o.cu_seqlens_k;
    if (cq.empty())
      fail(func, "cu_seqlens_q", "cu_seqlens_q is empty but cu_seqlens_k is set, expected both or neither");
    if (ck.empty())
      fail(func, "cu_seqlens_k", "cu_seqlens_k is empty but cu_seqlens_q is set, expected both or neither");
    if (cq.size() < 2)
      fail(func, "cu_seqlens_q", "cu_seqlens_q has {} entries, expected batch + 1 >= 2", cq.size());
    if (ck.size() != cq.size())
      fail(func, "cu_seqlens_k", "cu_seqlens_k has {} entries, expected {} (as cu_seqlens_q)", ck.size(),
           cq.size());
    if (B != 1) fail(func, "q", "q.shape[0] = {} with cu_seqlens, expected 1 (packed sequences)", B);
    const std::pair<const char*, std::span<const std::int32_t>> lists[] = {{"cu_seqlens_q", cq},
                                                                           {"cu_seqlens_k", ck}};
    const std::int64_t totals[] = {Nq, Nk};
    std::int64_t maxima[] = {0, 0};
    for (int l = 0; l < 2; ++l) {
      const auto& [name, cu] = lists[l];
      if (cu[0] != 0) fail(func, name, "{}[0] = {}, expected 0", name, cu[0]);
      for (std::size_t i = 1; i < cu.size(); ++i) {
        if (cu[i] < cu[i - 1])
          fail(func, name, "{}[{}] = {} < {}[{}] = {}, expected non-decreasing offsets", name, i, cu[i], name,
               i - 1, cu[i - 1]);
        maxima[l] = std::max<std::int64_t>(maxima[l], cu[i] - cu[i - 1]);
      }
      if (cu.back() != totals[l])
        fail(func, name, "{}[{}] = {}, expected the packed total {} ({}.shape[1])", name, cu.size() - 1,
             cu.back(), totals[l], l == 0 ? "q" : "k");
    }
    p.cu_q = cq.data();
    p.cu_k = ck.data();
    p.batch = std::int64_t(cq.size()) - 1;
    p.nq = maxima[0];
    p.nk = maxima[1];
  }

  Span smask;
  if (o.mask) {
    const MaskView mask = check_mask(func, *o.mask, p.batch, Hq, p.nq, p.nk);
    smask = mask.span;
    std::copy(mask.strides.begin(), mask.strides.end(), p.mask_stride);
    p.mask = o.mask->data;
    p.mask_dtype = o.mask->dtype;
  }

  // window and causal
  if (o.window_left < -1)
    fail(func, "window_left", "window_left = {}, expected -1 (unbounded) or >= 0", o.window_left);
  if (o.window_right < -1)
    fail(func, "window_right", "window_right = {}, expected -1 (unbounded) or >= 0", o.window_right);
  if (o.causal && o.window_right > 0)
    fail(func, "window_right",
         "window_right = {} with causal = true, expected -1 or 0 (causal "
         "sees no keys to the right)",
         o.window_right);
  // A window reaching past every key of every row is unbounded; clamping it here keeps the kernels'
  // visible-range arithmetic (row + offset ± window) far from int64 overflow.
  const auto bound = [&](std::int64_t w) { return w > p.nq + p.nk ? std::int64_t(-1) : w; };
  p.window_left = bound(o.window_left);
  p.window_right = o.causal ? 0 : bound(o.window_right);

  // scale
  p.scale = o.scale ? *o.scale : float(1.0 / std::sqrt(double(D)));
  if (!std::isfinite(p.scale)) fail(func, "scale", "scale = {}, expected a finite number", p.scale);

  // dropout
  if (!(o.dropout_p >= 0.0f && o.dropout_p < 1.0f))
    fail(func, "dropout_p", "dropout_p = {}, expected a probability in [0, 1)", o.dropout_p);
  if (o.dropout_p > 0.0f && std::uint64_t(p.batch) * std::uint64_t(Hq) > 0xffffffffull)
    fail<Unsupported>(func, "dropout_p", "dropout over batch · heads = {} · {} rows streams, expected < 2^32",
                      p.batch, Hq);
  p.dropout_p = o.dropout_p;
  p.keep_scale = float(1.0 / (1.0 - double(o.dropout_p)));
  p.dropout_seed = o.dropout_seed;
  p.dropout_offset = o.dropout_offset;

  // log-sum-exp output
  Span slse;
  if (lse != nullptr) {
    slse = check_view(func, "lse", *lse, 3, 3);
    if (lse->dtype != DType::f32)
      fail<Unsupported>(func, "lse", "lse.dtype = {}, expected f32", to_string(lse->dtype));
    if (lse->shape[0] != B || lse->shape[1] != Hq || lse->shape[2] != Nq)
      fail(func, "lse", "lse.shape = {}, expected [{}, {}, {}] ([B, Hq, Nq])", lse->describe(), B, Hq, Nq);
    check_no_self_overlap(func, "lse", *lse);
    for (int i = 0; i < 3; ++i) p.lse_stride[i] = lse->strides[std::size_t(i)];
    p.lse = static_cast<float*>(lse->data);
  }

  // outputs must not overlap inputs or each other
  if (out_arg != nullptr) check_no_self_overlap(func, "out", out);
  const std::pair<const char*, Span> inputs[] = {{"q", sq}, {"k", sk}, {"v", sv}, {"mask", smask}};
  for (const auto& [name, span] : inputs) {
    if (overlaps(so, span))
      fail(func, "out", "out overlaps {} in memory, expected a separate output buffer", name);
    if (overlaps(slse, span))
      fail(func, "lse", "lse overlaps {} in memory, expected a separate output buffer", name);
  }
  if (overlaps(slse, so)) fail(func, "lse", "lse overlaps out in memory, expected a separate output buffer");
  return p;
}

}  // namespace mha::detail
