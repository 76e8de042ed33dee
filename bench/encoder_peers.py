#!/usr/bin/env python3
"""mha.SentenceEncoder against sentence-transformers (all-MiniLM-L6-v2), interleaved in one run.

Run through scripts/bench-encoder, which makes a throwaway venv holding sentence-transformers and
torch (peers to measure against, never dependencies of mha) with mha installed beside them.

Two workloads, as issue 14 sets them: 256 real-length sentences of 8 to 256 tokens (mixed, in
random order), and a uniform batch of 32 sentences of exactly 128 tokens. Both libraries get the
same threads and batch_size and include their tokenization. Each round times every contender once
per workload; each keeps its best round. Ratios are throughputs: mha / sentence-transformers.
"""
import argparse
import json
import time

import numpy as np
import sentence_transformers
import torch

import mha

WORDS = ("attention kernels tile queries and keys so that the softmax is computed online without "
         "materializing the score matrix while the accumulator stays in registers for every head of "
         "the model a cat sat on the mat in the sun").split()


def sentences_of_tokens(tokenizer, lengths, rng):
    """Sentences whose token count (with [CLS] and [SEP]) is exactly each of `lengths`."""
    out = []
    for n in lengths:
        words = [WORDS[i] for i in rng.integers(0, len(WORDS), n)]
        while len(tokenizer.encode(" ".join(words)).ids) > n:
            words.pop()
        while len(tokenizer.encode(" ".join(words)).ids) < n:
            words.append("cat")
        out.append(" ".join(words))
    return out


def best_seconds(fn, store, key):
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    store[key] = min(store.get(key, float("inf")), dt)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--json", help="write the results here")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    mha.set_num_threads(a.threads)
    enc = mha.SentenceEncoder()
    st = sentence_transformers.SentenceTransformer(str(enc.model_dir), device="cpu")
    rng = np.random.default_rng(14)
    workloads = {
        "mixed 256 x 8..256 tokens": sentences_of_tokens(enc.tokenizer, rng.integers(8, 257, 256), rng),
        "uniform 32 x 128 tokens": sentences_of_tokens(enc.tokenizer, [128] * 32, rng),
    }
    for name, s in workloads.items():  # the same embeddings first: the comparison is of equal work
        diff = np.abs(enc.encode(s, a.batch_size) - st.encode(s, batch_size=a.batch_size)).max()
        assert diff < 1e-5, f"{name}: mha and sentence-transformers differ by {diff}"
    best = {}
    with torch.inference_mode():
        for _ in range(a.rounds):
            for name, s in workloads.items():
                best_seconds(lambda: enc.encode(s, batch_size=a.batch_size), best, ("mha", name))
                best_seconds(lambda: st.encode(s, batch_size=a.batch_size), best, ("st", name))
    rows = []
    print(f"| workload | mha sentences/s | sentence-transformers {sentence_transformers.__version__} "
          f"(torch {torch.__version__}) sentences/s | mha / ST |")
    print("|---|---|---|---|")
    for name, s in workloads.items():
        m, t = len(s) / best[("mha", name)], len(s) / best[("st", name)]
        rows.append({"workload": name, "mha_sentences_per_s": m, "st_sentences_per_s": t, "ratio": m / t})
        print(f"| {name} | {m:.1f} | {t:.1f} | {m / t:.2f}x |")
    print(f"\n{a.threads} threads, batch_size {a.batch_size}, best of {a.rounds} interleaved rounds, "
          f"tokenization included; mha ISA {mha.active_isa()}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"threads": a.threads, "batch_size": a.batch_size, "rounds": a.rounds, "results": rows}, f,
                      indent=1)


if __name__ == "__main__":
    main()
