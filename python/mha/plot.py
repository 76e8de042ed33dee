"""python -m mha.plot BENCH.json [more.json ...] -o roofline.png: `mha bench` / `mha bench decode`
records as a roofline, one point per shape at its arithmetic intensity and achieved GFLOP/s, under
the ceilings measured in the same runs (the FMA and bf16-dot peaks; the read bandwidth where
`mha bench decode` measured it). Needs matplotlib."""
from __future__ import annotations

import argparse
import json
import sys

_SIZE = {"f32": 4, "f16": 2, "bf16": 2, "int8": 1}


def point(r: dict) -> tuple[float, float]:
    """(FLOP per byte, GFLOP/s) of one record."""
    if "us" in r:  # a decode step: its own byte and FLOP rates
        return r["gflops"] / r["gbps"], r["gflops"]
    e = _SIZE.get(r.get("dtype", "f32"), 4)
    b, nq, nk, hq, hkv, d = (r[k] for k in ("b", "nq", "nk", "hq", "hkv", "d"))
    moved = e * (2 * b * nq * hq * d + 2 * b * nk * hkv * d)  # q and out, k and v: each once
    if r.get("pass") == "backward":
        moved *= 2
    return r["gflops"] * r["ms"] * 1e6 / moved, r["gflops"]


def roofline(records: list[dict], out: str, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not records:
        raise ValueError("records: no benchmark records to plot")
    pts = [point(r) for r in records]
    fig, ax = plt.subplots(figsize=(9, 6))
    xs = [x for x, _ in pts]
    lo, hi = min(xs) / 2, max(xs) * 2
    peaks = {}
    for r in records:
        fma = r.get("fma_ceiling_gflops", r.get("ceiling_gflops") if r.get("dtype", "f32") != "bf16" else None)
        if fma:
            peaks["fp32 FMA peak"] = max(peaks.get("fp32 FMA peak", 0), fma)
        if r.get("dtype") == "bf16" and "ceiling_gflops" in r:
            peaks["bf16 dot peak"] = max(peaks.get("bf16 dot peak", 0), r["ceiling_gflops"])
    bandwidth = max((r["ceiling_gbps"] for r in records if "ceiling_gbps" in r), default=None)
    for name, peak in peaks.items():
        if bandwidth:
            ridge = peak / bandwidth
            ax.plot([max(lo, ridge), hi], [peak, peak], "-", color="gray")
            ax.text(hi, peak, f" {name} {peak:.0f}", va="center", fontsize=8)
        else:
            ax.axhline(peak, color="gray")
            ax.text(hi, peak, f" {name} {peak:.0f}", va="center", fontsize=8)
    if bandwidth:
        top = max(peaks.values(), default=bandwidth * hi)
        ax.plot([lo, top / bandwidth], [bandwidth * lo, top], "-", color="gray")
        ax.text(lo, bandwidth * lo, f"read {bandwidth:.0f} GB/s ", ha="right", fontsize=8)
    for (x, y), r in zip(pts, records):
        ax.plot(x, y, "o")
        ax.annotate(r["name"], (x, y), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / byte of q, k, v, out or of cache read)")
    ax.set_ylabel("achieved GFLOP/s")
    isa = {r.get("isa") for r in records}
    threads = {r.get("threads") for r in records}
    ax.set_title(title or f"mha roofline ({', '.join(map(str, isa))}, {', '.join(map(str, threads))} threads)")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mha.plot", description=__doc__)
    p.add_argument("json", nargs="+", help="records written by mha bench --json / mha bench decode --json")
    p.add_argument("-o", "--out", default="roofline.png")
    p.add_argument("--title", default="")
    a = p.parse_args(argv)
    try:
        records = []
        for path in a.json:
            with open(path) as f:
                records += json.load(f)
        roofline(records, a.out, a.title)
    except ImportError:
        print("mha.plot: error: matplotlib is not installed (pip install matplotlib)", file=sys.stderr)
        return 2
    except (OSError, ValueError, KeyError) as e:
        print(f"mha.plot: error: {e!r}", file=sys.stderr)
        return 2
    print(f"{len(records)} records -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
