// Peak resident memory of one long-sequence attention call, against the budget
// 2 × (bytes of q, k, v and out) + 64 MiB. Default: 32768 tokens, 8 heads, head dim 128, f32,
// causal. Peak RSS is the kernel's ru_maxrss (getrusage), which counts every page touched.
//   long_context_memory [tokens] [heads] [head_dim] [causal 0|1]
#include <fmt/format.h>
#include <sys/resource.h>

#include <chrono>
#include <cstdlib>
#include <vector>

#include "check/random.h"
#include "mha/attention.h"
#include "mha/runtime.h"

int main(int argc, char** argv) {
  const std::int64_t n = argc > 1 ? std::atoll(argv[1]) : 32768;
  const std::int64_t h = argc > 2 ? std::atoll(argv[2]) : 8;
  const std::int64_t d = argc > 3 ? std::atoll(argv[3]) : 128;
  const bool causal = argc > 4 ? std::atoi(argv[4]) != 0 : true;
  const std::size_t elems = std::size_t(n * h * d);
  std::vector<float> q(elems), k(elems), v(elems), out(elems);
  mha::check::Random rng(1);
  for (auto* buf : {&q, &k, &v})
    for (auto& x : *buf) x = float(rng.uniform() * 2 - 1);

  mha::AttentionOptions opt;
  opt.causal = causal;
  const auto t0 = std::chrono::steady_clock::now();
  mha::attention(mha::Tensor::bshd(q.data(), mha::DType::f32, 1, n, h, d),
                 mha::Tensor::bshd(k.data(), mha::DType::f32, 1, n, h, d),
                 mha::Tensor::bshd(v.data(), mha::DType::f32, 1, n, h, d),
                 mha::Tensor::bshd(out.data(), mha::DType::f32, 1, n, h, d), opt);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  const double peak_mib = double(ru.ru_maxrss) / 1024.0;
  const double tensors_mib = 4.0 * double(elems) * 4 / (1024.0 * 1024.0);
  const double budget_mib = 2 * tensors_mib + 64;
  const double flops = mha::attention_flops(mha::Tensor::bshd(q.data(), mha::DType::f32, 1, n, h, d),
                                            mha::Tensor::bshd(k.data(), mha::DType::f32, 1, n, h, d),
                                            mha::Tensor::bshd(v.data(), mha::DType::f32, 1, n, h, d), opt);
  fmt::print("tokens {} heads {} head_dim {} causal {} isa {} threads {}\n", n, h, d, causal,
             mha::to_string(mha::active_isa()), mha::num_threads());
  fmt::print("q+k+v+out {:.1f} MiB, peak RSS {:.1f} MiB, budget 2x+64 = {:.1f} MiB: {}\n", tensors_mib,
             peak_mib, budget_mib, peak_mib <= budget_mib ? "within" : "OVER");
  fmt::print("time {:.1f} s, {:.1f} GFLOP/s\n", seconds, flops / seconds * 1e-9);
  return peak_mib <= budget_mib ? 0 : 1;
}
