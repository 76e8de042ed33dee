"""mha.scaled_dot_product_attention against PyTorch's own SDPA (its semantics) and the oracle."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from oracle import assert_within_bar, forward

import mha


def bhsd(rng, b, h, n, d):
    return rng.standard_normal((b, h, n, d)).astype(np.float32)


def reference(q, k, v, **kwargs):
    """torch's SDPA in float64: the oracle of PyTorch's semantics."""
    t = [torch.from_numpy(x).double() for x in (q, k, v)]
    mask = kwargs.pop("attn_mask", None)
    if mask is not None:
        mask = torch.from_numpy(mask)
        mask = mask if mask.dtype == torch.bool else mask.double()
    return F.scaled_dot_product_attention(*t, attn_mask=mask, **kwargs).numpy()


def naive_f32(q, k, v, **kwargs):
    t = [torch.from_numpy(x) for x in (q, k, v)]
    mask = kwargs.pop("attn_mask", None)
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        return F.scaled_dot_product_attention(*t, attn_mask=None if mask is None else torch.from_numpy(mask),
                                              **kwargs).numpy()


@pytest.mark.parametrize("nq,nk", [(16, 16), (9, 31), (31, 9), (1, 70)])
def test_is_causal_is_top_left(rng, nq, nk):
    q, k, v = bhsd(rng, 2, 4, nq, 32), bhsd(rng, 2, 4, nk, 32), bhsd(rng, 2, 4, nk, 24)
    out = mha.scaled_dot_product_attention(q, k, v, is_causal=True)
    ref = reference(q, k, v, is_causal=True)
    assert out.shape == ref.shape
    assert_within_bar(out, ref, naive_f32(q, k, v, is_causal=True), "f32")


def test_bool_and_float_masks_and_scale(rng):
    q, k, v = bhsd(rng, 2, 3, 12, 16), bhsd(rng, 2, 3, 20, 16), bhsd(rng, 2, 3, 20, 16)
    keep = rng.random((2, 1, 12, 20)) > 0.3
    keep[0, 0, 5] = False  # a row that sees nothing: zeros, as PyTorch >= 2.5
    out = mha.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=0.2)
    ref = reference(q, k, v, attn_mask=keep, scale=0.2)
    assert np.all(out[0, :, 5] == 0) and np.allclose(ref[0, :, 5], 0)
    assert_within_bar(out, ref, naive_f32(q, k, v, attn_mask=keep, scale=0.2), "f32")
    bias = rng.standard_normal((12, 20)).astype(np.float32)  # broadcast over batch and heads
    out = mha.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    assert_within_bar(out, reference(q, k, v, attn_mask=bias), naive_f32(q, k, v, attn_mask=bias), "f32")


def test_gqa_only_when_enabled(rng):
    q, k, v = bhsd(rng, 1, 8, 10, 16), bhsd(rng, 1, 2, 10, 16), bhsd(rng, 1, 2, 10, 16)
    with pytest.raises(ValueError, match="enable_gqa"):
        mha.scaled_dot_product_attention(q, k, v)
    out = mha.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    ref = reference(q, k, v, enable_gqa=True)
    assert_within_bar(out, ref, naive_f32(q, k, v, enable_gqa=True), "f32")


def test_three_dimensional_inputs(rng):
    q, k, v = (rng.standard_normal((4, 13, 8)).astype(np.float32) for _ in range(3))
    out = mha.scaled_dot_product_attention(q, k, v, is_causal=True)
    ref = reference(q, k, v, is_causal=True)
    assert out.shape == (4, 13, 8)
    assert_within_bar(out, ref, naive_f32(q, k, v, is_causal=True), "f32")


def test_mask_with_is_causal_is_refused(rng):
    q = bhsd(rng, 1, 1, 4, 8)
    with pytest.raises(ValueError, match="attn_mask"):
        mha.scaled_dot_product_attention(q, q, q, attn_mask=np.ones((4, 4), bool), is_causal=True)


def test_torch_tensors_in_torch_tensors_out(rng):
    q = torch.randn(2, 4, 33, 64, dtype=torch.bfloat16)
    out = mha.scaled_dot_product_attention(q, q, q, is_causal=True)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.bfloat16 and out.shape == q.shape
    ref = forward(*(x.transpose(1, 2).double().numpy() for x in (q, q, q)), causal=True)[0].transpose(0, 2, 1, 3)
    naive = F.scaled_dot_product_attention(q, q, q, is_causal=True)
    assert_within_bar(out.double().numpy(), ref, naive.double().numpy(), "bf16")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_decoding_step_on_a_bhsd_cache_prefix(rng, dtype):
    """A generation step as HF calls SDPA: one query on the first 300 tokens of [B, Hkv, 512, D]
    caches. It runs on the decode kernels in either layout: the same bits as flash_attn_func on
    the same values in [B, S, H, D], and within the bar of the oracle."""
    t = getattr(torch, dtype)
    q = torch.from_numpy(bhsd(rng, 3, 8, 1, 64)).to(t)
    kc, vc = (torch.from_numpy(bhsd(rng, 3, 2, 512, 64)).to(t) for _ in range(2))
    k, v = kc[:, :, :300], vc[:, :, :300]  # views: heads 512·64 apart, batch 2·512·64
    out = mha.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    flash = mha.flash_attn_func(*(x.transpose(1, 2).contiguous() for x in (q, k, v))).transpose(1, 2)
    assert torch.equal(out, flash)
    f64 = [x.double().numpy() for x in (q, k, v)]
    f32 = [x.float().numpy() for x in (q, k, v)]
    assert_within_bar(out.float().numpy(), reference(*f64, enable_gqa=True), naive_f32(*f32, enable_gqa=True),
                      "f32" if dtype == "float32" else "bf16")


def test_decoding_steps_under_a_padding_mask(rng):
    """Batched generation pads prompts on the left and passes a bool mask [B, 1, 1, S]: each
    sequence's step is its own step on its visible keys, bit for bit, and within the oracle's bar."""
    q = torch.from_numpy(bhsd(rng, 3, 8, 1, 64))
    k, v = (torch.from_numpy(bhsd(rng, 3, 2, 300, 64)) for _ in range(2))
    pads = [0, 41, 290]
    keep = torch.ones(3, 1, 1, 300, dtype=torch.bool)
    for b, n in enumerate(pads):
        keep[b, ..., :n] = False
    out = mha.scaled_dot_product_attention(q, k, v, attn_mask=keep, enable_gqa=True)
    for b, n in enumerate(pads):
        one = mha.scaled_dot_product_attention(q[b:b + 1], k[b:b + 1, :, n:], v[b:b + 1, :, n:], enable_gqa=True)
        assert torch.equal(out[b:b + 1], one), f"sequence {b}"
    arrays = [x.numpy() for x in (q, k, v)]
    mask = keep.numpy()
    assert_within_bar(out.numpy(), reference(*[x.astype(np.float64) for x in arrays], attn_mask=mask, enable_gqa=True),
                      naive_f32(*arrays, attn_mask=mask, enable_gqa=True), "f32")
