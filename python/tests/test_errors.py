"""Each class of bad input raises a typed Python exception naming the argument; nothing is written."""
import numpy as np
import pytest
import torch

import mha


def qkv(b=1, n=8, h=2, d=16):
    rng = np.random.default_rng(0)
    return [rng.standard_normal((b, n, h, d)).astype(np.float32) for _ in range(3)]


def test_invalid_argument_is_value_error_with_the_argument():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="head dim") as e:
        mha.flash_attn_func(q, k[..., :8], v)
    assert e.value.argument == "k"
    with pytest.raises(ValueError) as e:
        mha.flash_attn_func(q, k[:, :, :1].repeat(3, axis=2), v[:, :, :1].repeat(3, axis=2))  # 3 KV heads, 2 q heads
    assert e.value.argument == "k"
    for call in (mha.flash_attn_func, mha.attention):
        with pytest.raises(ValueError, match="window_size") as e:
            call(q, k, v, window_size=5)
        assert e.value.argument == "window_size"
    with pytest.raises(ValueError) as e:
        mha.attention(q, k, v, dropout_p=1.0)
    assert e.value.argument == "dropout_p"


def test_dtypes_ranks_and_devices():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="float64"):
        mha.flash_attn_func(q.astype(np.float64), k, v)
    with pytest.raises(ValueError, match="q's dtype"):
        mha.flash_attn_func(q, k.astype(np.float16), v)
    with pytest.raises(ValueError) as e:
        mha.flash_attn_func(q[0], k, v)
    assert e.value.argument == "q"
    with pytest.raises(TypeError, match="q: expected a NumPy array"):
        mha.flash_attn_func(q.tolist(), k, v)
    with pytest.raises(ValueError, match="dimensions"):
        mha.scaled_dot_product_attention(q[0, 0], k[0, 0], v[0, 0])


def test_layouts_and_mask_dtypes_are_named():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="layout = 'bsdh'") as e:
        mha.attention(q, k, v, layout="bsdh")
    assert e.value.argument == "layout"
    with pytest.raises(ValueError, match="mask: dtype int32") as e:
        mha.attention(q, k, v, mask=np.zeros((8, 8), np.int32))
    assert e.value.argument == "mask"


def test_unsupported_is_not_implemented_error():
    q, k, v = qkv(d=300)
    with pytest.raises(NotImplementedError) as e:
        mha.flash_attn_func(q, k, v)
    assert e.value.argument == "q"
    q, k, v = qkv()
    with pytest.raises(NotImplementedError, match="softcap"):
        mha.flash_attn_func(q, k, v, softcap=30.0)
    with pytest.raises(NotImplementedError, match="alibi_slopes"):
        mha.flash_attn_func(q, k, v, alibi_slopes=np.ones(2, np.float32))


def test_capacity_exceeded_is_a_runtime_error():
    assert issubclass(mha.CapacityExceededError, RuntimeError)
    cache = mha.KvCache(kv_heads=1, head_dim=8, dtype="f32", max_seqs=1, max_seq_len=4)
    seq = cache.add_sequence()
    with pytest.raises(mha.CapacityExceededError):
        cache.add_sequence()
    kv = np.ones((1, 5, 1, 8), np.float32)
    with pytest.raises(mha.CapacityExceededError) as e:
        cache.append(np.array([seq], np.int32), kv, kv)
    assert e.value.argument == "positions"
    assert cache.length(seq) == 0  # nothing written


def test_io_error_is_os_error(tmp_path):
    with pytest.raises(OSError) as e:
        mha.MultiHeadAttention(hidden=64, heads=4, checkpoint=str(tmp_path / "missing.safetensors"))
    assert "missing.safetensors" in str(e.value)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(OSError):
        mha.MultiHeadAttention(hidden=64, heads=4, checkpoint=str(bad))


def test_nothing_is_written_on_error():
    q, k, v = qkv()
    out = np.full((1, 8, 2, 16), 7.0, np.float32)
    lse = np.full((1, 2, 8), 7.0, np.float32)
    with pytest.raises(ValueError):
        mha._mha.attention(q, k, v[:, :4], out, lse)
    assert np.all(out == 7.0) and np.all(lse == 7.0)
    with pytest.raises(ValueError) as e:  # the output overlapping an input
        mha._mha.attention(q, k, v, q)
    assert e.value.argument == "out"


def test_gpu_tensors_and_bad_cu_seqlens():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="cu_seqlens_q"):
        mha.flash_attn_varlen_func(q[0], k[0], v[0], np.array([0.0, 8.0]), [0, 8], 8, 8)
    with pytest.raises(ValueError) as e:
        mha.flash_attn_varlen_func(q[0], k[0], v[0], [0, 9], [0, 8], 9, 8)  # past total_q
    assert e.value.argument == "cu_seqlens_q"
    # Index arrays past int32 had wrapped silently (2^33 -> 0), or float tensors truncated.
    with pytest.raises(ValueError, match="expected int32 values") as e:
        mha.flash_attn_varlen_func(q[0], k[0], v[0], np.array([0, 2**33]), [0, 8], 8, 8)
    assert e.value.argument == "cu_seqlens_q"
    with pytest.raises(ValueError, match="expected an integer array") as e:
        mha.flash_attn_varlen_func(q[0], k[0], v[0], torch.tensor([0.0, 8.0]), [0, 8], 8, 8)
    assert e.value.argument == "cu_seqlens_q"
    t = torch.from_numpy(q)
    with pytest.raises(ValueError, match="expected both or neither"):
        mha._mha.attention(t, t, t, torch.empty_like(t), cu_seqlens_q=np.array([0, 1], np.int32))
