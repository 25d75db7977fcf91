"""Torch-free helpers on tokenized batches, shared by the server's feature cache and the device's backends.

A batch is a pair of arrays: token ids ``(n, S)`` and an attention mask ``(n, S)``
(1 = real token, right-padded). Every trainer batches by length and trims a
batch to its longest example, so these three functions decide the shapes a
top sees on every backend; they live apart from :mod:`edgetune.features`
(which imports torch) so that a torch-free device job uses the same ones.
"""

from __future__ import annotations

import hashlib

import numpy as np


def data_digest(input_ids: np.ndarray, attention_mask: np.ndarray) -> str:
    """sha256 over the token ids and mask: identifies the tokenized data a cache was built from."""
    h = hashlib.sha256(f"{input_ids.shape}:{input_ids.dtype}".encode())
    h.update(np.ascontiguousarray(input_ids).tobytes())
    h.update(np.ascontiguousarray(attention_mask).astype(np.uint8).tobytes())
    return h.hexdigest()


def batch_width(mask: np.ndarray) -> int:
    """Columns up to the last real token of any row (the width a tokenizer pads this batch to)."""
    used = np.flatnonzero(mask.any(axis=0))
    return int(used[-1]) + 1 if used.size else 1


def length_sorted_batches(mask: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Index batches of similar length (less padding); deterministic."""
    order = np.argsort(mask.sum(axis=1), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
