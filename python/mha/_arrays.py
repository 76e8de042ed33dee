"""Arrays of any framework as zero-copy views for mha._mha, and outputs in the caller's type.

NumPy arrays and PyTorch tensors go to the extension as they are (buffer protocol / DLPack);
bfloat16 NumPy arrays (ml_dtypes) go as their uint16 bits, which the extension reads as bfloat16.
Other objects with ``__dlpack__`` are viewed through ``numpy.from_dlpack`` and get NumPy results.
"""
from __future__ import annotations

import sys
from typing import Any

import numpy as np

try:  # bfloat16 for NumPy; optional
    import ml_dtypes

    _NP_BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - exercised only without ml_dtypes
    _NP_BF16 = None

_NP_NAMES = {np.dtype(np.float32): "f32", np.dtype(np.float16): "f16"}
if _NP_BF16 is not None:
    _NP_NAMES[_NP_BF16] = "bf16"


def invalid(argument: str, message: str, kind: type = ValueError) -> Exception:
    """An exception like the extension's: the message, and the argument's name as `.argument`."""
    e = kind(message)
    e.argument = argument
    return e


def _torch() -> Any:
    """torch, only when the caller already imported it (mha never imports it for NumPy users)."""
    return sys.modules.get("torch")


def is_torch(x: Any) -> bool:
    t = _torch()
    return t is not None and isinstance(x, t.Tensor)


def _torch_names(t: Any) -> dict:
    return {t.float32: "f32", t.float16: "f16", t.bfloat16: "bf16"}


def _on_cpu(x: Any, name: str) -> Any:
    """x, or ValueError naming the argument for a torch tensor on another device (meta, cuda), which
    could not even be handed to the extension."""
    if x.device.type != "cpu":
        raise invalid(name, f"{name}: a tensor on device {x.device}, expected a CPU tensor")
    return x


def as_array(x: Any, name: str) -> Any:
    """x as a NumPy array or torch tensor (no copy), or TypeError naming the argument."""
    if is_torch(x):
        return _on_cpu(x, name)
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "__dlpack__"):
        return np.from_dlpack(x)
    raise invalid(name, f"{name}: expected a NumPy array, a torch tensor or an object with __dlpack__, "
                  f"got {type(x).__name__}", TypeError)


def dtype_name(x: Any, name: str) -> str:
    """'f32' | 'f16' | 'bf16' for an attention operand, else ValueError naming the argument."""
    if is_torch(x):
        found = _torch_names(_torch()).get(_on_cpu(x, name).dtype)
    else:
        found = _NP_NAMES.get(x.dtype)
    if found is None:
        raise invalid(name, f"{name}: dtype {x.dtype}, expected float32, float16 or bfloat16")
    return found


def view(x: Any) -> Any:
    """What the extension receives for x: the array itself, detached from autograd, bf16 as bits."""
    if is_torch(x):
        return x.detach() if x.requires_grad else x
    if _NP_BF16 is not None and x.dtype == _NP_BF16:
        return x.view(np.uint16)
    return x


def empty(like: Any, shape: tuple, dtype: str) -> Any:
    """An uninitialized array of the caller's framework ('f32' | 'f16' | 'bf16')."""
    if is_torch(like):
        t = _torch()
        return t.empty(shape, dtype={"f32": t.float32, "f16": t.float16, "bf16": t.bfloat16}[dtype])
    if dtype == "bf16":
        return np.empty(shape, _NP_BF16)
    return np.empty(shape, np.float32 if dtype == "f32" else np.float16)


def zeros(like: Any, shape: tuple, dtype: str) -> Any:
    a = empty(like, shape, dtype)
    a[...] = 0
    return a


def int32(x: Any, name: str) -> np.ndarray:
    """A contiguous int32 copy-if-needed of a small index array (cu_seqlens, lengths, block tables):
    integers only, each within int32 (a cast would wrap 2^32 to 0 silently)."""
    a = to_numpy(x)
    if a.dtype.kind not in "iu":
        raise invalid(name, f"{name}: dtype {a.dtype}, expected an integer array")
    if a.dtype != np.int32 and a.size > 0:
        lo, hi = int(a.min()), int(a.max())
        if lo < -2**31 or hi >= 2**31:
            raise invalid(name, f"{name}: values from {lo} to {hi}, expected int32 values")
    return np.ascontiguousarray(a, dtype=np.int32)


def to_numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if is_torch(x) else np.asarray(x)


def bool_mask(like: Any, shape: tuple) -> Any:
    """An uninitialized bool array of the caller's framework (dropout keep masks)."""
    if is_torch(like):
        return _torch().empty(shape, dtype=_torch().bool)
    return np.empty(shape, np.bool_)
