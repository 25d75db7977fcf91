"""One text encoder for server and device.

The server loads a Hugging Face tokenizer; the device only has the package's
``tokenizer.json``. Both sides encode through the same ``tokenizers.Tokenizer``
object configured the same way (right padding, truncation at ``max_length``),
so the token ids on the device are the ids the planner and trainer saw.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgetune.io import atomic_write_json

if TYPE_CHECKING:  # imported where a tokenizer is built: a device that tokenizes in onnxruntime has no tokenizers
    from tokenizers import Tokenizer


def pad_batch(token_ids: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded int64 ``(input_ids, attention_mask)`` of token id lists."""
    width = max(1, max(len(t) for t in token_ids))
    ids = np.full((len(token_ids), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(token_ids), width), dtype=np.int64)
    for i, t in enumerate(token_ids):
        ids[i, : len(t)] = t
        mask[i, : len(t)] = 1
    return ids, mask


class TextEncoder:
    """Texts -> right-padded ``(input_ids, attention_mask)`` int64 arrays."""

    def __init__(self, tokenizer: Tokenizer, max_length: int = 128, pad_id: int = 0, pad_token: str = "") -> None:
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {max_length}")
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.pad_id = int(pad_id)
        self.pad_token = pad_token
        self.tokenizer.enable_truncation(self.max_length)
        self.tokenizer.no_padding()

    @classmethod
    def from_pretrained(cls, path: str | Path, max_length: int = 128) -> TextEncoder:
        """From a model directory or hub id holding a fast tokenizer."""
        from tokenizers import Tokenizer
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(path, use_fast=True)
        if not hf.is_fast:
            raise ValueError(f"{path}: edgetune needs a fast (tokenizers) tokenizer")
        pad_token = hf.pad_token or hf.eos_token or hf.unk_token
        pad_id = hf.convert_tokens_to_ids(pad_token)
        backend = Tokenizer.from_str(hf.backend_tokenizer.to_str())
        limit = getattr(hf, "model_max_length", max_length) or max_length
        return cls(backend, min(max_length, int(limit)) if limit < 10**9 else max_length, pad_id, pad_token)

    @classmethod
    def from_dir(cls, directory: str | Path) -> TextEncoder:
        """From ``tokenizer.json`` + ``encoder.json`` as written by :meth:`save`."""
        from tokenizers import Tokenizer

        directory = Path(directory)
        meta = json.loads((directory / "encoder.json").read_text())
        tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
        return cls(tok, meta["max_length"], meta["pad_id"], meta.get("pad_token", ""))

    def save(self, directory: str | Path) -> list[Path]:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tok_path = directory / "tokenizer.json"
        self.tokenizer.no_truncation()
        try:
            from edgetune.io import atomic_write_text

            atomic_write_text(tok_path, self.tokenizer.to_str())
        finally:
            self.tokenizer.enable_truncation(self.max_length)
        meta_path = directory / "encoder.json"
        atomic_write_json(meta_path, self.config())
        return [tok_path, meta_path]

    def config(self) -> dict:
        return {"max_length": self.max_length, "pad_id": self.pad_id, "pad_token": self.pad_token}

    def token_ids(self, text: str) -> list[int]:
        """Ids of ``text`` without special tokens (used to map label words to tokens)."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def _token_ids(self, texts: Sequence[str], chunk: int = 256) -> list[list[int]]:
        """Ids of every text, tokenized ``chunk`` texts at a time: an Encoding of a long document holds
        every token of it (offsets, strings) before truncation, so encoding a whole corpus at once can
        cost hundreds of MB."""
        texts = list(texts)
        out: list[list[int]] = []
        for start in range(0, len(texts), chunk):
            out.extend(e.ids for e in self.tokenizer.encode_batch(texts[start : start + chunk]))
        return out

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        return pad_batch(self._token_ids(texts), self.pad_id)

    def lengths(self, texts: Sequence[str]) -> np.ndarray:
        return np.array([len(t) for t in self._token_ids(texts)])
