"""Frozen-trunk feature cache: the trunk's output h_cut and attention mask, computed once.

A frozen trunk maps the same tokens to the same h_cut every epoch, so training
above the cut needs the trunk only once. The cache holds, for N examples
right-padded to S tokens:

* ``features.npy``  (N, S, d) float32 or float16 — h_cut; padded positions are 0;
* ``mask.npy``      (N, S) uint8 — the attention mask (1 = real token);
* ``key.json``      what the features are of (model hash, cut, data digest,
  dtype, shape); a cache on disk is reused only when its key matches.

In memory it is two numpy arrays; on disk, two ``.npy`` files opened with
``mmap_mode="r"`` so the OS pages features in as batches need them. The trunk
is any callable ``(input_ids, attention_mask) -> hidden`` on torch tensors: the
server passes :meth:`SequenceClassifier.trunk_forward`, a device an ONNX
session. :meth:`FeatureCache.batch` trims a batch to its longest example, the
same width a batch of freshly tokenized texts has, so a top model sees
identical shapes whether it trains on the cache or on the live trunk.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgetune import strict_json
from edgetune.arrays import batch_width, data_digest, length_sorted_batches  # noqa: F401 (re-exported)
from edgetune.io import atomic_directory
from edgetune.progress import progress_bar

TrunkFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
CACHE_DTYPES = ("float32", "float16")


@dataclass
class FeatureCache:
    """h_cut and attention masks for N examples (see the module docstring for the format)."""

    features: np.ndarray
    mask: np.ndarray
    key: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def __len__(self) -> int:
        return self.features.shape[0]

    @property
    def hidden_size(self) -> int:
        return self.features.shape[2]

    @property
    def in_memory(self) -> bool:
        return self.path is None

    @property
    def nbytes(self) -> int:
        return int(self.features.nbytes + self.mask.nbytes)

    def batch(
        self, indices: Sequence[int] | np.ndarray, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(hidden float32 (B, W, d), mask int64 (B, W))`` for ``indices``, W = longest example."""
        idx = np.asarray(indices, dtype=np.int64)
        mask = np.asarray(self.mask[idx])
        width = batch_width(mask)
        hidden = torch.from_numpy(np.ascontiguousarray(self.features[idx, :width])).float()
        mask_t = torch.from_numpy(mask[:, :width].astype(np.int64))
        return hidden.to(device), mask_t.to(device)

    def save(self, path: str | Path) -> FeatureCache:
        """Write this cache to ``path`` (atomically, the format above); returns it memory-mapped from there."""
        with atomic_directory(path) as tmp:
            np.save(tmp / "features.npy", np.asarray(self.features))
            np.save(tmp / "mask.npy", np.asarray(self.mask).astype(np.uint8))
            (tmp / "key.json").write_text(strict_json.dumps(self.key, indent=2))
        opened = FeatureCache.open(path)
        assert opened is not None
        return opened

    # -- building ------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        trunk: TrunkFn,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        *,
        batch_size: int = 64,
        dtype: str = "float32",
        path: str | Path | None = None,
        key: dict[str, Any] | None = None,
        device: torch.device | str | None = None,
        progress: bool = True,
    ) -> FeatureCache:
        """Run ``trunk`` once over the tokenized data; keep the result in memory, or in ``path`` (memory-mapped).

        The directory at ``path`` is written atomically: a crash leaves no half cache.
        """
        if dtype not in CACHE_DTYPES:
            raise ValueError(f"cache dtype must be one of {CACHE_DTYPES}, got {dtype!r}")
        if len(input_ids) == 0:
            raise ValueError("no examples to cache")
        n, width = input_ids.shape
        key = {**(key or {}), "dtype": dtype, "num_examples": int(n), "width": int(width)}
        key.setdefault("data", data_digest(input_ids, attention_mask))
        batches = length_sorted_batches(attention_mask, batch_size)
        mask = attention_mask.astype(np.uint8)
        if path is None:
            features = _fill(trunk, input_ids, mask, batches, None, dtype, device, progress)
            return cls(features, mask, key)
        path = Path(path)
        with atomic_directory(path) as tmp:
            features = _fill(trunk, input_ids, mask, batches, tmp / "features.npy", dtype, device, progress)
            features.flush()
            del features
            np.save(tmp / "mask.npy", mask)
            (tmp / "key.json").write_text(strict_json.dumps(key, indent=2))
        return cls.open(path)

    @classmethod
    def reuse_or_build(
        cls,
        trunk: TrunkFn,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        *,
        key: dict[str, Any],
        path: str | Path | None = None,
        **options: Any,
    ) -> FeatureCache:
        """The cache at ``path`` if its key matches ``key`` (a resumed run), else :meth:`build` with ``options``."""
        if path is not None:
            found = cls.open(path, expect=key)
            if found is not None:
                return found
        return cls.build(trunk, input_ids, attention_mask, path=path, key=key, **options)

    @classmethod
    def open(cls, path: str | Path, expect: dict[str, Any] | None = None) -> FeatureCache | None:
        """A cache on disk, memory-mapped read-only; ``None`` if absent or its key differs from ``expect``."""
        path = Path(path)
        try:
            key = json.loads((path / "key.json").read_text())
            features = np.load(path / "features.npy", mmap_mode="r")
            mask = np.load(path / "mask.npy")
        except (OSError, ValueError):
            return None
        if expect is not None and any(key.get(k) != v for k, v in expect.items()):
            return None
        if features.shape[:2] != mask.shape:
            return None
        return cls(features, mask, key, path)


@torch.inference_mode()
def _fill(
    trunk: TrunkFn,
    input_ids: np.ndarray,
    mask: np.ndarray,
    batches: list[np.ndarray],
    file: Path | None,
    dtype: str,
    device: torch.device | str | None,
    progress: bool,
) -> np.ndarray:
    n, width = input_ids.shape
    out: np.ndarray | None = None
    with progress_bar("caching trunk features", total=n, enabled=progress) as advance:
        for idx in batches:
            w = batch_width(mask[idx])
            ids_t = torch.from_numpy(input_ids[idx, :w]).to(device)
            mask_t = torch.from_numpy(mask[idx, :w].astype(np.int64)).to(device)
            hidden = trunk(ids_t, mask_t)
            hidden = (hidden * mask_t.unsqueeze(-1).to(hidden.dtype)).float().cpu().numpy()
            if out is None:
                shape = (n, width, hidden.shape[-1])
                if file is None:
                    out = np.zeros(shape, dtype=dtype)
                else:
                    out = np.lib.format.open_memmap(file, mode="w+", dtype=dtype, shape=shape)
            out[idx, :w] = hidden.astype(dtype)  # columns past w stay 0 (both storages start zeroed)
            advance(len(idx))
    if out is None:
        raise ValueError("no examples to cache")
    return out
