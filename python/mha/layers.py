"""The BERT-style MultiHeadAttention layer (C++), with results in the caller's array type."""
from __future__ import annotations

from typing import Any

from . import _arrays, _mha


class MultiHeadAttention(_mha.MultiHeadAttention):
    """MultiHeadAttention(hidden=1024, heads=16, kv_heads=0, head_dim=0, bias=True, causal=False,
    weight_dtype='f32', checkpoint=None, prefix='', seed=0): random weights from `seed`, or loaded
    from a safetensors checkpoint with Hugging Face BERT names under `prefix`."""

    def forward(self, x: Any, mask: Any = None, naive: bool = False) -> Any:
        """x [batch, seq, hidden] float32 -> [batch, seq, hidden]. mask: additive, broadcastable to
        [batch, heads, seq, seq] (BERT's padding mask is [batch, 1, 1, seq]). naive: the textbook path."""
        x = _arrays.as_array(x, "x")
        out = _arrays.empty(x, tuple(x.shape), "f32")
        m = None if mask is None else _arrays.view(_arrays.as_array(mask, "mask"))
        self._forward(_arrays.view(x), _arrays.view(out), m, naive)
        return out

    __call__ = forward
