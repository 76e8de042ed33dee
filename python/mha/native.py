"""mha's own forward and backward calls, with every option and the saved log-sum-exp: what a
training loop outside torch (NumPy, or a custom autograd) needs. Arrays are BSHD by default
(`layout="bhsd"` for PyTorch's order, "shd" for varlen packed rows)."""
from __future__ import annotations

from typing import Any, Optional

from . import _arrays
from ._core import Call, run_backward, run_forward, window_pair


_LAYOUTS = ("bshd", "bhsd", "shd", "hsd")


def _call(layout: str, scale: Optional[float], causal: bool, window_size: Any, mask: Any, cu_seqlens_q: Any,
          cu_seqlens_k: Any, dropout_p: float) -> Call:
    if layout not in _LAYOUTS:  # the C++ check comes after the Python layer has used the layout
        raise _arrays.invalid("layout", f"layout = {layout!r}, expected 'bshd', 'bhsd', 'shd' or 'hsd'")
    left, right = window_pair(window_size)
    cq = None if cu_seqlens_q is None else _arrays.int32(cu_seqlens_q, "cu_seqlens_q")
    ck = None if cu_seqlens_k is None else _arrays.int32(cu_seqlens_k, "cu_seqlens_k")
    m = None if mask is None else _arrays.view(_arrays.as_array(mask, "mask"))
    return Call(layout=layout, scale=scale, causal=causal, window_left=left, window_right=right, mask=m,
                cu_seqlens_q=cq, cu_seqlens_k=ck, dropout_p=float(dropout_p))


def attention(q: Any, k: Any, v: Any, *, layout: str = "bshd", scale: Optional[float] = None, causal: bool = False,
              window_size: tuple[int, int] = (-1, -1), mask: Any = None, cu_seqlens_q: Any = None,
              cu_seqlens_k: Any = None, dropout_p: float = 0.0, dropout_seed: int = 0,
              dropout_offset: int = 0) -> tuple[Any, Any]:
    """(out, lse): mha::attention. causal is bottom-right aligned; mask is additive and broadcastable
    to [B, Hq, Nq, Nk]; lse is float32 [B, Hq, Nq] ([Hq, total_q] for layout 'shd')."""
    call = _call(layout, scale, causal, window_size, mask, cu_seqlens_q, cu_seqlens_k, dropout_p)
    return run_forward(call, q, k, v, dropout_seed, dropout_offset)


def attention_backward(q: Any, k: Any, v: Any, out: Any, dout: Any, lse: Any, *, layout: str = "bshd",
                       scale: Optional[float] = None, causal: bool = False, window_size: tuple[int, int] = (-1, -1),
                       mask: Any = None, cu_seqlens_q: Any = None, cu_seqlens_k: Any = None, dropout_p: float = 0.0,
                       dropout_seed: int = 0, dropout_offset: int = 0) -> tuple[Any, Any, Any]:
    """(dq, dk, dv): mha::attention_backward, given the forward's out and lse and the same options."""
    call = _call(layout, scale, causal, window_size, mask, cu_seqlens_q, cu_seqlens_k, dropout_p)
    return run_backward(call, q, k, v, out, dout, lse, dropout_seed, dropout_offset)
