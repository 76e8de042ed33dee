"""The float64 oracle of the Python tests, and the textbook same-precision path whose error is the
yardstick of the accuracy bar (FlashAttention's: mha's error at most 2x the naive error, 3x for
gradients, plus a floor of one dtype epsilon times the output's magnitude).

Arrays are NumPy BSHD: q [B, Nq, Hq, D], k [B, Nk, Hkv, D], v [B, Nk, Hkv, Dv]. Causal and windows
are aligned bottom-right as FlashAttention's; mask is additive, broadcastable to [B, Hq, Nq, Nk];
keep is the dropout keep mask [B, Hq, Nq, Nk] (mha.flash_attn_func(..., return_attn_probs=True)).
"""
from __future__ import annotations

import ml_dtypes
import numpy as np

EPS = {"f32": 2.0**-23, "f16": 2.0**-10, "bf16": 2.0**-7}
NP = {"f32": np.float32, "f16": np.float16, "bf16": ml_dtypes.bfloat16}


def visible(nq: int, nk: int, causal: bool = False, window: tuple = (-1, -1)) -> np.ndarray:
    """[Nq, Nk] bool: key j visible to query i (bottom-right alignment)."""
    i = np.arange(nq)[:, None] + (nk - nq)
    j = np.arange(nk)[None, :]
    left, right = window
    if causal:
        right = 0
    ok = np.ones((nq, nk), bool)
    if left >= 0:
        ok &= j >= i - left
    if right >= 0:
        ok &= j <= i + right
    return ok


def _store(x: np.ndarray, dtype: str | None) -> np.ndarray:
    """Rounds to the working dtype between steps (the naive path in f16/bf16)."""
    return x if dtype in (None, "f32") else x.astype(NP[dtype]).astype(x.dtype)


def forward(q, k, v, *, scale=None, causal=False, window=(-1, -1), mask=None, keep=None, dropout_p=0.0,
            work=np.float64, store=None):
    """(out [B, Nq, Hq, Dv], lse [B, Hq, Nq], p [B, Hq, Nq, Nk] undropped) in precision `work`."""
    q, k, v = (np.asarray(x).astype(work) for x in (q, k, v))
    b, nq, hq, d = q.shape
    nk, hkv = k.shape[1], k.shape[2]
    g = hq // hkv
    scale = 1 / np.sqrt(d) if scale is None else scale
    qh = q.transpose(0, 2, 1, 3)
    kh = np.repeat(k.transpose(0, 2, 1, 3), g, axis=1)
    vh = np.repeat(v.transpose(0, 2, 1, 3), g, axis=1)
    s = _store(qh @ kh.transpose(0, 1, 3, 2), store)
    s = _store(s * work(scale), store)
    if mask is not None:
        s = _store(s + np.asarray(mask).astype(work), store)
    s = np.where(visible(nq, nk, causal, window), s, -np.inf)
    m = s.max(axis=-1, keepdims=True, initial=-np.inf)
    finite = np.isfinite(m)
    e = np.where(finite, np.exp(s - np.where(finite, m, 0)), 0)
    total = e.sum(axis=-1, keepdims=True)
    p = _store(np.where(total > 0, e / np.where(total > 0, total, 1), 0), store)
    lse = np.where(total[..., 0] > 0, (np.log(np.where(total > 0, total, 1)) + np.where(finite, m, 0))[..., 0],
                   -np.inf)
    pd = p if keep is None else _store(p * keep / work(1 - dropout_p), store)
    out = (pd @ vh).transpose(0, 2, 1, 3)
    return out, lse, p


def backward(q, k, v, dout, *, scale=None, causal=False, window=(-1, -1), mask=None, keep=None, dropout_p=0.0,
             work=np.float64, store=None):
    """(dq, dk, dv) of sum(dout * forward(...)): the analytic gradient over the materialized P."""
    out, _, p = forward(q, k, v, scale=scale, causal=causal, window=window, mask=mask, keep=keep,
                        dropout_p=dropout_p, work=work, store=store)
    q, k, v, dout = (np.asarray(x).astype(work) for x in (q, k, v, dout))
    b, nq, hq, d = q.shape
    hkv = k.shape[2]
    g = hq // hkv
    scale = work(1 / np.sqrt(d) if scale is None else scale)
    qh, do = q.transpose(0, 2, 1, 3), dout.transpose(0, 2, 1, 3)
    kh = np.repeat(k.transpose(0, 2, 1, 3), g, axis=1)
    vh = np.repeat(v.transpose(0, 2, 1, 3), g, axis=1)
    factor = 1 if keep is None else keep / work(1 - dropout_p)
    pd = p * factor
    dv = pd.transpose(0, 1, 3, 2) @ do
    dp = _store((do @ vh.transpose(0, 1, 3, 2)) * factor, store)
    ds = _store(p * (dp - (dp * p).sum(axis=-1, keepdims=True)), store)
    dq = (ds @ kh) * scale
    dk = (ds.transpose(0, 1, 3, 2) @ qh) * scale

    def group(x):  # [B, Hq, N, D] -> [B, N, Hkv, D], summing each KV head's query heads
        return x.reshape(b, hkv, g, *x.shape[2:]).sum(axis=2).transpose(0, 2, 1, 3)

    return dq.transpose(0, 2, 1, 3), group(dk), group(dv)


def err(a, ref) -> float:
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(a - ref), initial=0.0))


def floor(ref, dtype: str) -> float:
    ref = np.asarray(ref, np.float64)
    return EPS[dtype] * (float(np.max(np.abs(ref[np.isfinite(ref)]), initial=0.0)) + 0.3)


def assert_within_bar(got, ref, naive, dtype: str, factor: float = 2.0, what: str = "out") -> None:
    """FlashAttention's bar: |got - ref| <= factor * |naive - ref| + floor, all finite."""
    got = np.asarray(got, np.float64)
    assert np.all(np.isfinite(got)), f"{what}: non-finite values"
    e, n, f = err(got, ref), err(naive, ref), floor(ref, dtype)
    assert e <= factor * n + f, f"{what}: error {e:.3g} > {factor} x naive {n:.3g} + floor {f:.3g}"
