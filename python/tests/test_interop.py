"""Zero copies, the caller's array types, bfloat16 from torch and ml_dtypes, and the GIL."""
import subprocess
import sys
import threading
import time

import ml_dtypes
import numpy as np
import torch
from oracle import assert_within_bar, forward

import mha
from mha import _mha


def test_arrays_are_viewed_not_copied():
    a = np.ones((2, 8, 4, 16), np.float32)[:, ::2]  # strided
    t = torch.ones(2, 4, 8, 16).transpose(1, 2)     # a BHSD tensor seen as BSHD
    assert _mha._data_pointer(a) == a.ctypes.data
    assert _mha._data_pointer(t) == t.data_ptr()
    b = torch.ones(4, 4, dtype=torch.bfloat16)
    assert _mha._data_pointer(b) == b.data_ptr()


def test_results_come_back_in_the_callers_type(rng):
    q = rng.standard_normal((1, 9, 2, 16)).astype(np.float32)
    assert isinstance(mha.flash_attn_func(q, q, q), np.ndarray)
    t = torch.from_numpy(q)
    out = mha.flash_attn_func(t, t, t)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert np.array_equal(out.numpy(), mha.flash_attn_func(q, q, q))


def test_tensors_that_require_grad_are_accepted(rng):
    t = torch.randn(1, 9, 2, 16, requires_grad=True)
    out = mha.flash_attn_func(t, t, t)
    assert not out.requires_grad


def test_bf16_through_ml_dtypes_equals_torch(rng):
    x = rng.standard_normal((2, 21, 4, 32)).astype(ml_dtypes.bfloat16)
    out = mha.flash_attn_func(x, x, x, causal=True)
    assert out.dtype == ml_dtypes.bfloat16
    t = torch.from_numpy(x.view(np.uint16).astype(np.int16)).view(torch.bfloat16)
    tout = mha.flash_attn_func(t, t, t, causal=True)
    assert np.array_equal(out.view(np.uint16), tout.view(torch.int16).numpy().view(np.uint16))
    ref = forward(x, x, x, causal=True)[0]
    assert_within_bar(out, ref, forward(x, x, x, causal=True, work=np.float32, store="bf16")[0], "bf16")


def test_dlpack_producers_other_than_torch(rng):
    class Producer:  # any object with __dlpack__ (JAX, CuPy on the CPU, ...) goes through numpy
        def __init__(self, a):
            self.a = a

        def __dlpack__(self, **kwargs):
            return self.a.__dlpack__(**kwargs)

        def __dlpack_device__(self):
            return self.a.__dlpack_device__()

    q = rng.standard_normal((1, 5, 1, 8)).astype(np.float32)
    assert np.array_equal(mha.flash_attn_func(Producer(q), q, q), mha.flash_attn_func(q, q, q))


def test_the_gil_is_released_during_compute(rng):
    q = rng.standard_normal((1, 1024, 8, 64)).astype(np.float32)
    mha.flash_attn_func(q, q, q)  # warm up
    start = time.perf_counter()
    mha.flash_attn_func(q, q, q)
    alone = time.perf_counter() - start
    worker = threading.Thread(target=lambda: [mha.flash_attn_func(q, q, q) for _ in range(3)])
    ticks = 0
    worker.start()
    while worker.is_alive():
        ticks += 1  # runs only while the worker does not hold the GIL
        time.sleep(0)
    worker.join()
    # Holding the GIL, the worker would leave this loop a few switch intervals (5 ms) per call.
    assert ticks > 20 * 3 * max(1.0, alone / 0.005), ticks


def test_numpy_users_never_import_torch():
    code = ("import sys, numpy as np, mha; q = np.ones((1, 3, 1, 4), np.float32); "
            "mha.flash_attn_func(q, q, q); mha.scaled_dot_product_attention(q, q, q); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
