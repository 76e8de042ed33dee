"""mha's calls as torch.autograd Functions: the forward and backward both run mha's CPU kernels,
so `loss.backward()` works through them. Dropout draws its seed from torch's default generator,
so torch.manual_seed makes a training step reproducible; the backward regenerates the same mask.

    import torch, mha.torch
    out = mha.torch.flash_attn_func(q, k, v, dropout_p=0.1, causal=True)
    out.sum().backward()
"""
from __future__ import annotations

from typing import Any, Optional

import torch as _torch

from . import _core
from ._arrays import dtype_name, invalid
from .flash import flash_call, keep_mask, varlen_call
from .sdpa import sdpa_call


def _seed(dropout_p: float) -> int:
    if dropout_p <= 0:
        return 0
    return int(_torch.randint(0, 2**62, (), dtype=_torch.int64).item())


class _Attention(_torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, call: _core.Call, seed: int, q: Any, k: Any, v: Any) -> Any:
        out, lse = _core.run_forward(call, q, k, v, seed, 0)
        ctx.call, ctx.seed = call, seed
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx: Any, dout: Any, _dlse: Any) -> Any:
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = _core.run_backward(ctx.call, q, k, v, out, dout, lse, ctx.seed, 0)
        if _torch.is_grad_enabled():  # create_graph=True: the gradients reach q, k, v, and refuse to go on
            dq, dk, dv = (_NoSecondDerivative.apply(g, q, k, v) for g in (dq, dk, dv))
        return None, None, dq, dk, dv


class _NoSecondDerivative(_torch.autograd.Function):
    """A gradient computed under create_graph=True, tied to the inputs it depends on: differentiating
    it raises, where a plain tensor would have said that it "does not require grad"."""

    @staticmethod
    def forward(ctx: Any, grad: Any, *inputs: Any) -> Any:
        return grad.clone()  # a new tensor: views returned from a Function have in-place rules of their own

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> Any:
        raise NotImplementedError("mha.torch: attention's gradients have no derivative in mha (second "
                                  "derivatives, create_graph=True); expected first derivatives only")


def _apply(call: _core.Call, q: Any, k: Any, v: Any, names: tuple = ("q", "k", "v")) -> tuple[Any, Any, int]:
    for name, x in zip(names, (q, k, v)):
        if not isinstance(x, _torch.Tensor):
            raise invalid(name, f"{name}: expected a torch.Tensor, got {type(x).__name__}", TypeError)
        dtype_name(x, name)  # device and dtype, named as the caller's argument
    seed = _seed(call.dropout_p)
    out, lse = _Attention.apply(call, seed, q, k, v)
    return out, lse, seed


def flash_attn_func(q: Any, k: Any, v: Any, dropout_p: float = 0.0, softmax_scale: Optional[float] = None,
                    causal: bool = False, window_size: tuple[int, int] = (-1, -1), softcap: float = 0.0,
                    alibi_slopes: Any = None, deterministic: bool = False, return_attn_probs: bool = False) -> Any:
    """mha.flash_attn_func with autograd."""
    call = flash_call("bshd", dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes)
    out, lse, seed = _apply(call, q, k, v)
    if not return_attn_probs:
        return out
    return out, lse, keep_mask(q, q.shape[0], q.shape[2], q.shape[1], k.shape[1], call.dropout_p, seed, 0)


def flash_attn_varlen_func(q: Any, k: Any, v: Any, cu_seqlens_q: Any, cu_seqlens_k: Any, max_seqlen_q: int,
                           max_seqlen_k: int, dropout_p: float = 0.0, softmax_scale: Optional[float] = None,
                           causal: bool = False, window_size: tuple[int, int] = (-1, -1), softcap: float = 0.0,
                           alibi_slopes: Any = None, deterministic: bool = False, return_attn_probs: bool = False,
                           block_table: Any = None) -> Any:
    """mha.flash_attn_varlen_func with autograd."""
    call = varlen_call(q, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale, causal,
                       window_size, softcap, alibi_slopes, block_table)
    out, lse, seed = _apply(call, q, k, v)
    if not return_attn_probs:
        return out
    batch = max(int(call.cu_seqlens_q.shape[0]) - 1, 0)
    return out, lse, keep_mask(q, batch, q.shape[1], int(max_seqlen_q), int(max_seqlen_k), call.dropout_p, seed, 0)


def scaled_dot_product_attention(query: Any, key: Any, value: Any, attn_mask: Any = None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale: Optional[float] = None,
                                 enable_gqa: bool = False) -> Any:
    """mha.scaled_dot_product_attention with autograd (the mask is a constant: no gradient)."""
    if isinstance(attn_mask, _torch.Tensor) and attn_mask.requires_grad:
        raise invalid("attn_mask", "attn_mask: requires grad; mha's backward treats the mask as a constant, "
                                  "expected a mask without requires_grad", NotImplementedError)
    call = sdpa_call(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
    return _apply(call, query, key, value, ("query", "key", "value"))[0]
