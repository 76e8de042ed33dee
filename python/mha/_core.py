"""One attention call, normalized: the arrays' layout and mha's options. The FlashAttention- and
PyTorch-style functions translate their arguments into a Call; run_forward / run_backward
allocate the results in the caller's framework and run the C++ kernels on views of the arrays."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from . import _arrays, _mha
from ._arrays import invalid


def window_pair(window_size: Any) -> tuple[int, int]:
    """FlashAttention's window_size as two ints, or ValueError naming window_size."""
    try:
        left, right = window_size
        return int(left), int(right)
    except (TypeError, ValueError):
        raise invalid("window_size", f"window_size = {window_size!r}, expected a pair (left, right)") from None


@dataclass(frozen=True)
class Call:
    layout: str  # how the arrays' axes map to [batch, seq, heads, dim]: bshd | bhsd | shd | hsd
    scale: Optional[float] = None
    causal: bool = False
    window_left: int = -1
    window_right: int = -1
    mask: Any = None  # additive, broadcastable to [B, H, Nq, Nk]
    cu_seqlens_q: Any = None  # int32, varlen only
    cu_seqlens_k: Any = None
    dropout_p: float = 0.0
    key_limit: Optional[int] = None  # attend to keys [0, key_limit) only (SDPA's top-left causal)

    @property
    def seq_axis(self) -> int:
        return self.layout.index("s")

    def options(self, seed: int, offset: int) -> tuple:
        """The extension's option arguments, in its positional order (keywords cost microseconds)."""
        return (self.layout, self.scale, self.causal, self.window_left, self.window_right, self.mask,
                self.cu_seqlens_q, self.cu_seqlens_k, self.dropout_p, seed, offset)

    def keys(self, x: Any) -> Any:
        """k or v (or their gradients) cut to the keys this call attends to: a view."""
        if self.key_limit is None:
            return x
        index = [slice(None)] * x.ndim
        index[self.seq_axis] = slice(0, self.key_limit)
        return x[tuple(index)]


def check_operands(q: Any, k: Any, v: Any) -> str:
    """The common dtype name of q, k, v; ValueError naming the first that differs."""
    dt = _arrays.dtype_name(q, "q")
    for name, x in (("k", k), ("v", v)):
        other = _arrays.dtype_name(x, name)
        if other != dt:
            raise invalid(name, f"{name}: dtype {x.dtype}, expected q's dtype {q.dtype}")
    return dt


def _shape_with(x: Any, axis: int, extent: int) -> tuple:
    shape = list(x.shape)
    shape[axis] = extent
    return tuple(shape)


def lse_shape(call: Call, q: Any) -> tuple:
    heads, seq = q.shape[call.layout.index("h")], q.shape[call.layout.index("s")]
    return (q.shape[0], heads, seq) if "b" in call.layout else (heads, seq)


def run_forward(call: Call, q: Any, k: Any, v: Any, seed: int = 0, offset: int = 0,
                with_lse: bool = True) -> tuple[Any, Any]:
    """out (q's dtype, q's layout with v's head dim) and lse (f32) of one call."""
    dt = check_operands(q, k, v)
    d_axis = call.layout.index("d")
    for name, x in (("q", q), ("v", v)):
        if x.ndim != len(call.layout):
            raise invalid(name, f"{name}: {x.ndim} dimensions, expected {len(call.layout)} ({call.layout})")
    out = _arrays.empty(q, _shape_with(q, d_axis, v.shape[d_axis]), dt)
    lse = _arrays.empty(q, lse_shape(call, q), "f32") if with_lse else None
    v_ = _arrays.view
    _mha.attention(v_(q), v_(call.keys(k)), v_(call.keys(v)), v_(out), None if lse is None else v_(lse),
                   *call.options(seed, offset))
    return out, lse


def run_backward(call: Call, q: Any, k: Any, v: Any, out: Any, dout: Any, lse: Any, seed: int = 0,
                 offset: int = 0) -> tuple[Any, Any, Any]:
    """dq, dk, dv in the dtypes and shapes of q, k, v (keys outside key_limit get zeros)."""
    dt = check_operands(q, k, v)
    dq = _arrays.empty(q, tuple(q.shape), dt)
    make = _arrays.zeros if call.key_limit is not None else _arrays.empty
    dk, dv = make(k, tuple(k.shape), dt), make(v, tuple(v.shape), dt)
    v_ = _arrays.view
    _mha.attention_backward(v_(q), v_(call.keys(k)), v_(call.keys(v)), v_(out), v_(dout), v_(lse), v_(dq),
                            v_(call.keys(dk)), v_(call.keys(dv)), *call.options(seed, offset))
    return dq, dk, dv
