// mha attend: attention over .npy files.
#include <fmt/format.h>

#include <optional>

#include "api/validate.h"
#include "commands.h"
#include "io/file.h"
#include "io/npy_write.h"
#include "mha/attention.h"
#include "mha/errors.h"
#include "mha/npy.h"
#include "runtime/dtype_convert.h"

namespace mha::cli {

namespace {

struct AttendArgs {
  std::string q, k, v, out, mask, lse, dtype, layout = "bshd";
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

void run(const AttendArgs& args) {
  if (!args.lse.empty() && detail::same_file(args.lse, args.out))
    throw InvalidArgument(
        "--lse",
        fmt::format("--lse '{}' and --out '{}' are the same file, expected two files", args.lse, args.out));
  const bool bhsd = args.layout == "bhsd";
  const bool varlen = !args.cu_q.empty() || !args.cu_k.empty();
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
  NpyArray mask;
  if (!args.mask.empty()) {
    mask = load_npy(args.mask);
    opt.mask = mask.view();
  }

  // Everything is checked before the output is sized: a v of shape [1, 0, 1, 2^40] holds no bytes
  // but would ask for a 4 TiB output.
  detail::validate_attention("attend", tq, tk, tv, nullptr, opt, nullptr);
  // Output in the input layout; f16 when computing in f16, else f32 (NumPy has no bf16).
  const DType out_dt = dt == DType::f16 ? DType::f16 : DType::f32;
  const std::int64_t B = tq.shape[0], Nq = tq.shape[1], Hq = tq.shape[2], Dv = tv.shape[3];
  std::vector<std::uint8_t> out_bytes(std::size_t(B * Nq * Hq * Dv) * size_of(out_dt));
  const Tensor out = bhsd ? Tensor::bhsd(out_bytes.data(), out_dt, B, Nq, Hq, Dv)
                          : Tensor::bshd(out_bytes.data(), out_dt, B, Nq, Hq, Dv);
  std::vector<float> lse(args.lse.empty() ? 0 : std::size_t(B * Hq * Nq));
  const Tensor tlse = Tensor::contiguous(lse.data(), DType::f32, {B, Hq, Nq});

  attention(tq, tk, tv, out, opt, args.lse.empty() ? nullptr : &tlse);

  // Both outputs are written in full before either replaces its file.
  std::vector<std::int64_t> out_shape =
      bhsd ? std::vector<std::int64_t>{B, Hq, Nq, Dv} : std::vector<std::int64_t>{B, Nq, Hq, Dv};
  if (varlen && q.shape.size() == 3) out_shape.erase(out_shape.begin());
  detail::FileWriter out_file(args.out, "npy");
  detail::write_npy(out_file, out_dt, out_shape, out_bytes.data());
  std::optional<detail::FileWriter> lse_file;
  if (!args.lse.empty()) {
    lse_file.emplace(args.lse, "npy");
    detail::write_npy(*lse_file, DType::f32, {B, Hq, Nq}, lse.data());
    lse_file->close();
  }
  out_file.commit();  // closes first: a failed close renames nothing
  if (lse_file) lse_file->commit();
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
