"""mha.flash_attn_func and flash_attn_varlen_func against the float64 oracle (NumPy inputs)."""
import numpy as np
import pytest
from oracle import NP, assert_within_bar, backward, forward, visible

import mha

DTYPES = ["f32", "f16", "bf16"]

# (B, Nq, Nk, Hq, Hkv, D, Dv, causal, window): odd lengths, Nq != Nk both ways, GQA/MQA, head dims
# 1..256, Dv != D, windows.
SHAPES = [
    (1, 1, 1, 1, 1, 1, 1, False, (-1, -1)),
    (2, 17, 23, 4, 2, 32, 32, True, (-1, -1)),
    (1, 65, 47, 3, 1, 64, 48, True, (-1, -1)),
    (2, 130, 130, 2, 2, 80, 80, False, (16, 8)),
    (1, 33, 129, 8, 2, 128, 128, False, (-1, -1)),
    (1, 40, 70, 2, 1, 256, 256, True, (7, -1)),
    (3, 9, 5, 2, 2, 7, 3, False, (-1, -1)),
]


def inputs(rng, b, nq, nk, hq, hkv, d, dv, dtype):
    t = NP[dtype]
    return (rng.standard_normal((b, nq, hq, d)).astype(t), rng.standard_normal((b, nk, hkv, d)).astype(t),
            rng.standard_normal((b, nk, hkv, dv)).astype(t))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:7])) + ("c" if s[7] else ""))
def test_forward_matches_oracle(isa, rng, shape, dtype):
    b, nq, nk, hq, hkv, d, dv, causal, window = shape
    q, k, v = inputs(rng, b, nq, nk, hq, hkv, d, dv, dtype)
    out, lse, _ = mha.flash_attn_func(q, k, v, causal=causal, window_size=window, return_attn_probs=True)
    assert out.shape == (b, nq, hq, dv) and out.dtype == q.dtype
    assert lse.shape == (b, hq, nq) and lse.dtype == np.float32
    ref, ref_lse, _ = forward(q, k, v, causal=causal, window=window)
    naive, _, _ = forward(q, k, v, causal=causal, window=window, work=np.float32, store=dtype)
    assert_within_bar(out, ref, naive, dtype)
    finite = np.isfinite(ref_lse)
    assert np.array_equal(np.isfinite(lse), finite)
    assert np.allclose(lse[finite], ref_lse[finite], rtol=1e-5, atol=1e-5)


def test_scale_and_fully_masked_rows(rng):
    q, k, v = inputs(rng, 1, 6, 4, 2, 2, 16, 16, "f32")
    # window (0, 0) with Nq > Nk: the first Nq - Nk rows see no key -> zeros and lse -inf.
    out, lse, _ = mha.flash_attn_func(q, k, v, softmax_scale=0.3, window_size=(0, 0), return_attn_probs=True)
    ref, ref_lse, _ = forward(q, k, v, scale=0.3, window=(0, 0))
    assert not visible(6, 4, window=(0, 0))[0].any()
    assert np.all(out[:, :2] == 0) and np.all(np.isneginf(lse[:, :, :2]))
    assert_within_bar(out, ref, forward(q, k, v, scale=0.3, window=(0, 0), work=np.float32)[0], "f32")


def test_causal_sets_the_right_window_to_zero(rng):
    """FlashAttention's rule: with causal=True, window_size=(w, w) is a causal window of w keys back
    (code written for it passes the sliding window twice). mha.attention refuses the pair instead."""
    q, k, v = inputs(rng, 2, 37, 53, 4, 2, 32, 32, "f32")
    out = mha.flash_attn_func(q, k, v, causal=True, window_size=(9, 9))
    assert np.array_equal(out, mha.flash_attn_func(q, k, v, causal=True, window_size=(9, 0)))
    ref, _, _ = forward(q, k, v, causal=True, window=(9, -1))
    assert_within_bar(out, ref, forward(q, k, v, causal=True, window=(9, -1), work=np.float32)[0], "f32")
    cu = np.array([0, 37], np.int32), np.array([0, 53], np.int32)
    packed = mha.flash_attn_varlen_func(q[0], k[0], v[0], *cu, 37, 53, causal=True, window_size=(9, 4))
    assert np.array_equal(packed, out[0])
    cached = [mha.flash_attn_with_kvcache(q, k.copy(), v.copy(), cache_seqlens=53, causal=True, window_size=w)
              for w in ((9, 9), (9, 0))]
    assert np.array_equal(cached[0], cached[1])
    with pytest.raises(ValueError, match="window_right"):
        mha.attention(q, k, v, causal=True, window_size=(9, 9))


def test_strided_views_are_read_in_place(rng):
    """BHSD storage seen as BSHD (a transposed view), and a sliced head dim: no copies needed."""
    base = rng.standard_normal((2, 4, 33, 80)).astype(np.float32)  # [B, H, S, D+16]
    q = base.transpose(0, 2, 1, 3)[..., :64]
    assert not q.flags.c_contiguous
    out = mha.flash_attn_func(q, q, q, causal=True)
    ref, _, _ = forward(q, q, q, causal=True)
    assert_within_bar(out, ref, forward(q, q, q, causal=True, work=np.float32)[0], "f32")


def test_readonly_inputs(rng):
    q, k, v = inputs(rng, 1, 8, 8, 2, 2, 16, 16, "f32")
    for x in (q, k, v):
        x.setflags(write=False)
    assert mha.flash_attn_func(q, k, v).shape == (1, 8, 2, 16)


@pytest.mark.parametrize("causal", [False, True])
def test_varlen_equals_each_sequence_alone(rng, causal):
    lq, lk = [5, 0, 17, 64], [9, 3, 17, 70]
    cq, ck = np.concatenate([[0], np.cumsum(lq)]), np.concatenate([[0], np.cumsum(lk)])
    q = rng.standard_normal((cq[-1], 4, 32)).astype(np.float32)
    k = rng.standard_normal((ck[-1], 2, 32)).astype(np.float32)
    v = rng.standard_normal((ck[-1], 2, 32)).astype(np.float32)
    out, lse, keep = mha.flash_attn_varlen_func(q, k, v, cq, ck, max(lq), max(lk), causal=causal,
                                                return_attn_probs=True)
    assert out.shape == q.shape and lse.shape == (4, cq[-1]) and keep.shape == (4, 4, 64, 70)
    for i in range(len(lq)):
        sq, sk = slice(cq[i], cq[i + 1]), slice(ck[i], ck[i + 1])
        ref, ref_lse, _ = forward(q[None, sq], k[None, sk], v[None, sk], causal=causal)
        naive = forward(q[None, sq], k[None, sk], v[None, sk], causal=causal, work=np.float32)[0]
        assert_within_bar(out[None, sq], ref, naive, "f32")
        assert np.allclose(lse[:, sq], ref_lse[0], rtol=1e-5, atol=1e-5)


def test_varlen_checks_max_seqlen(rng):
    q = rng.standard_normal((10, 2, 8)).astype(np.float32)
    with pytest.raises(ValueError, match="max_seqlen_q"):
        mha.flash_attn_varlen_func(q, q, q, [0, 4, 10], [0, 4, 10], 5, 6)


def test_dropout_matches_oracle_with_its_mask(rng):
    q, k, v = inputs(rng, 2, 37, 70, 4, 2, 32, 32, "f32")
    mha.manual_seed(7)
    out, lse, keep = mha.flash_attn_func(q, k, v, dropout_p=0.25, causal=True, return_attn_probs=True)
    assert keep.dtype == np.bool_ and keep.shape == (2, 4, 37, 70)
    assert 0.7 < keep.mean() < 0.8
    ref, ref_lse, _ = forward(q, k, v, causal=True, keep=keep, dropout_p=0.25)
    naive = forward(q, k, v, causal=True, keep=keep, dropout_p=0.25, work=np.float32)[0]
    assert_within_bar(out, ref, naive, "f32")
    # Reproducible from the seed, and a new draw per call.
    mha.manual_seed(7)
    again = mha.flash_attn_func(q, k, v, dropout_p=0.25, causal=True)
    assert np.array_equal(again, out)
    other = mha.flash_attn_func(q, k, v, dropout_p=0.25, causal=True)
    assert not np.array_equal(other, out)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dropout_p", [0.0, 0.2])
def test_native_backward_matches_oracle(isa, rng, dtype, dropout_p):
    b, nq, nk, hq, hkv, d, dv = 2, 33, 47, 4, 2, 40, 24
    q, k, v = inputs(rng, b, nq, nk, hq, hkv, d, dv, dtype)
    dout = rng.standard_normal((b, nq, hq, dv)).astype(NP[dtype])
    opts = dict(causal=True, dropout_p=dropout_p, dropout_seed=99, dropout_offset=3)
    out, lse = mha.attention(q, k, v, **opts)
    dq, dk, dv_ = mha.attention_backward(q, k, v, out, dout, lse, **opts)
    keep = None
    if dropout_p:
        keep = mha.flash.keep_mask(q, b, hq, nq, nk, dropout_p, 99, 3)
    ref = backward(q, k, v, dout, causal=True, keep=keep, dropout_p=dropout_p)
    naive = backward(q, k, v, dout, causal=True, keep=keep, dropout_p=dropout_p, work=np.float32, store=dtype)
    for got, r, n, name in zip((dq, dk, dv_), ref, naive, ("dq", "dk", "dv")):
        assert got.shape == r.shape and got.dtype == q.dtype
        assert_within_bar(got, r, n, dtype, factor=3.0, what=name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 13, 1, 4, 1, 128), (1, 480, 480, 16, 1, 4)], ids=["one-key", "gqa16"])
def test_backward_edges_match_oracle(isa, rng, dtype, shape):
    """Rows that see one key (the naive dq, dk are exactly 0; dropout rounds O = v / (1 - p) apart
    from dP), and a 16-head group whose dk, dv sum 16 x 480 rows."""
    b, nq, nk, hq, hkv, d = shape
    q, k, v = inputs(rng, b, nq, nk, hq, hkv, d, d, dtype)
    dout = rng.standard_normal((b, nq, hq, d)).astype(NP[dtype])
    opts = dict(dropout_p=0.17, dropout_seed=5, dropout_offset=1) if nk == 1 else {}
    out, lse = mha.attention(q, k, v, **opts)
    grads = mha.attention_backward(q, k, v, out, dout, lse, **opts)
    keep = mha.flash.keep_mask(q, b, hq, nq, nk, 0.17, 5, 1) if nk == 1 else None
    o = dict(keep=keep, dropout_p=0.17 if keep is not None else 0.0)
    ref, naive = backward(q, k, v, dout, **o), backward(q, k, v, dout, work=np.float32, store=dtype, **o)
    for got, r, n, name in zip(grads, ref, naive, ("dq", "dk", "dv")):
        assert_within_bar(got, r, n, dtype, factor=3.0, what=name)


def test_same_bits_for_any_thread_count(rng):
    q, k, v = inputs(rng, 1, 300, 300, 4, 1, 64, 64, "f32")
    before = mha.num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            mha.set_num_threads(n)
            out, lse = mha.attention(q, k, v, causal=True)
            results.append((out, lse, *mha.attention_backward(q, k, v, out, out, lse, causal=True)))
        for other in results[1:]:
            for a, b in zip(results[0], other):
                assert np.array_equal(a, b)
    finally:
        mha.set_num_threads(before)
