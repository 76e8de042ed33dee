"""PyTorch's scaled_dot_product_attention on mha's kernels, with PyTorch's semantics: arrays
[B, H, L, E] (or [H, L, E]), is_causal aligned top-left (query i sees keys j <= i), a bool
attn_mask means True = take part, a float attn_mask is added to the scores, GQA only with
enable_gqa=True. Rows whose keys are all masked give zeros, as PyTorch >= 2.5 does."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from . import _arrays, _rng
from ._arrays import invalid
from ._core import Call, run_forward


def _additive(mask: Any, name: str = "attn_mask") -> Any:
    """A bool mask (True = attend) as an additive float32 mask; float masks pass as they are."""
    mask = _arrays.as_array(mask, name)
    if _arrays.is_torch(mask):
        t = _arrays._torch()
        if mask.dtype == t.bool:
            return t.zeros(mask.shape, dtype=t.float32).masked_fill_(~mask, float("-inf"))
        return mask.detach()
    if mask.dtype == np.bool_:
        return np.where(mask, np.float32(0), np.float32(-np.inf))
    return mask


def sdpa_call(query: Any, key: Any, value: Any, attn_mask: Any, dropout_p: float, is_causal: bool,
              scale: Optional[float], enable_gqa: bool) -> Call:
    if query.ndim not in (3, 4):
        raise invalid("query", f"query: {query.ndim} dimensions, expected 4 [B, H, L, E] or 3 [H, L, E]")
    layout = "bhsd" if query.ndim == 4 else "hsd"
    hq, hkv = query.shape[-3], key.shape[-3]
    if hq != hkv and not enable_gqa:
        raise invalid("key", f"key: {hkv} heads for {hq} query heads, expected equal head counts "
                         "(or enable_gqa=True)")
    if is_causal and attn_mask is not None:
        raise invalid("attn_mask", "attn_mask: given with is_causal=True, expected one or the other")
    mask = None if attn_mask is None else _additive(attn_mask)
    common = dict(layout=layout, scale=None if scale is None else float(scale), mask=mask,
                  dropout_p=float(dropout_p))
    if not is_causal:
        return Call(**common)
    nq, nk = query.shape[-2], key.shape[-2]
    # mha's causal is bottom-right; top-left is the same when Nq = Nk, a window reaching Nq - Nk
    # past the diagonal when Nq > Nk, and keys [0, Nq) only when Nq < Nk.
    if nq > nk:
        return Call(**common, window_right=nq - nk)
    return Call(**common, causal=True, key_limit=None if nq == nk else nq)


def scaled_dot_product_attention(query: Any, key: Any, value: Any, attn_mask: Any = None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale: Optional[float] = None,
                                 enable_gqa: bool = False) -> Any:
    """softmax(query·keyᵀ·scale + mask)·value with dropout: query [B, Hq, L, E], key [B, Hkv, S, E],
    value [B, Hkv, S, Ev] (float32, float16 or bfloat16). Returns [B, Hq, L, Ev] in query's dtype and
    framework. For autograd on torch tensors use mha.torch.scaled_dot_product_attention."""
    q, k, v = (_arrays.as_array(x, n) for x, n in ((query, "query"), (key, "key"), (value, "value")))
    call = sdpa_call(q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa)
    seed, offset = _rng.next_draw() if dropout_p > 0 else (0, 0)
    return run_forward(call, q, k, v, seed, offset, with_lse=False)[0]
