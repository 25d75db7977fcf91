"""Where the top's input comes from, batch by batch, and in what order.

* :class:`TrunkBatches` — naive freezing: the frozen trunk runs on every batch;
  a :class:`~edgetune.features.FeatureCache` is the cached counterpart (same
  ``batch(indices, device)`` interface, same batch widths).
* :class:`EpochSampler` — the example order of an epoch, a permutation drawn
  from (seed, epoch) and nothing else, so both modes and a resumed run see
  the same batches.
* :func:`trunk_released` — free the trunk's weights while only the top trains.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Sampler

from edgetune.data import DataError, TextDataset, stratified_split
from edgetune.features import FeatureCache, TrunkFn, batch_width
from edgetune.modeling import SequenceClassifier


class TrunkBatches:
    """Naive freezing: the frozen trunk runs on every batch, under ``no_grad``."""

    def __init__(self, trunk: TrunkFn, input_ids: np.ndarray, attention_mask: np.ndarray) -> None:
        self.trunk = trunk
        self.input_ids = input_ids
        self.mask = attention_mask

    def __len__(self) -> int:
        return len(self.input_ids)

    def batch(
        self, indices: Sequence[int] | np.ndarray, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64)
        mask = self.mask[idx]
        width = batch_width(mask)
        ids_t = torch.from_numpy(self.input_ids[idx, :width]).to(device)
        mask_t = torch.from_numpy(mask[:, :width].astype(np.int64)).to(device)
        with torch.no_grad():
            return self.trunk(ids_t, mask_t), mask_t


Source = FeatureCache | TrunkBatches


class EpochSampler(Sampler[int]):
    """A permutation drawn from (seed, epoch): the same batches in any mode, and after a resume."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return iter(np.random.default_rng([self.seed, self.epoch]).permutation(self.n).tolist())


def _collate(indices: list[int]) -> torch.Tensor:
    return torch.tensor(indices, dtype=torch.int64)


def collate_indices(indices: list[int]) -> torch.Tensor:
    return torch.tensor(indices, dtype=torch.int64)


def split_validation(dataset: TextDataset, fraction: float, seed: int) -> tuple[TextDataset, TextDataset | None]:
    """Hold out a stratified ``fraction`` of ``dataset`` for validation (none for 0)."""
    if fraction <= 0:
        return dataset, None
    try:
        return stratified_split(dataset, fraction, seed=seed)
    except ValueError as err:
        raise DataError(f"{dataset.source}: cannot hold out {fraction:.0%} for validation ({err})") from None


@contextlib.contextmanager
def trunk_released(classifier: SequenceClassifier, cut: int, scratch: Path) -> Iterator[None]:
    """Free the frozen trunk's weights while only the top trains (cached mode needs no trunk), then restore them.

    The embeddings and blocks 1..cut are parked in a safetensors file and moved
    to the meta device; afterwards they are rebuilt bit for bit. Tied readout
    weights are re-tied.
    """
    from safetensors.torch import safe_open, save_file

    from edgetune.freeze import embedding_modules

    backbone = classifier.backbone
    modules = [*embedding_modules(backbone.family, classifier.model), *list(backbone.blocks)[:cut]]
    device = next(modules[0].parameters()).device
    path = scratch / "trunk.safetensors"
    tensors = {}
    for i, m in enumerate(modules):
        tensors.update({f"{i}/p/{n}": t.detach().cpu().contiguous() for n, t in m.named_parameters()})
        tensors.update({f"{i}/b/{n}": t.detach().cpu().contiguous() for n, t in m.named_buffers()})
    save_file(tensors, str(path))
    del tensors
    for m in modules:
        m.to("meta")
    try:
        yield
    finally:
        with torch.no_grad(), safe_open(str(path), "pt") as parked:  # one tensor at a time: no second copy
            for i, m in enumerate(modules):
                m.to_empty(device=device)
                for n, t in m.named_parameters():
                    t.copy_(parked.get_tensor(f"{i}/p/{n}"))
                for n, t in m.named_buffers():
                    t.copy_(parked.get_tensor(f"{i}/b/{n}"))
        if hasattr(classifier.model, "tie_weights"):
            classifier.model.tie_weights()
        path.unlink(missing_ok=True)
