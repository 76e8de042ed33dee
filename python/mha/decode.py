"""KV caches (the C++ class as it is) and the continuous-batching decode engine, whose results
come back in the caller's array type."""
from __future__ import annotations

from typing import Any

from . import _arrays, _mha
from ._core import check_operands


KvCache = _mha.KvCache


class DecodeEngine(_mha.DecodeEngine):
    """DecodeEngine(q_heads=32, kv_heads=8, head_dim=128, dtype='bf16', max_seqs=8, max_seq_len=4096,
    block_size=16): admit(q, k, v) -> (seq, out), step(q, k, v) -> out, retire(seq)."""

    def admit(self, q: Any, k: Any, v: Any, chunk: int = 0) -> tuple[int, Any]:
        """Admits a sequence with its prompt q [n, Hq, D], k, v [n, Hkv, D]; returns (id, out [n, Hq, D])."""
        q, k, v = (_arrays.as_array(x, n) for x, n in ((q, "q"), (k, "k"), (v, "v")))
        out = _arrays.empty(q, tuple(q.shape), check_operands(q, k, v))
        seq = self._admit(_arrays.view(q), _arrays.view(k), _arrays.view(v), _arrays.view(out), chunk)
        return seq, out

    def step(self, q: Any, k: Any, v: Any) -> Any:
        """One token for every active sequence: q [A, 1, Hq, D], k, v [A, 1, Hkv, D] in the order of
        `active`; returns out [A, 1, Hq, D]."""
        q, k, v = (_arrays.as_array(x, n) for x, n in ((q, "q"), (k, "k"), (v, "v")))
        out = _arrays.empty(q, tuple(q.shape), check_operands(q, k, v))
        self._step(_arrays.view(q), _arrays.view(k), _arrays.view(v), _arrays.view(out))
        return out
