// mha attend: attention over .npy files.
#include <fmt/format.h>

#include <deque>
#include <optional>
#include <utility>

#include "api/validate.h"
#include "commands.h"
#include "options.h"
#include "io/file.h"
#include "io/npy_write.h"
#include "mha/attention.h"
#include "mha/backward.h"
#include "mha/errors.h"
#include "mha/npy.h"
#include "runtime/dtype_convert.h"

namespace mha::cli {

namespace {

struct AttendArgs {
  std::string q, k, v, out, mask, lse, dtype, layout = "bshd";
  std::string dout, dq, dk, dv;  // the backward: dout in, gradients out
  float dropout = 0.0f;
  std::uint64_t seed = 0, offset = 0;
  bool causal = false;
  std::vector<std::int64_t> window;
  std::optional<float> scale;
  std::vector<std::int32_t> cu_q, cu_k;
};

// Rounds an array to `dt` in place of its storage (f32/f16 files to f32/f16/bf16 buffers).
void convert(NpyArray& a, DType dt) {
  if (a.dtype == dt) return;
  std::vector<std::uint8_t> out(std::size_t(a.numel()) * size_of(dt));
  for (std::int64_t i = 0; i < a.numel(); ++i)
    detail::store_f32(out.data(), dt, i, detail::load_f32(a.bytes.data(), a.dtype, i));
  a.bytes = std::move(out);
  a.dtype = dt;
}

// q/k/v file shapes -> views in the logical order [B, S, H, D].
Tensor input_view(NpyArray& a, const std::string& path, bool bhsd, bool varlen) {
  std::vector<std::int64_t> s = a.shape;
  if (varlen && s.size() == 3) s.insert(s.begin(), 1);  // [total, H, D] -> [1, total, H, D]
  if (s.size() != 4) {
    throw InvalidArgument(path, fmt::format("{}: shape has rank {}, expected 4 ({}){}", path, a.shape.size(),
                                            bhsd ? "[B, H, S, D]" : "[B, S, H, D]",
                                            varlen ? " or 3 ([total, H, D]) with cu_seqlens" : ""));
  }
  return bhsd ? Tensor::bhsd(a.bytes.data(), a.dtype, s[0], s[2], s[1], s[3])
              : Tensor::bshd(a.bytes.data(), a.dtype, s[0], s[1], s[2], s[3]);
}

// Output files: (flag, path) of each one given. No two may name the same file.
std::vector<std::pair<std::string, std::string>> output_files(const AttendArgs& a) {
  std::vector<std::pair<std::string, std::string>> files = {{"--out", a.out}};
  for (const auto& [flag, path] : {std::pair<const char*, const std::string&>{"--lse", a.lse},
                                   {"--dq", a.dq},
                                   {"--dk", a.dk},
                                   {"--dv", a.dv}})
    if (!path.empty()) files.emplace_back(flag, path);
  for (std::size_t i = 0; i < files.size(); ++i)
    for (std::size_t j = 0; j < i; ++j)
      if (detail::same_file(files[i].second, files[j].second))
        throw InvalidArgument(files[i].first, fmt::format("{} '{}' and {} '{}' are the same file, expected two files",
                                                          files[i].first, files[i].second, files[j].first,
                                                          files[j].second));
  return files;
}

// A view in the layout of `like` (same shape and strides) over a new buffer of dtype dt.
Tensor buffer_like(std::vector<std::uint8_t>& storage, const Tensor& like, DType dt, bool bhsd) {
  storage.assign(std::size_t(like.numel()) * size_of(dt), 0);
  const std::int64_t* s = like.shape.data();
  return bhsd ? Tensor::bhsd(storage.data(), dt, s[0], s[1], s[2], s[3])
              : Tensor::bshd(storage.data(), dt, s[0], s[1], s[2], s[3]);
}

// The file shape of a logical [B, S, H, D] view: in the layout, without B for a rank-3 varlen file.
std::vector<std::int64_t> file_shape(const Tensor& t, bool bhsd, bool drop_batch) {
  const std::int64_t* s = t.shape.data();
  std::vector<std::int64_t> shape =
      bhsd ? std::vector<std::int64_t>{s[0], s[2], s[1], s[3]} : std::vector<std::int64_t>{s[0], s[1], s[2], s[3]};
  if (drop_batch) shape.erase(shape.begin());
  return shape;
}

void run(const AttendArgs& args) {
  output_files(args);
  const bool bhsd = args.layout == "bhsd";
  const bool varlen = !args.cu_q.empty() || !args.cu_k.empty();
  const bool backward = !args.dout.empty();
  NpyArray q = load_npy(args.q), k = load_npy(args.k), v = load_npy(args.v);
  if (k.dtype != q.dtype || v.dtype != q.dtype)
    throw InvalidArgument(args.k, fmt::format("q, k and v files have dtypes {}, {}, {}; expected one dtype",
                                              to_string(q.dtype), to_string(k.dtype), to_string(v.dtype)));
  const DType dt = args.dtype.empty() ? q.dtype : parse_dtype(args.dtype, "--dtype");
  for (NpyArray* a : {&q, &k, &v}) convert(*a, dt);
  const Tensor tq = input_view(q, args.q, bhsd, varlen);
  const Tensor tk = input_view(k, args.k, bhsd, varlen);
  const Tensor tv = input_view(v, args.v, bhsd, varlen);

  AttentionOptions opt;
  opt.causal = args.causal;
  if (!args.window.empty()) {
    opt.window_left = args.window[0];
    opt.window_right = args.window[1];
  }
  opt.scale = args.scale;
  opt.cu_seqlens_q = args.cu_q;
  opt.cu_seqlens_k = args.cu_k;
  opt.dropout_p = args.dropout;
  opt.dropout_seed = args.seed;
  opt.dropout_offset = args.offset;
  NpyArray mask;
  if (!args.mask.empty()) {
    mask = load_npy(args.mask);
    opt.mask = mask.view();
  }

  // Everything is checked before the output is sized: a v of shape [1, 0, 1, 2^40] holds no bytes
  // but would ask for a 4 TiB output.
  detail::validate_attention("attend", tq, tk, tv, nullptr, opt, nullptr);
  // Outputs in the input layout; f16 when computing in f16, else f32 (NumPy has no bf16).
  const DType out_dt = dt == DType::f16 ? DType::f16 : DType::f32;
  const std::int64_t B = tq.shape[0], Nq = tq.shape[1], Hq = tq.shape[2], Dv = tv.shape[3];
  std::vector<std::uint8_t> out_bytes(std::size_t(B * Nq * Hq * Dv) * size_of(out_dt));
  const Tensor out = bhsd ? Tensor::bhsd(out_bytes.data(), out_dt, B, Nq, Hq, Dv)
                          : Tensor::bshd(out_bytes.data(), out_dt, B, Nq, Hq, Dv);
  const bool with_lse = !args.lse.empty() || backward;
  std::vector<float> lse(with_lse ? std::size_t(B * Hq * Nq) : 0);
  const Tensor tlse = Tensor::contiguous(lse.data(), DType::f32, {B, Hq, Nq});

  // The backward's dout, in the compute dtype and the layout and shape of out.
  NpyArray dout;
  Tensor tdout;
  if (backward) {
    dout = load_npy(args.dout);
    convert(dout, dt);
    tdout = input_view(dout, args.dout, bhsd, varlen);
  }

  attention(tq, tk, tv, out, opt, with_lse ? &tlse : nullptr);

  std::vector<std::uint8_t> dq_bytes, dk_bytes, dv_bytes;
  Tensor dq, dk, dv;
  if (backward) {
    dq = buffer_like(dq_bytes, tq, out_dt, bhsd);
    dk = buffer_like(dk_bytes, tk, out_dt, bhsd);
    dv = buffer_like(dv_bytes, tv, out_dt, bhsd);
    attention_backward(tq, tk, tv, out, tdout, tlse, dq, dk, dv, opt);
  }

  // Every output is written in full before any replaces its file.
  const bool drop_batch = varlen && q.shape.size() == 3;
  std::deque<detail::FileWriter> files;  // a deque: FileWriter does not move
  const auto write = [&](const std::string& path, DType t, const std::vector<std::int64_t>& shape, const void* data) {
    files.emplace_back(path, "npy");
    detail::write_npy(files.back(), t, shape, data);
    files.back().close();
  };
  write(args.out, out_dt, file_shape(out, bhsd, drop_batch), out_bytes.data());
  if (!args.lse.empty()) write(args.lse, DType::f32, {B, Hq, Nq}, lse.data());
  if (backward) {
    write(args.dq, out_dt, file_shape(dq, bhsd, drop_batch), dq_bytes.data());
    write(args.dk, out_dt, file_shape(dk, bhsd, drop_batch), dk_bytes.data());
    write(args.dv, out_dt, file_shape(dv, bhsd, drop_batch), dv_bytes.data());
  }
  for (detail::FileWriter& f : files) f.commit();  // all closed first: a failed close renames nothing
}

}  // namespace

void add_attend(CLI::App& app) {
  auto args = std::make_shared<AttendArgs>();
  CLI::App* cmd = app.add_subcommand("attend", "out = softmax(scale·q·kᵀ + mask)·v over .npy files");
  cmd->add_option("--q", args->q, "Queries .npy, float32/float16, [B, Nq, Hq, D] (bhsd: [B, Hq, Nq, D])")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--k", args->k, "Keys .npy, [B, Nk, Hkv, D]")->required()->check(CLI::ExistingFile);
  cmd->add_option("--v", args->v, "Values .npy, [B, Nk, Hkv, Dv]")->required()->check(CLI::ExistingFile);
  cmd->add_option("--out", args->out, "Output .npy (float32; float16 when computing in f16)")->required();
  cmd->add_option("--mask", args->mask, "Additive mask .npy, broadcastable to [B, Hq, Nq, Nk]")
      ->check(CLI::ExistingFile);
  cmd->add_flag("--causal", args->causal, "Causal mask, aligned bottom-right");
  cmd->add_option("--window", args->window, "Sliding window LEFT RIGHT (-1: unbounded)")->expected(2);
  cmd->add_option("--scale", args->scale, "Softmax scale (default 1/sqrt(D))");
  cmd->add_option("--dtype", args->dtype,
                  "Compute dtype: f32, f16 or bf16 (inputs rounded to it; default: the files' dtype)")
      ->check(CLI::IsMember({"f32", "f16", "bf16"}));
  cmd->add_option("--lse", args->lse, "Also write the row log-sum-exp .npy, float32 [B, Hq, Nq]");
  cmd->add_option("--dropout", args->dropout, "Dropout probability in [0, 1) (forward and backward)")
      ->check(finite_range(0.0, 1.0));
  cmd->add_option("--seed", args->seed, "Dropout seed: the same seed and offset draw the same keep mask");
  cmd->add_option("--offset", args->offset, "Dropout offset (FlashAttention's Philox offset)");
  CLI::Option* dout = cmd->add_option("--dout", args->dout,
                                      "Backward: gradient of the loss by out .npy (out's shape); needs --dq --dk --dv")
                          ->check(CLI::ExistingFile);
  CLI::Option* dq = cmd->add_option("--dq", args->dq, "Backward: write dL/dq .npy (q's shape, out's dtype)");
  CLI::Option* dk = cmd->add_option("--dk", args->dk, "Backward: write dL/dk .npy (k's shape)");
  CLI::Option* dv = cmd->add_option("--dv", args->dv, "Backward: write dL/dv .npy (v's shape)");
  dout->needs(dq)->needs(dk)->needs(dv);
  for (CLI::Option* g : {dq, dk, dv}) g->needs(dout);
  cmd->add_option("--layout", args->layout, "Layout of q/k/v/out files: bshd or bhsd")
      ->check(CLI::IsMember({"bshd", "bhsd"}));
  cmd->add_option("--cu-seqlens-q", args->cu_q,
                  "Varlen: cumulative query lengths (B+1 values, comma-separated)")
      ->delimiter(',');
  cmd->add_option("--cu-seqlens-k", args->cu_k,
                  "Varlen: cumulative key lengths (B+1 values, comma-separated)")
      ->delimiter(',');
  cmd->callback([args] { run(*args); });
}

}  // namespace mha::cli
