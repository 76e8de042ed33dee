"""mha.torch: autograd through mha's forward and backward, against torch's autograd in float64."""
import pytest
import torch
import torch.nn.functional as F

import mha
import mha.torch as mt


def grads(fn, *xs, dout):
    xs = [x.detach().clone().requires_grad_(True) for x in xs]
    out = fn(*xs)
    out.backward(dout)
    return out.detach(), [x.grad for x in xs]


def check(got, ref, naive, eps, factor, what):
    e, n = (got.double() - ref).abs().max().item(), (naive.double() - ref).abs().max().item()
    floor = eps * (ref.abs().max().item() + 0.3)
    assert torch.isfinite(got).all(), what
    assert e <= factor * n + floor, f"{what}: {e:.3g} > {factor} x {n:.3g} + {floor:.3g}"


def check_all(out, g, ref, naive, eps):
    """out within 2x and each gradient within 3x the naive error (ref, naive: (out, grads) pairs)."""
    check(out, ref[0], naive[0], eps, 2, "out")
    for name, a, r, n in zip(("dq", "dk", "dv"), g, ref[1], naive[1]):
        assert a.dtype == out.dtype and a.shape == r.shape, name
        check(a, r, n, eps, 3, name)


EPS = {torch.float32: 2.0**-23, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("nq,nk,causal", [(33, 33, True), (20, 45, True), (45, 20, True), (17, 29, False)])
def test_sdpa_gradients_match_torch(dtype, nq, nk, causal):
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, nq, 32, dtype=dtype), torch.randn(2, 2, nk, 32, dtype=dtype), \
        torch.randn(2, 2, nk, 24, dtype=dtype)
    dout = torch.randn(2, 4, nq, 24, dtype=dtype)
    kw = dict(is_causal=causal, enable_gqa=True)
    out, g = grads(lambda *x: mt.scaled_dot_product_attention(*x, **kw), q, k, v, dout=dout)
    torch_fn = lambda *x: F.scaled_dot_product_attention(*x, **kw)  # noqa: E731
    ref = grads(torch_fn, *(x.double() for x in (q, k, v)), dout=dout.double())
    check_all(out, g, ref, grads(torch_fn, q, k, v, dout=dout), EPS[dtype])


def test_flash_attn_func_gradients_with_window_and_mask_free_padding():
    torch.manual_seed(1)
    q, k, v = (torch.randn(1, 50, 4, 64) for _ in range(3))
    dout = torch.randn(1, 50, 4, 64)
    out, g = grads(lambda *x: mt.flash_attn_func(*x, window_size=(8, 0)), q, k, v, dout=dout)
    # the same attention in torch: a banded bool mask over BHSD
    i = torch.arange(50)
    band = (i[None, :] <= i[:, None]) & (i[None, :] >= i[:, None] - 8)

    def torch_fn(*x):
        t = [y.transpose(1, 2) for y in x]
        return F.scaled_dot_product_attention(*t, attn_mask=band).transpose(1, 2)

    ref = grads(torch_fn, *(x.double() for x in (q, k, v)), dout=dout.double())
    check_all(out, g, ref, grads(torch_fn, q, k, v, dout=dout), EPS[torch.float32])


def test_varlen_gradients_equal_each_sequence_alone():
    torch.manual_seed(2)
    lengths = [7, 30, 1]
    cu = torch.tensor([0, 7, 37, 38], dtype=torch.int32)
    q, k, v = (torch.randn(38, 2, 16) for _ in range(3))
    dout = torch.randn(38, 2, 16)
    _, g = grads(lambda *x: mt.flash_attn_varlen_func(*x, cu, cu, 30, 30, causal=True), q, k, v, dout=dout)
    for b, n in enumerate(lengths):
        s = slice(int(cu[b]), int(cu[b + 1]))
        _, alone = grads(lambda *x: mt.flash_attn_func(*x, causal=True), q[None, s], k[None, s], v[None, s],
                         dout=dout[None, s])
        for a, r in zip(g, alone):
            assert torch.allclose(a[s], r[0], atol=1e-6, rtol=1e-5)


def test_dropout_is_reproducible_from_torch_seed_and_matches_its_mask():
    q, k, v = (torch.randn(1, 40, 2, 32) for _ in range(3))
    dout = torch.randn(1, 40, 2, 32)
    fn = lambda *x: mt.flash_attn_func(*x, dropout_p=0.3, causal=True)  # noqa: E731
    torch.manual_seed(5)
    out1, g1 = grads(fn, q, k, v, dout=dout)
    torch.manual_seed(5)
    out2, g2 = grads(fn, q, k, v, dout=dout)
    assert torch.equal(out1, out2) and all(torch.equal(a, b) for a, b in zip(g1, g2))
    # The mask the call used (return_attn_probs) reproduces it in float64 torch.
    torch.manual_seed(5)
    _, _, keep = mt.flash_attn_func(q, k, v, dropout_p=0.3, causal=True, return_attn_probs=True)
    assert keep.dtype == torch.bool and 0.6 < keep.float().mean() < 0.8

    def torch_fn(*x):
        t = [y.transpose(1, 2) for y in x]
        s = (t[0] @ t[1].transpose(-1, -2)) / 32**0.5
        s = s.masked_fill(~torch.ones(40, 40, dtype=torch.bool).tril(), float("-inf"))
        p = torch.softmax(s, -1) * keep / 0.7
        return (p @ t[2]).transpose(1, 2)

    ref = grads(torch_fn, *(x.double() for x in (q, k, v)), dout=dout.double())
    check_all(out1, g1, ref, grads(torch_fn, q, k, v, dout=dout), EPS[torch.float32])


def test_mask_requiring_grad_is_refused():
    q = torch.randn(1, 1, 4, 8)
    with pytest.raises(NotImplementedError, match="attn_mask"):
        mt.scaled_dot_product_attention(q, q, q, attn_mask=torch.zeros(4, 4, requires_grad=True))


def test_second_derivatives_and_other_devices_are_refused_by_name():
    q = torch.randn(1, 2, 4, 8, requires_grad=True)
    (g,) = torch.autograd.grad(mt.scaled_dot_product_attention(q, q, q).sum(), q, create_graph=True)
    with pytest.raises(NotImplementedError, match="second derivatives"):  # had been "does not require grad"
        g.sum().backward()
    m = torch.randn(1, 2, 4, 8, device="meta")  # had been nanobind's "incompatible function arguments"
    for call in (mt.scaled_dot_product_attention, mha.scaled_dot_product_attention):
        with pytest.raises(ValueError, match="device meta") as e:
            call(m, m, m)
        assert e.value.argument == "query"
    with pytest.raises(ValueError, match="device meta") as e:
        mha.flash_attn_with_kvcache(torch.randn(1, 1, 2, 8), m, m)
    assert e.value.argument == "k_cache"
