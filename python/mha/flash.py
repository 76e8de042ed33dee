"""FlashAttention's calls (flash_attn_func, flash_attn_varlen_func) on mha's CPU kernels, with
FlashAttention's names, arguments, layouts and semantics: BSHD arrays, causal aligned bottom-right,
window_size = (left, right) with -1 unbounded (causal sets right to 0, as FlashAttention does:
`causal=True, window_size=(w, w)` is a causal sliding window), GQA/MQA when k and v have fewer heads.

Differences: mha is always deterministic (`deterministic` is accepted and has no effect);
`softcap` and `alibi_slopes` are not supported (NotImplementedError); dropout draws from
mha.manual_seed's generator; with return_attn_probs the third result is the dropout keep mask
(bool [B, H, Nq, Nk]; all True without dropout) rather than FlashAttention's debug matrix.
"""
from __future__ import annotations

import functools
from typing import Any, Optional

import numpy as np

from . import _arrays, _mha, _rng
from ._arrays import invalid
from ._core import Call, run_forward, window_pair


def flash_window(window_size: Any, causal: bool) -> tuple[int, int]:
    """(left, right) as FlashAttention reads them: causal overrides right with 0. mha's own calls
    refuse causal with a right window instead; callers written for FlashAttention pass
    (sliding_window, sliding_window) with causal=True and expect a causal sliding window."""
    left, right = window_pair(window_size)
    return left, 0 if causal else right


def _unsupported(softcap: float, alibi_slopes: Any) -> None:
    if softcap != 0.0:
        raise invalid("softcap", f"softcap = {softcap}: mha has no logit soft-capping, expected 0.0", NotImplementedError)
    if alibi_slopes is not None:
        raise invalid("alibi_slopes", "alibi_slopes: not supported by mha, expected None "
                                  "(an additive bias can go through scaled_dot_product_attention's attn_mask)", NotImplementedError)


@functools.lru_cache(maxsize=256)
def _cached_call(layout: str, dropout_p: float, scale: Optional[float], causal: bool, left: int, right: int) -> Call:
    return Call(layout=layout, scale=scale, causal=causal, window_left=left, window_right=right, dropout_p=dropout_p)


def flash_call(layout: str, dropout_p: float, softmax_scale: Optional[float], causal: bool, window_size: Any,
               softcap: float, alibi_slopes: Any, cu_seqlens_q: Any = None, cu_seqlens_k: Any = None) -> Call:
    _unsupported(softcap, alibi_slopes)
    left, right = flash_window(window_size, causal)
    if cu_seqlens_q is None:  # the common call: one Call object per distinct set of options
        return _cached_call(layout, float(dropout_p), None if softmax_scale is None else float(softmax_scale),
                            bool(causal), left, right)
    return Call(layout=layout, scale=None if softmax_scale is None else float(softmax_scale), causal=bool(causal),
                window_left=left, window_right=right, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
                dropout_p=float(dropout_p))


def keep_mask(like: Any, batch: int, heads: int, seqlen_q: int, seqlen_k: int, dropout_p: float, seed: int,
              offset: int) -> Any:
    """The dropout keep mask of a call, bool [batch, heads, seqlen_q, seqlen_k] in like's framework."""
    keep = _arrays.bool_mask(like, (batch, heads, seqlen_q, seqlen_k))
    _mha.dropout_keep_mask(keep, batch, heads, seqlen_q, seqlen_k, dropout_p=dropout_p, dropout_seed=seed,
                           dropout_offset=offset)
    return keep


def flash_attn_func(q: Any, k: Any, v: Any, dropout_p: float = 0.0, softmax_scale: Optional[float] = None,
                    causal: bool = False, window_size: tuple[int, int] = (-1, -1), softcap: float = 0.0,
                    alibi_slopes: Any = None, deterministic: bool = False, return_attn_probs: bool = False) -> Any:
    """out = softmax(q·kᵀ·scale)·v per head. q [B, Sq, Hq, D], k [B, Sk, Hkv, D], v [B, Sk, Hkv, Dv]
    (float32, float16 or bfloat16; Hq a multiple of Hkv). Returns out [B, Sq, Hq, Dv] in q's dtype
    and framework, or (out, softmax_lse [B, Hq, Sq] float32, keep mask) with return_attn_probs."""
    q, k, v = _arrays.as_array(q, "q"), _arrays.as_array(k, "k"), _arrays.as_array(v, "v")
    call = flash_call("bshd", dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes)
    seed, offset = _rng.next_draw() if dropout_p > 0 else (0, 0)
    out, lse = run_forward(call, q, k, v, seed, offset, with_lse=return_attn_probs)
    if not return_attn_probs:
        return out
    b, sq, hq = q.shape[:3]
    return out, lse, keep_mask(q, b, hq, sq, k.shape[1], call.dropout_p, seed, offset)


def varlen_call(q: Any, cu_seqlens_q: Any, cu_seqlens_k: Any, max_seqlen_q: int, max_seqlen_k: int,
                dropout_p: float, softmax_scale: Optional[float], causal: bool, window_size: Any, softcap: float,
                alibi_slopes: Any, block_table: Any) -> Call:
    if block_table is not None:
        raise invalid("block_table", "block_table: paged K/V in flash_attn_varlen_func is not supported by mha, "
                                  "expected None (flash_attn_with_kvcache reads paged caches)", NotImplementedError)
    cq, ck = _arrays.int32(cu_seqlens_q, "cu_seqlens_q"), _arrays.int32(cu_seqlens_k, "cu_seqlens_k")
    for name, cu, limit in (("max_seqlen_q", cq, max_seqlen_q), ("max_seqlen_k", ck, max_seqlen_k)):
        lengths = np.diff(_arrays.to_numpy(cu))
        longest = int(lengths.max()) if lengths.size else 0
        if longest > int(limit):
            raise invalid(name, f"{name} = {limit}, expected >= the longest sequence in cu_seqlens ({longest})")
    return flash_call("shd", dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, cq, ck)


def flash_attn_varlen_func(q: Any, k: Any, v: Any, cu_seqlens_q: Any, cu_seqlens_k: Any, max_seqlen_q: int,
                           max_seqlen_k: int, dropout_p: float = 0.0, softmax_scale: Optional[float] = None,
                           causal: bool = False, window_size: tuple[int, int] = (-1, -1), softcap: float = 0.0,
                           alibi_slopes: Any = None, deterministic: bool = False, return_attn_probs: bool = False,
                           block_table: Any = None) -> Any:
    """A packed batch of variable-length sequences: q [total_q, Hq, D], k [total_k, Hkv, D],
    v [total_k, Hkv, Dv]; sequence b owns rows cu_seqlens_q[b] .. cu_seqlens_q[b+1]-1 (int32,
    B + 1 entries) and causal alignment and windows are per sequence. Returns out [total_q, Hq, Dv],
    or (out, softmax_lse [Hq, total_q], keep mask [B, Hq, max_seqlen_q, max_seqlen_k])."""
    q, k, v = (_arrays.as_array(x, n) for x, n in ((q, "q"), (k, "k"), (v, "v")))
    call = varlen_call(q, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale, causal,
                       window_size, softcap, alibi_slopes, block_table)
    seed, offset = _rng.next_draw() if dropout_p > 0 else (0, 0)
    out, lse = run_forward(call, q, k, v, seed, offset, with_lse=return_attn_probs)
    if not return_attn_probs:
        return out
    batch = int(call.cu_seqlens_q.shape[0]) - 1
    return out, lse, keep_mask(q, max(batch, 0), q.shape[1], int(max_seqlen_q), int(max_seqlen_k), call.dropout_p,
                               seed, offset)


def flash_attn_with_kvcache(q: Any, k_cache: Any, v_cache: Any, k: Any = None, v: Any = None, rotary_cos: Any = None,
                            rotary_sin: Any = None, cache_seqlens: Any = None, cache_batch_idx: Any = None,
                            cache_leftpad: Any = None, block_table: Any = None, softmax_scale: Optional[float] = None,
                            causal: bool = False, window_size: tuple[int, int] = (-1, -1), softcap: float = 0.0,
                            rotary_interleaved: bool = True, alibi_slopes: Any = None, num_splits: int = 0,
                            return_softmax_lse: bool = False) -> Any:
    """Attention of q [B, Sq, Hq, D] against KV caches the caller owns, FlashAttention's call:
    k_cache, v_cache [B_cache, S, Hkv, D] (contiguous) or, with block_table [B, max_blocks] (int32),
    [num_blocks, block_size, Hkv, D] (paged); C-contiguous, q's dtype. cache_seqlens (int or [B]
    int32; default 0): tokens already cached. k, v [B, Snew, Hkv, D] are written into the caches in
    place at cache_seqlens before attention (rotated by rotary_cos/sin [positions, rotary_dim / 2]
    when given, as q is). Entry b attends to keys [0, cache_seqlens[b] + Snew), causal aligned
    bottom-right. Returns out [B, Sq, Hq, D] in q's dtype (and softmax_lse [B, Hq, Sq] float32)."""
    if softcap:
        raise invalid("softcap", "softcap: not supported by mha, expected 0.0", NotImplementedError)
    for name, value in (("cache_batch_idx", cache_batch_idx), ("cache_leftpad", cache_leftpad),
                        ("alibi_slopes", alibi_slopes)):
        if value is not None:
            raise invalid(name, f"{name}: not supported by mha, expected None", NotImplementedError)
    q, k_cache, v_cache = (_arrays.as_array(x, n) for x, n in ((q, "q"), (k_cache, "k_cache"), (v_cache, "v_cache")))
    for x, n in ((k_cache, "k_cache"), (v_cache, "v_cache")):
        if isinstance(x, np.ndarray) and not x.flags.writeable:
            raise invalid(n, f"{n}: a read-only array, expected a writable cache (new tokens are written into it)")
    dt = _arrays.dtype_name(q, "q")
    batch = q.shape[0] if q.ndim == 4 else 0
    if cache_seqlens is None or isinstance(cache_seqlens, (int, np.integer)):
        lens = _arrays.int32(np.full(batch, int(cache_seqlens or 0), np.int64), "cache_seqlens")
    else:
        lens = _arrays.int32(cache_seqlens, "cache_seqlens")
    table = None
    if block_table is not None:
        table = _arrays.int32(block_table, "block_table")
        if table.ndim != 2 or table.shape[0] != batch:
            raise invalid("block_table", f"block_table: shape {tuple(table.shape)}, expected [batch = {batch}, "
                                         "max_blocks]")
        table = table.reshape(-1)
    left, right = flash_window(window_size, causal)
    out = _arrays.empty(q, tuple(q.shape), dt)
    lse = _arrays.empty(q, (batch, q.shape[2], q.shape[1]), "f32") if return_softmax_lse and q.ndim == 4 else None
    v_ = _arrays.view
    opt = (lambda x, n: None if x is None else v_(_arrays.as_array(x, n)))
    _mha.attention_with_kvcache(v_(q), v_(k_cache), v_(v_cache), lens, v_(out), None if lse is None else v_(lse),
                                opt(k, "k"), opt(v, "v"), opt(rotary_cos, "rotary_cos"),
                                opt(rotary_sin, "rotary_sin"), rotary_interleaved, table, softmax_scale, causal,
                                left, right)
    return (out, lse) if return_softmax_lse else out
