"""all-MiniLM-L6-v2 end to end: mha.SentenceEncoder against the golden embeddings of
sentence-transformers (data/goldens, made by scripts/make-goldens), its tokenization against the
tokenizer sentence-transformers ran, the CLI, and the errors of each bad input."""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

import mha

ROOT = pathlib.Path(__file__).resolve().parents[2]
GOLDENS = ROOT / "data" / "goldens" / "all-minilm-l6-v2"


@pytest.fixture(scope="module")
def golden():
    return {
        "sentences": json.loads((GOLDENS / "sentences.json").read_text()),
        "ids": np.load(GOLDENS / "ids.npy"),
        "cu_seqlens": np.load(GOLDENS / "cu_seqlens.npy"),
        "embeddings": np.load(GOLDENS / "embeddings.npy"),
    }


@pytest.fixture(scope="module")
def encoder():
    return mha.SentenceEncoder()


def assert_matches_goldens(got, want):
    assert got.shape == want.shape and got.dtype == np.float32
    assert np.abs(got - want).max() <= 1e-6
    cos = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    assert cos.min() >= 0.999999


def test_goldens_cover_what_the_issue_asks():
    lengths = np.diff(np.load(GOLDENS / "cu_seqlens.npy"))
    sentences = json.loads((GOLDENS / "sentences.json").read_text())
    assert len(sentences) >= 64 and "" in sentences
    assert lengths.min() == 2 and lengths.max() == 256  # the empty string; truncated at max_seq_length
    assert any("\u4e00" <= ch <= "\u9fff" for s in sentences for ch in s)  # CJK
    assert any("é" in s for s in sentences)  # accents


def test_tokenization_is_what_sentence_transformers_ran(encoder, golden):
    ids, cu = encoder.tokenize(golden["sentences"])
    np.testing.assert_array_equal(cu, golden["cu_seqlens"])
    np.testing.assert_array_equal(ids, golden["ids"])


@pytest.mark.parametrize("batch_size", [1, 7, 32, 64])
def test_encode_matches_sentence_transformers(encoder, golden, batch_size):
    assert_matches_goldens(encoder.encode(golden["sentences"], batch_size=batch_size), golden["embeddings"])


def test_every_isa_matches_sentence_transformers(encoder, golden, isa):
    assert_matches_goldens(encoder.embed_ids(golden["ids"], golden["cu_seqlens"]), golden["embeddings"])


def test_same_bits_for_any_thread_count(encoder, golden):
    saved = mha.num_threads()
    try:
        mha.set_num_threads(1)
        first = encoder.encode(golden["sentences"][:20])
        for threads in (2, 3):
            mha.set_num_threads(threads)
            np.testing.assert_array_equal(encoder.encode(golden["sentences"][:20]), first)
    finally:
        mha.set_num_threads(saved)


def test_one_string_gives_one_vector(encoder, golden):
    i = golden["sentences"].index("A man is eating food.")
    e = encoder.encode("A man is eating food.")
    assert e.shape == (384,)
    assert np.abs(e - golden["embeddings"][i]).max() <= 1e-6
    assert encoder.encode([]).shape == (0, 384)


def test_similar_sentences_are_closer(encoder):
    a, b, c = encoder.encode(["A man is eating food.", "A man is eating a piece of bread.", "A monkey is playing drums."])
    assert a @ b > a @ c


def cli():
    path = ROOT / "build" / "mha"
    if not path.exists():
        pytest.skip("the CLI is not built (scripts/build)")
    return str(path)


def test_cli_embeds_token_ids_and_text(encoder, golden, tmp_path):
    out = tmp_path / "e.npy"
    subprocess.run([cli(), "embed", "--model", str(encoder.model_dir), "--ids", str(GOLDENS / "ids.npy"),
                    "--cu-seqlens", str(GOLDENS / "cu_seqlens.npy"), "--out", str(out)], check=True,
                   capture_output=True)
    assert_matches_goldens(np.load(out), golden["embeddings"])
    text = tmp_path / "s.txt"
    picked = [s for s in golden["sentences"] if s and "\n" not in s][:10]
    text.write_text("\n".join(picked) + "\n", encoding="utf-8")

    env = dict(os.environ, MHA_PYTHON=sys.executable)
    subprocess.run([cli(), "embed", "--model", str(encoder.model_dir), "--text", str(text), "--out", str(out)],
                   check=True, capture_output=True, env=env)
    rows = [golden["sentences"].index(s) for s in picked]
    assert_matches_goldens(np.load(out), golden["embeddings"][rows])


def test_bad_inputs_are_typed_errors_and_write_nothing(encoder, golden):
    out = np.full((2, 384), 7.0, np.float32)
    ids = np.array([101, 2000, 102, 101, 102], np.int32)
    for bad_ids, cu, argument in [
        (np.array([101, 30522, 102, 101, 102], np.int32), [0, 3, 5], "ids"),
        (np.array([101, -1, 102, 101, 102], np.int32), [0, 3, 5], "ids"),
        (ids, [0, 3, 4], "cu_seqlens"),
        (ids, [0, 4, 3, 5], "cu_seqlens"),
        (np.ones(513, np.int32), [0, 513], "cu_seqlens"),  # past max_position_embeddings
    ]:
        cu = np.array(cu, np.int32)
        target = out[: len(cu) - 1]
        with pytest.raises(ValueError) as e:
            encoder.model._embed(bad_ids, cu, target, None, True)
        assert e.value.argument == argument
        assert (out == 7.0).all()
    with pytest.raises(ValueError) as e:
        encoder.model._embed(ids.astype(np.int64), np.array([0, 5], np.int32), out[:1], None, True)
    assert e.value.argument == "ids"
    with pytest.raises(ValueError) as e:
        encoder.model._embed(ids, np.array([0, 5], np.int32), out, None, True)  # 2 rows for 1 sequence
    assert e.value.argument == "out"
    with pytest.raises(ValueError) as e:
        encoder.encode(["a"], batch_size=0)
    assert e.value.argument == "batch_size"
    with pytest.raises(TypeError) as e:
        encoder.encode(["a", 3])
    assert e.value.argument == "sentences"


def model_copy(encoder, tmp_path, config=None, pooling=None):
    d = tmp_path / "model"
    d.mkdir()
    for name in ["model.safetensors", "tokenizer.json", "modules.json", "sentence_bert_config.json"]:
        (d / name).symlink_to(encoder.model_dir / name)
    cfg = json.loads((encoder.model_dir / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, **(config or {})}))
    (d / "1_Pooling").mkdir()
    pool = json.loads((encoder.model_dir / "1_Pooling" / "config.json").read_text())
    (d / "1_Pooling" / "config.json").write_text(json.dumps({**pool, **(pooling or {})}))
    return d


def test_bad_model_directories(encoder, tmp_path):
    with pytest.raises(OSError):
        mha.SentenceEncoder(tmp_path / "missing")
    assert mha.SentenceEncoder(model_copy(encoder, tmp_path)).dimension == 384
    shutil.rmtree(tmp_path / "model")
    with pytest.raises(NotImplementedError):
        mha.SentenceEncoder(model_copy(encoder, tmp_path, config={"hidden_act": "gelu_new"}))
    shutil.rmtree(tmp_path / "model")
    with pytest.raises(NotImplementedError) as e:
        mha.SentenceEncoder(model_copy(encoder, tmp_path, pooling={"pooling_mode_cls_token": True,
                                                                  "pooling_mode_mean_tokens": False}))
    assert e.value.argument == "model_dir"
    shutil.rmtree(tmp_path / "model")
    with pytest.raises(ValueError) as e:  # hidden 100 does not match the checkpoint's 384
        mha.SentenceEncoder(model_copy(encoder, tmp_path, config={"hidden_size": 100, "num_attention_heads": 4}))
