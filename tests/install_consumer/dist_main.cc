// A downstream user of mha::dist: a one-rank tensor-parallel layer equals MultiHeadAttention.
#include <mha/dist.h>

#include <cstdio>
#include <vector>

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rc = 0;
  {
    mha::dist::Communicator comm(MPI_COMM_SELF);
    const mha::MultiHeadAttentionConfig config{.hidden = 16, .heads = 4};
    const auto w = mha::MultiHeadAttentionWeights::random(config, 1);
    std::vector<float> x(2 * 3 * 16, 0.5f), a(x.size()), b(x.size());
    const auto view = [](std::vector<float>& v) { return mha::Tensor::contiguous(v.data(), mha::DType::f32, {2, 3, 16}); };
    mha::dist::TensorParallelAttention(comm, config, w).forward(view(x), view(a));
    mha::MultiHeadAttention(config, w).forward(view(x), view(b));
    for (std::size_t i = 0; i < a.size(); ++i)
      if (a[i] != b[i]) rc = 1;  // one rank: the same products, and a sum of one partial
    std::printf("dist consumer %s\n", rc == 0 ? "ok" : "MISMATCH");
  }
  MPI_Finalize();
  return rc;
}
