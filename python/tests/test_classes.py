"""KvCache, DecodeEngine and MultiHeadAttention from Python, checked against the flash call and
the layer's own textbook path."""
import numpy as np
import torch
from oracle import assert_within_bar, forward

import mha


def test_decode_engine_equals_attention_over_the_prompt_and_steps():
    rng = np.random.default_rng(3)
    hq, hkv, d, n = 8, 2, 64, 37
    engine = mha.DecodeEngine(q_heads=hq, kv_heads=hkv, head_dim=d, dtype="f32", max_seqs=2, max_seq_len=64,
                              block_size=16)
    q = rng.standard_normal((n + 1, hq, d)).astype(np.float32)
    k = rng.standard_normal((n + 1, hkv, d)).astype(np.float32)
    v = rng.standard_normal((n + 1, hkv, d)).astype(np.float32)
    seq, out = engine.admit(q[:n], k[:n], v[:n], chunk=16)
    assert engine.active == [seq] and engine.cache.length(seq) == n and engine.cache.paged
    step = engine.step(q[None, n:], k[None, n:], v[None, n:])
    got = np.concatenate([out, step[0]])
    ref = forward(q[None], k[None], v[None], causal=True)[0][0]
    naive = forward(q[None], k[None], v[None], causal=True, work=np.float32)[0][0]
    assert_within_bar(got, ref, naive, "f32")
    rk, rv = engine.cache.read(seq)
    assert np.array_equal(rk, k) and np.array_equal(rv, v)
    free = engine.cache.free_blocks
    engine.retire(seq)
    assert engine.active == [] and engine.cache.free_blocks == free + 3
    # A step with no active sequence is empty (it had divided by zero sharing out no keys: SIGFPE).
    empty = engine.step(q[:0, None], k[:0, None], v[:0, None])
    assert empty.shape == (0, 1, hq, d)


def test_one_array_as_k_and_v_fills_both_caches():
    # K = V given as one array: the C++ write once told k from v by address and left V unwritten.
    x = np.arange(5 * 2 * 8, dtype=np.float32).reshape(5, 2, 8) % 7 - 3
    for dtype in ("f32", "bf16", "int8"):
        cache = mha.KvCache(kv_heads=2, head_dim=8, dtype=dtype, max_seqs=1, max_seq_len=8)
        seq = cache.add_sequence()
        cache.fill(seq, x, x)
        rk, rv = cache.read(seq)
        np.testing.assert_allclose(rk, x, atol=0.03)
        np.testing.assert_allclose(rv, x, atol=0.03)


def test_multi_head_attention_fast_equals_naive_and_keeps_torch():
    layer = mha.MultiHeadAttention(hidden=128, heads=4, seed=1)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 19, 128)).astype(np.float32)
    mask = np.zeros((2, 1, 1, 19), np.float32)
    mask[1, ..., 12:] = -np.inf  # padding of the second sequence
    fast, naive = layer(x, mask), layer.forward(x, mask, naive=True)
    assert fast.shape == x.shape
    assert np.max(np.abs(fast - naive)) < 1e-4 * (np.max(np.abs(naive)) + 1)
    out = layer(torch.from_numpy(x), torch.from_numpy(mask))
    assert isinstance(out, torch.Tensor) and np.array_equal(out.numpy(), fast)
    # Empty batches and sequences (NumPy gives their strides as zeros: they had been refused).
    for shape in ((0, 19, 128), (2, 0, 128)):
        assert layer(np.zeros(shape, np.float32)).shape == shape
        assert layer.forward(np.zeros(shape, np.float32), naive=True).shape == shape


def test_threads_sharing_an_engine_lose_no_step():
    # The GIL is released while a step runs: without the cache's lock, two threads' steps read the
    # same lengths and wrote the same positions (4 threads × 500 steps lost 123 tokens).
    import threading

    rng = np.random.default_rng(5)
    engine = mha.DecodeEngine(q_heads=4, kv_heads=2, head_dim=16, dtype="f32", max_seqs=2, max_seq_len=512,
                              block_size=16, num_blocks=64)
    seqs = [engine.admit(*(rng.standard_normal((3, h, 16)).astype(np.float32) for h in (4, 2, 2)))[0]
            for _ in range(2)]
    x = {h: rng.standard_normal((2, 1, h, 16)).astype(np.float32) for h in (2, 4)}
    cache = engine.cache

    def stepper():
        for _ in range(100):
            engine.step(x[4], x[2], x[2])
            cache.length(seqs[0]), cache.block_table(seqs[1]), cache.free_blocks  # readers between steps

    threads = [threading.Thread(target=stepper) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [cache.length(s) for s in seqs] == [403, 403]
    k, _ = cache.read(seqs[0])
    assert np.array_equal(k[3:], np.broadcast_to(x[2][0], (400, 2, 16)))
