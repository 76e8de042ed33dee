"""The dropout generator of the NumPy-facing calls: a seed and an offset that advances by one per
call that draws, so successive calls get independent masks and the whole sequence is reproducible
from `manual_seed`. (mha.torch draws from torch's default generator instead.)"""
from __future__ import annotations

import threading

from ._arrays import invalid

_lock = threading.Lock()
_seed = 0
_offset = 0


def manual_seed(seed: int) -> None:
    """Seeds the dropout of mha's NumPy-facing calls (as torch.manual_seed does for torch)."""
    global _seed, _offset
    if not 0 <= seed < 2**64:
        raise invalid("seed", f"seed = {seed}, expected 0 <= seed < 2**64")
    with _lock:
        _seed, _offset = int(seed), 0


def get_rng_state() -> tuple[int, int]:
    """(seed, offset) that the next call with dropout will use."""
    with _lock:
        return _seed, _offset


def next_draw() -> tuple[int, int]:
    """(seed, offset) for one call; advances the offset."""
    global _offset
    with _lock:
        draw = (_seed, _offset)
        _offset = (_offset + 1) % 2**64
        return draw
