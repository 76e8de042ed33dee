"""mha.flash_attn_with_kvcache against the float64 oracle: contiguous and paged caches, new tokens
appended in place, rotary embedding, causal/non-causal/windowed, GQA, decode steps and long chunks
(both kernels), every dtype; and its errors, which leave the caches untouched."""
import numpy as np
import pytest
import torch
from oracle import NP, assert_within_bar, forward

import mha

# (B, Nq, Nnew, Hq, Hkv, D, S, block_size, causal, window, rotary (rotary_dim, interleaved) or None)
CASES = [
    (2, 1, 1, 4, 2, 64, 40, 0, True, (-1, -1), None),          # a decode step, contiguous
    (3, 1, 1, 8, 2, 32, 70, 16, True, (-1, -1), (32, True)),   # paged, rotary (GPT-J pairs)
    (2, 5, 5, 4, 4, 40, 50, 8, True, (-1, -1), (16, False)),   # 5 new tokens, partial NeoX rotary
    (1, 1, 0, 6, 1, 16, 33, 0, False, (-1, -1), None),         # no new tokens, MQA, non-causal Nq = 1
    (2, 7, 7, 2, 2, 24, 30, 0, False, (-1, -1), (8, True)),    # non-causal chunk: the forward kernel
    (2, 80, 80, 4, 2, 32, 200, 32, True, (-1, -1), None),      # a long prefill chunk, paged
    (2, 6, 6, 2, 1, 16, 40, 0, True, (4, 0), None),            # windowed
    (1, 9, 3, 2, 2, 8, 20, 4, True, (-1, -1), None),           # Nq > Nnew, paged
]


def tables(rng, b, s, bs):
    per = -(-s // bs)
    blocks = rng.permutation(b * per + 3).astype(np.int32)[: b * per]  # scattered, 3 spare blocks
    return blocks.reshape(b, per)


def rotate(x, cos, sin, pos, rd, interleaved):
    """x [..., D] float64 rotated at positions pos (broadcast over x's leading axes but the last two)."""
    x = x.copy()
    half = rd // 2
    c, s = cos[pos][..., None, :], sin[pos][..., None, :]
    ia = np.arange(half) * 2 if interleaved else np.arange(half)
    ib = ia + 1 if interleaved else ia + half
    xa, xb = x[..., ia].copy(), x[..., ib].copy()
    x[..., ia] = xa * c - xb * s
    x[..., ib] = xa * s + xb * c
    return x


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:8])) + ("c" if c[8] else ""))
def test_matches_oracle_and_updates_the_cache_in_place(isa, rng, case, dtype):
    b, nq, nnew, hq, hkv, d, s, bs, causal, window, rotary = case
    t = NP[dtype]
    q = rng.standard_normal((b, nq, hq, d)).astype(t)
    kn, vn = (rng.standard_normal((b, nnew, hkv, d)).astype(t) for _ in range(2))
    lens = rng.integers(0, s - nnew + 1, b).astype(np.int32)
    lens[0] = s - nnew  # one entry filled to capacity
    table = tables(rng, b, s, bs) if bs else None
    rows = (table.size + 3) * bs if bs else 0
    shape = (rows // bs, bs, hkv, d) if bs else (b, s, hkv, d)
    kc, vc = (rng.standard_normal(shape).astype(t) for _ in range(2))
    kc0, vc0 = kc.copy(), vc.copy()
    cos = sin = None
    if rotary:
        rd, inter = rotary
        ang = np.arange(s + nq)[:, None] * 10000.0 ** (-np.arange(rd // 2) * 2 / rd)
        cos, sin = np.cos(ang).astype(t), np.sin(ang).astype(t)
    out, lse = mha.flash_attn_with_kvcache(q, kc, vc, k=kn if nnew else None, v=vn if nnew else None,
                                           rotary_cos=cos, rotary_sin=sin, cache_seqlens=lens, block_table=table,
                                           causal=causal, window_size=window,
                                           rotary_interleaved=bool(rotary and rotary[1]), return_softmax_lse=True)
    assert out.shape == q.shape and out.dtype == q.dtype and lse.shape == (b, hq, nq)

    def logical(cache, e):  # entry e's rows in order, as a [S, Hkv, D] array
        return cache[table[e]].reshape(-1, hkv, d)[:s] if bs else cache[e]

    f64 = lambda x: np.asarray(x, np.float64)
    for e in range(b):
        pos = lens[e] + np.arange(nnew)
        want_k = f64(kn[e])
        if rotary:
            want_k = rotate(want_k, f64(cos), f64(sin), pos, *rotary)
        got_k, got_v = f64(logical(kc, e)), f64(logical(vc, e))
        np.testing.assert_array_equal(got_v[pos], f64(vn[e]))
        np.testing.assert_allclose(got_k[pos], want_k, rtol=8e-3 if dtype != "f32" else 1e-6, atol=1e-6)
        keep = np.setdiff1d(np.arange(s), pos)  # every other row is untouched
        np.testing.assert_array_equal(got_k[keep], f64(logical(kc0, e))[keep])
        L = lens[e] + nnew
        qe = f64(q[e])
        if rotary:
            qpos = lens[e] + (np.arange(nq) if causal or window != (-1, -1) else np.zeros(nq, int))
            qe = rotate(qe, f64(cos), f64(sin), qpos, *rotary)
        qe = qe.astype(t)  # the rotated q in the working dtype, as both paths see it
        k_e, v_e = logical(kc, e)[None, :L], logical(vc, e)[None, :L]
        ref, ref_lse, _ = forward(qe[None], k_e, v_e, causal=causal, window=window)
        naive, _, _ = forward(qe[None], k_e, v_e, causal=causal, window=window, work=np.float32, store=dtype)
        assert_within_bar(out[e:e + 1], ref, naive, dtype, what=f"entry {e}")
        finite = np.isfinite(ref_lse[0])
        assert np.allclose(lse[e][finite], ref_lse[0][finite], rtol=1e-4, atol=1e-4)


def test_torch_caches_are_updated_in_place():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 1, 8, 64, generator=g)
    kc, vc = torch.zeros(2, 16, 2, 64), torch.zeros(2, 16, 2, 64)
    k, v = torch.randn(2, 1, 2, 64, generator=g), torch.randn(2, 1, 2, 64, generator=g)
    ptr = kc.data_ptr()
    out = mha.flash_attn_with_kvcache(q, kc, vc, k=k, v=v, cache_seqlens=torch.tensor([3, 0], dtype=torch.int32),
                                      causal=True)
    assert isinstance(out, torch.Tensor) and kc.data_ptr() == ptr
    assert torch.equal(kc[0, 3], k[0, 0]) and torch.equal(vc[1, 0], v[1, 0])
    want = torch.nn.functional.scaled_dot_product_attention(
        q[1:].transpose(1, 2), kc[1:, :1].transpose(1, 2), vc[1:, :1].transpose(1, 2), enable_gqa=True)
    torch.testing.assert_close(out[1:], want.transpose(1, 2), rtol=1e-5, atol=1e-5)


def test_bad_inputs_raise_and_leave_the_caches_alone(rng):
    q = rng.standard_normal((2, 1, 4, 16)).astype(np.float32)
    kc, vc = (rng.standard_normal((2, 8, 2, 16)).astype(np.float32) for _ in range(2))
    k, v = (rng.standard_normal((2, 1, 2, 16)).astype(np.float32) for _ in range(2))
    before = kc.copy(), vc.copy()

    def expect(argument, kind=ValueError, **kw):
        args = dict(k=k, v=v, cache_seqlens=np.array([0, 7], np.int32))
        args.update(kw)
        with pytest.raises(kind) as e:
            mha.flash_attn_with_kvcache(q, args.pop("kc", kc), args.pop("vc", vc), **args)
        assert e.value.argument == argument
        assert np.array_equal(kc, before[0]) and np.array_equal(vc, before[1])

    expect("cache_seqlens", cache_seqlens=np.array([0, 8], np.int32))  # no room for the new token
    expect("cache_seqlens", cache_seqlens=np.array([-1, 0], np.int32))
    expect("cache_seqlens", cache_seqlens=np.array([0], np.int32))
    expect("v", v=None)
    expect("k", k=k[:, :, :1])
    expect("k_cache", kc=kc.astype(np.float16), vc=vc.astype(np.float16))
    expect("k_cache", kc=np.asfortranarray(kc))
    expect("v_cache", vc=vc[:, :4])
    expect("block_table", block_table=np.array([[0], [5]], np.int32))  # block 5 of a 2-block cache
    expect("block_table", block_table=np.array([0, 1], np.int32))     # not [batch, max_blocks]
    expect("block_table", block_table=np.array([[2**33], [1]], np.int64))  # had wrapped to block 0
    expect("cache_seqlens", cache_seqlens=np.array([2**40, 0], np.int64))  # had wrapped to 0
    expect("cache_seqlens", cache_seqlens=2**40)
    # entry 0 writes its token 0 to row 0 of block 0, which entry 1 reads as its own token 0
    expect("block_table", block_table=np.array([[0], [0]], np.int32), cache_seqlens=np.array([0, 1], np.int32))
    readonly = kc.copy()
    readonly.flags.writeable = False
    expect("k_cache", kc=readonly)
    expect("rotary_cos", rotary_cos=np.ones((4, 8), np.float32), rotary_sin=np.ones((4, 8), np.float32))
    expect("softcap", NotImplementedError, softcap=1.0)
    expect("cache_batch_idx", NotImplementedError, cache_batch_idx=np.array([1, 0], np.int32))
    expect("window_size", window_size=3)
