"""python -m mha.plot and `mha bench --plot`: bench records drawn as a roofline PNG."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from mha import plot

ROOT = pathlib.Path(__file__).resolve().parents[2]
FORWARD = {"name": "attn", "b": 1, "hq": 2, "hkv": 2, "nq": 256, "nk": 256, "d": 64, "dtype": "f32", "ms": 0.2,
           "gflops": 150.0, "ceiling_gflops": 235.0, "isa": "avx512", "threads": 2, "pass": "forward"}
DECODE = {"name": "decode", "us": 200.0, "gbps": 5.0, "gflops": 20.0, "ceiling_gbps": 32.0,
          "fma_ceiling_gflops": 235.0, "isa": "avx512", "threads": 2}


def test_intensity_counts_each_operand_once():
    x, y = plot.point(FORWARD)
    flops, moved = 150e9 * 0.2e-3, 4 * (2 * 256 * 2 * 64 + 2 * 256 * 2 * 64)
    assert y == 150.0 and x == pytest.approx(flops / moved)
    assert plot.point(DECODE) == (4.0, 20.0)


def test_writes_a_png(tmp_path):
    src = tmp_path / "b.json"
    src.write_text(json.dumps([FORWARD, DECODE, {**FORWARD, "name": "bf16", "dtype": "bf16", "ceiling_gflops": 470}]))
    assert plot.main([str(src), "-o", str(tmp_path / "r.png")]) == 0
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot.main([str(tmp_path / "missing.json"), "-o", str(tmp_path / "x.png")]) == 2
    (tmp_path / "empty.json").write_text("[]")
    assert plot.main([str(tmp_path / "empty.json"), "-o", str(tmp_path / "x.png")]) == 2


def test_cli_bench_plot(tmp_path):
    cli = ROOT / "build" / "mha"
    if not cli.exists():
        pytest.skip("the CLI is not built (scripts/build)")
    png = tmp_path / "r.png"
    subprocess.run([str(cli), "bench", "--shape", "1,2,2,128,128,32", "--min-time", "0.01", "--plot", str(png)],
                   check=True, capture_output=True, env=dict(os.environ, MHA_PYTHON=sys.executable))
    assert png.read_bytes()[:4] == b"\x89PNG" and json.loads((tmp_path / "r.png.json").read_text())[0]["gflops"] > 0
