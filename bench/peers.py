#!/usr/bin/env python3
"""mha against its peers, PyTorch SDPA and ONNX Runtime, on the shapes of `mha bench` and
`mha bench decode`, interleaved in one run.

Run through scripts/bench-peers, which makes the throwaway venv holding torch and onnxruntime: they
are peers to measure against, never dependencies of mha.

Each round times, shape by shape, mha (a `mha bench` process for that one shape, which also
measures the machine's ceiling), then PyTorch, then ONNX Runtime. Rounds repeat the whole list, so a
noisy minute hurts every contender alike; each contender keeps its best round (noise only slows).
Ratios are times: mha / best peer > 1 means mha is faster.
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the table says which peer is missing
    torch = None
try:
    import onnxruntime as ort
    from onnx import TensorProto, helper
except ImportError:
    ort = None


def median_ms(fn, budget_s):
    """Median milliseconds of fn over repeats after one warm-up, spending about budget_s seconds
    (the rule of mha's own time_ms)."""
    fn()
    times = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
        if time.perf_counter() - start >= budget_s and len(times) >= 3:
            break
    return statistics.median(times)


def run_mha(mha, args, json_path):
    subprocess.run([mha] + args + ["--json", json_path], check=True, stdout=subprocess.DEVNULL)
    with open(json_path) as f:
        return json.load(f)


# ---------------------------------------------------------------------------------------- forward


def forward_shapes(mha, tmp, backward=False):
    """The default shapes of `mha bench` (or of `mha bench --backward`), read from a short run of it."""
    recs = run_mha(mha, ["bench", "--min-time", "0"] + (["--backward"] if backward else []),
                   os.path.join(tmp, "list.json"))
    return [{k: r[k] for k in ("name", "b", "hq", "hkv", "nq", "nk", "d", "causal", "mask", "dtype")}
            for r in recs]


def mha_forward(mha, s, min_time, tmp, backward=False):
    args = ["bench", "--shape", f"{s['b']},{s['hq']},{s['hkv']},{s['nq']},{s['nk']},{s['d']}",
            "--dtype", s["dtype"], "--mask", s["mask"], "--layout", s.get("layout", "bshd"),
            "--min-time", str(min_time)]
    if s["causal"]:
        args.append("--causal")
    if backward:
        args.append("--backward")
    return run_mha(mha, args, os.path.join(tmp, "fwd.json"))[0]


def padding_bias(valid, nk):
    """[B, Nk] float: 0 where a key is valid, -inf past it (mha bench's padding mask)."""
    bias = np.full((len(valid), nk), -np.inf, dtype=np.float32)
    for b, n in enumerate(valid):
        bias[b, :n] = 0
    return bias


def torch_forward(s, valid, min_time, backward=False):
    if torch is None:
        return None, "torch not installed"
    dt = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[s["dtype"]]
    g = torch.Generator().manual_seed(1)
    q = torch.randn(s["b"], s["hq"], s["nq"], s["d"], generator=g).to(dt)
    k = torch.randn(s["b"], s["hkv"], s["nk"], s["d"], generator=g).to(dt)
    v = torch.randn(s["b"], s["hkv"], s["nk"], s["d"], generator=g).to(dt)
    mask, causal = None, s["causal"]
    if s["causal"] and s["nq"] != s["nk"]:  # mha's causal is bottom-right, torch's is_causal top-left
        mask = torch.ones(s["nq"], s["nk"], dtype=torch.bool).tril(s["nk"] - s["nq"])
        causal = False
    if valid is not None:
        pad = torch.from_numpy(padding_bias(valid, s["nk"])).to(dt)[:, None, None, :]
        mask = pad if mask is None else pad.masked_fill(~mask, -math.inf)
    gqa = s["hq"] != s["hkv"]
    if backward:  # autograd through SDPA: time the backward of one forward graph, kept for reuse
        for x in (q, k, v):
            x.requires_grad_(True)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=gqa)
        grad = torch.randn(out.shape, generator=g).to(dt)
        return median_ms(lambda: torch.autograd.grad(out, (q, k, v), grad, retain_graph=True), min_time), None
    with torch.inference_mode():
        fn = lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                                    enable_gqa=gqa)
        return median_ms(fn, min_time), None


def ort_session(graph, threads):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def ort_forward(s, valid, min_time, threads):
    """com.microsoft MultiHeadAttention, the op ORT's transformer optimizer fuses attention into:
    its CPU kernel runs MLAS's flash loop when there is no mask, and causal through the
    `unidirectional` attribute."""
    if ort is None:
        return None, "onnxruntime not installed"
    if s["dtype"] != "f32":
        return None, "CPU MultiHeadAttention takes f32 only"
    if s["hq"] != s["hkv"]:
        return None, "MultiHeadAttention has no GQA"
    if s["causal"] and s["nq"] != s["nk"]:
        return None, "unidirectional is top-left"
    b, h, nq, nk, d = s["b"], s["hq"], s["nq"], s["nk"], s["d"]
    f = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info("q", f, [b, nq, h * d]),
              helper.make_tensor_value_info("k", f, [b, nk, h * d]),
              helper.make_tensor_value_info("v", f, [b, nk, h * d])]
    names = ["q", "k", "v"]
    feed = {}
    rng = np.random.default_rng(1)
    for n, rows in (("q", nq), ("k", nk), ("v", nk)):
        feed[n] = rng.standard_normal((b, rows, h * d), dtype=np.float32)
    if valid is not None:  # inputs: q, k, v, bias, key_padding_mask
        names += ["", "key_padding_mask"]
        inputs.append(helper.make_tensor_value_info("key_padding_mask", TensorProto.INT32, [b, nk]))
        feed["key_padding_mask"] = (padding_bias(valid, nk) == 0).astype(np.int32)
    node = helper.make_node("MultiHeadAttention", names, ["out"], domain="com.microsoft", num_heads=h,
                            unidirectional=int(s["causal"]))
    graph = helper.make_graph([node], "mha", inputs,
                              [helper.make_tensor_value_info("out", f, [b, nq, h * d])])
    sess = ort_session(graph, threads)
    return median_ms(lambda: sess.run(None, feed), min_time), None


# ----------------------------------------------------------------------------------------- decode

DECODE_SHAPES = [(ctx, hq, hkv, b) for ctx in (4096, 32768) for hq, hkv in ((32, 8), (32, 32), (32, 1))
                 for b in (1, 8)]


def mha_decode(mha, shape, kv_dtype, min_time, tmp):
    ctx, hq, hkv, b = shape
    args = ["bench", "decode", "--context", str(ctx), "--heads", f"{hq}/{hkv}", "--batch", str(b),
            "--kv-dtype", kv_dtype, "--layout", "contiguous", "--min-time", str(min_time)]
    return run_mha(mha, args, os.path.join(tmp, "dec.json"))[0]


def copies_for(bytes_per_copy, working_set_mib=256):
    """As mha bench decode: enough cache copies ("layers") that a pass reads from memory."""
    return max(1, min(256, int(working_set_mib * 1048576 / bytes_per_copy) + 1))


def torch_decode(shape, kv_dtype, d, min_time):
    """SDPA with one query token against a bf16 cache [B, Hkv, ctx, D] per layer (enable_gqa)."""
    if torch is None:
        return None, "torch not installed"
    if kv_dtype != "bf16":
        return None, "no int8 cache"
    ctx, hq, hkv, b = shape
    layers = copies_for(2 * b * hkv * ctx * d * 2)
    base = torch.randn(b, hkv, ctx, d).to(torch.bfloat16)
    ks = [base.clone() for _ in range(layers)]
    vs = [base.clone() for _ in range(layers)]
    q = torch.randn(b, hq, 1, d).to(torch.bfloat16)
    i = [0]

    def step():
        l = i[0]
        F.scaled_dot_product_attention(q, ks[l], vs[l], enable_gqa=hq != hkv)
        i[0] = (l + 1) % layers

    with torch.inference_mode():
        return median_ms(step, min_time), None


def ort_decode(shape, kv_dtype, d, min_time, threads):
    """com.microsoft GroupQueryAttention, ORT's decoding op, with an f16 past cache (bf16's bytes;
    its CPU kernel takes f32 or f16)."""
    if ort is None:
        return None, "onnxruntime not installed"
    if kv_dtype != "bf16":
        return None, "no int8 cache"
    ctx, hq, hkv, b = shape
    h16 = TensorProto.FLOAT16
    past = ctx - 1  # the step appends token ctx-1 and attends to all ctx
    inputs = [helper.make_tensor_value_info("q", h16, [b, 1, hq * d]),
              helper.make_tensor_value_info("k", h16, [b, 1, hkv * d]),
              helper.make_tensor_value_info("v", h16, [b, 1, hkv * d]),
              helper.make_tensor_value_info("past_k", h16, [b, hkv, ctx, d]),
              helper.make_tensor_value_info("past_v", h16, [b, hkv, ctx, d]),
              helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, [b]),
              helper.make_tensor_value_info("total_len", TensorProto.INT32, [])]
    node = helper.make_node("GroupQueryAttention",
                            ["q", "k", "v", "past_k", "past_v", "seqlens_k", "total_len"],
                            ["out", "present_k", "present_v"], domain="com.microsoft", num_heads=hq,
                            kv_num_heads=hkv)
    outs = [helper.make_tensor_value_info("out", h16, [b, 1, hq * d]),
            helper.make_tensor_value_info("present_k", h16, [b, hkv, ctx, d]),
            helper.make_tensor_value_info("present_v", h16, [b, hkv, ctx, d])]
    sess = ort_session(helper.make_graph([node], "gqa", inputs, outs), threads)
    rng = np.random.default_rng(1)
    layers = copies_for(2 * b * hkv * ctx * d * 2)
    cache = rng.standard_normal((b, hkv, ctx, d)).astype(np.float16)
    feeds = []
    for _ in range(layers):
        # Bound as OrtValues so the run reads the cache in place (the present outputs share the
        # past buffers when shapes match), as a decoding loop does.
        pk = ort.OrtValue.ortvalue_from_numpy(cache.copy())
        pv = ort.OrtValue.ortvalue_from_numpy(cache.copy())
        io = sess.io_binding()
        io.bind_cpu_input("q", rng.standard_normal((b, 1, hq * d)).astype(np.float16))
        io.bind_cpu_input("k", rng.standard_normal((b, 1, hkv * d)).astype(np.float16))
        io.bind_cpu_input("v", rng.standard_normal((b, 1, hkv * d)).astype(np.float16))
        io.bind_ortvalue_input("past_k", pk)
        io.bind_ortvalue_input("past_v", pv)
        io.bind_cpu_input("seqlens_k", np.full(b, past, dtype=np.int32))
        io.bind_cpu_input("total_len", np.array(ctx, dtype=np.int32))
        io.bind_output("out")
        io.bind_ortvalue_output("present_k", pk)
        io.bind_ortvalue_output("present_v", pv)
        feeds.append((io, pk, pv))
    i = [0]

    def step():
        sess.run_with_iobinding(feeds[i[0]][0])
        i[0] = (i[0] + 1) % layers

    return median_ms(step, min_time), None


# ---------------------------------------------------------------------------------------- reports


def time_peers(run, **peers):
    """Times each peer (a function returning (ms or None, why not)) into run[name]."""
    for name, fn in peers.items():
        ms, why = fn()
        run[name].append(ms)
        if why:
            run["why"][name] = why


def best(values):
    vals = [v for v in values if v is not None]
    return min(vals) if vals else None


def fmt_pct(x):
    return "—" if x is None else f"{100 * x:.1f}%"


def fmt_ratio(x):
    return "—" if x is None else f"{x:.2f}×"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mha", default="build/mha", help="the mha binary")
    ap.add_argument("--rounds", type=int, default=3, help="passes over the shape list (best counts)")
    ap.add_argument("--min-time", type=float, default=0.5, help="seconds per timing")
    ap.add_argument("--only", choices=["forward", "decode"], help="one of the two tables")
    ap.add_argument("--backward", action="store_true",
                    help="the forward table times the backward instead (mha bench --backward; torch "
                         "autograd through SDPA; ONNX Runtime has no attention backward)")
    ap.add_argument("--shape", action="append", default=[],
                    help="forward shape B,Hq,Hkv,Nq,Nk,D[,causal][,padding][,bf16|f16][,bhsd] instead of "
                         "the standard set (repeatable; bhsd: mha's tensors in PyTorch's layout, as torch's "
                         "always are)")
    ap.add_argument("--decode", action="append", default=[],
                    help="decode shape CONTEXT,HQ/HKV,BATCH instead of the standard set (repeatable)")
    ap.add_argument("--json", help="also write every record here")
    ap.add_argument("--markdown", help="also write the tables here")
    a = ap.parse_args()

    threads = int(os.environ.get("MHA_NUM_THREADS", os.cpu_count()))
    if torch is not None:
        torch.set_num_threads(threads)
    lines = []

    def out(text=""):
        print(text, flush=True)
        lines.append(text)

    records = []
    with tempfile.TemporaryDirectory() as tmp:
        if a.only != "decode":
            if a.shape:
                shapes = []
                for text in a.shape:
                    parts = text.split(",")
                    b, hq, hkv, nq, nk, d = map(int, parts[:6])
                    flags = parts[6:]
                    dtype = next((f for f in flags if f in ("f32", "f16", "bf16")), "f32")
                    shapes.append({"name": "shape_" + text, "b": b, "hq": hq, "hkv": hkv, "nq": nq,
                                   "nk": nk, "d": d, "causal": "causal" in flags,
                                   "mask": "padding" if "padding" in flags else "none", "dtype": dtype,
                                   "layout": "bhsd" if "bhsd" in flags else "bshd"})
            else:
                shapes = forward_shapes(a.mha, tmp, a.backward)
            runs = {s["name"]: {"mha": [], "torch": [], "ort": [], "why": {}} for s in shapes}
            for r in range(a.rounds):
                for s in shapes:
                    m = mha_forward(a.mha, s, a.min_time, tmp, a.backward)
                    run = runs[s["name"]]
                    run["mha"].append(m)
                    valid = m.get("padding_valid_keys")
                    no_ort = lambda: (None, "ONNX Runtime has no attention backward")
                    time_peers(run, torch=lambda: torch_forward(s, valid, a.min_time, a.backward),
                               ort=no_ort if a.backward else lambda: ort_forward(s, valid, a.min_time, threads))
                    print(f"  round {r + 1}/{a.rounds} {s['name']}: mha {m['ms']:.2f} ms, torch "
                          f"{run['torch'][-1]}, ort {run['ort'][-1]}", file=sys.stderr, flush=True)
            out(f"## {'Backward' if a.backward else 'Forward'}: mha vs PyTorch {torch.__version__ if torch else '—'} SDPA and ONNX Runtime "
                f"{ort.__version__ if ort else '—'} MultiHeadAttention ({threads} threads, best of "
                f"{a.rounds} interleaved rounds)")
            out()
            out("| name | dtype | mha ms | torch ms | ort ms | mha of ceiling | torch of ceiling | "
                "ort of ceiling | mha / best peer |")
            out("|---|---|---|---|---|---|---|---|---|")
            for s in shapes:
                run = runs[s["name"]]
                m = min(run["mha"], key=lambda x: x["ms"])
                ceiling = max(x["ceiling_gflops"] for x in run["mha"])
                gflop = m["gflops"] * m["ms"] * 1e-3  # the work of one call
                t, o = best(run["torch"]), best(run["ort"])
                frac = lambda ms: None if ms is None else gflop / (ms * 1e-3) / ceiling
                peer = best([t, o])
                ratio = None if peer is None else peer / m["ms"]
                out(f"| {s['name']} | {s['dtype']} | {m['ms']:.2f} | {t if t is None else f'{t:.2f}'} | "
                    f"{o if o is None else f'{o:.2f}'} | {fmt_pct(frac(m['ms']))} | {fmt_pct(frac(t))} | "
                    f"{fmt_pct(frac(o))} | {fmt_ratio(ratio)} |".replace("None", "—"))
                records.append({"kind": "backward" if a.backward else "forward", **s, "isa": m["isa"], "threads": m["threads"],
                                "ceiling_gflops": ceiling, "mha_ms": m["ms"], "torch_ms": t, "ort_ms": o,
                                "mha_fraction_of_ceiling": frac(m["ms"]),
                                "torch_fraction_of_ceiling": frac(t), "ort_fraction_of_ceiling": frac(o),
                                "mha_over_best_peer": ratio, "peer_notes": run["why"]})
            notes = {f"{p}: {w}" for s in shapes for p, w in runs[s["name"]]["why"].items()}
            out()
            out("Ceiling: fp32 FMA (bf16 rows: the bf16 dot) measured by each mha run; the best counts. "
                "— : " + ("; ".join(sorted(notes)) if notes else "none") + ".")
            out()
        if a.only != "forward":
            shapes = DECODE_SHAPES
            if a.decode:
                shapes = []
                for text in a.decode:
                    ctx, heads, b = text.split(",")
                    hq, hkv = heads.split("/")
                    shapes.append((int(ctx), int(hq), int(hkv), int(b)))
            d = 128
            runs = {}
            for r in range(a.rounds):
                for shape in shapes:
                    for kv in ("bf16", "int8"):
                        run = runs.setdefault((shape, kv), {"mha": [], "torch": [], "ort": [], "why": {}})
                        run["mha"].append(mha_decode(a.mha, shape, kv, a.min_time, tmp))
                        time_peers(run, torch=lambda: torch_decode(shape, kv, d, a.min_time),
                                   ort=lambda: ort_decode(shape, kv, d, a.min_time, threads))
                        print(f"  round {r + 1}/{a.rounds} decode {shape} {kv}: mha "
                              f"{run['mha'][-1]['us']:.0f} µs", file=sys.stderr, flush=True)
            out(f"## Decode: one new token per sequence, head dim {d}, contiguous cache (best of "
                f"{a.rounds} interleaved rounds; torch SDPA on a bf16 cache, ORT GroupQueryAttention on "
                f"an f16 cache of the same bytes)")
            out()
            out("| context | heads | batch | kv | mha µs | torch µs | ort µs | mha of read ceiling | "
                "mha of FMA ceiling | torch of read ceiling | ort of read ceiling | mha / best peer |")
            out("|---|---|---|---|---|---|---|---|---|---|---|---|")
            for (shape, kv), run in runs.items():
                m = min(run["mha"], key=lambda x: x["us"])
                ceiling = max(x["ceiling_gbps"] for x in run["mha"])
                fma = max(x["fma_ceiling_gflops"] for x in run["mha"])
                mb = m["gbps"] * m["us"] * 1e-3  # MB a step reads
                t, o = best(run["torch"]), best(run["ort"])
                t_us = None if t is None else t * 1e3
                o_us = None if o is None else o * 1e3
                frac = lambda us: None if us is None else mb / us * 1e3 / ceiling
                peer = best([t_us, o_us])
                ratio = None if peer is None else peer / m["us"]
                ctx, hq, hkv, b = shape
                out(f"| {ctx} | {hq}/{hkv} | {b} | {kv} | {m['us']:.0f} | "
                    f"{'—' if t_us is None else f'{t_us:.0f}'} | {'—' if o_us is None else f'{o_us:.0f}'} | "
                    f"{fmt_pct(m['gbps'] / ceiling)} | {fmt_pct(m['gflops'] / fma)} | {fmt_pct(frac(t_us))} | "
                    f"{fmt_pct(frac(o_us))} | {fmt_ratio(ratio)} |")
                records.append({"kind": "decode", "context": ctx, "hq": hq, "hkv": hkv, "b": b, "kv_dtype": kv,
                                "d": d, "threads": m["threads"], "isa": m["isa"], "ceiling_gbps": ceiling,
                                "fma_ceiling_gflops": fma, "mha_us": m["us"], "torch_us": t_us,
                                "ort_us": o_us, "mha_fraction_of_ceiling": m["gbps"] / ceiling,
                                "mha_fraction_of_fma_ceiling": m["gflops"] / fma,
                                "torch_fraction_of_ceiling": frac(t_us), "ort_fraction_of_ceiling": frac(o_us),
                                "mha_over_best_peer": ratio, "peer_notes": run["why"]})
            out()
            out("Read ceiling: mha's best streaming read on all threads (a 512 MiB buffer on huge pages, and "
                "each row's own caches), best of its runs. Every contender cycles over cache copies "
                "totalling ≥ 256 MiB, so steps read from memory.")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(records, f, indent=2)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
