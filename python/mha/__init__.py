"""mha: exact multi-head attention on the CPU.

    import numpy as np, mha
    q = np.random.randn(2, 1024, 8, 64).astype(np.float32)   # [batch, seq, heads, head_dim]
    out = mha.flash_attn_func(q, q, q, causal=True)

The calls of FlashAttention (flash_attn_func, flash_attn_varlen_func) and PyTorch
(scaled_dot_product_attention) with their semantics; mha.torch gives them autograd. Arrays are
NumPy arrays, torch tensors or anything with __dlpack__, viewed in place (never copied); results
come back in the caller's array type. The GIL is released while mha computes.
"""
from ._mha import (
    CapacityExceededError,
    __version__,
    active_isa,
    num_threads,
    set_isa,
    set_num_threads,
    supported_isas,
)
from ._rng import get_rng_state, manual_seed
from .decode import DecodeEngine, KvCache
from .encoder import SentenceEncoder
from .flash import flash_attn_func, flash_attn_varlen_func, flash_attn_with_kvcache
from .layers import MultiHeadAttention
from .native import attention, attention_backward
from .sdpa import scaled_dot_product_attention

__all__ = [
    "CapacityExceededError",
    "DecodeEngine",
    "KvCache",
    "MultiHeadAttention",
    "SentenceEncoder",
    "__version__",
    "active_isa",
    "attention",
    "attention_backward",
    "flash_attn_func",
    "flash_attn_varlen_func",
    "flash_attn_with_kvcache",
    "get_rng_state",
    "manual_seed",
    "num_threads",
    "scaled_dot_product_attention",
    "set_isa",
    "set_num_threads",
    "supported_isas",
]
