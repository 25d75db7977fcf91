"""Latent traces: the pooled representation of every latent space h_0..h_L.

One forward pass of the frozen model over a calibration sample, block by
block, pooling after the embeddings and after each block. This is the only
model computation the SALF planner needs (no backward pass, no training).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from edgetune.backbones import Backbone
from edgetune.progress import progress_bar
from edgetune.tokenization import TextEncoder


@dataclass
class Traces:
    """``pooled[l, i]`` is example i's pooled h_l; l = 0 is the embedding output."""

    pooled: np.ndarray  # (L + 1, n, d) float32
    seconds: float

    @property
    def num_layers(self) -> int:
        return self.pooled.shape[0] - 1

    def __len__(self) -> int:
        return self.pooled.shape[1]


def length_sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Index batches of similar length (less padding), deterministic."""
    order = np.argsort(lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.inference_mode()
def collect_traces(
    backbone: Backbone,
    encoder: TextEncoder,
    texts: Sequence[str],
    batch_size: int = 32,
    progress: bool = True,
    description: str = "latent traces",
) -> Traces:
    """Pooled h_0..h_L for ``texts`` (order preserved), under ``torch.inference_mode``."""
    if not texts:
        raise ValueError("no texts to trace")
    start = time.perf_counter()
    backbone.model.eval()
    device = next(backbone.model.parameters()).device
    n_layers = backbone.num_layers
    out = np.zeros((n_layers + 1, len(texts), backbone.hidden_size), dtype=np.float32)
    batches = length_sorted_batches(encoder.lengths(texts), batch_size)
    with progress_bar(description, total=len(texts), enabled=progress) as advance:
        for idx in batches:
            ids, mask = encoder([texts[i] for i in idx])
            ids_t = torch.from_numpy(ids).to(device)
            mask_t = torch.from_numpy(mask).to(device)
            hidden = backbone.embed(ids_t, mask_t)
            out[0, idx] = backbone.pool(hidden, mask_t).float().cpu().numpy()
            kwargs = backbone.block_inputs(hidden, mask_t)
            for layer in range(n_layers):
                hidden = backbone.run_layers(hidden, mask_t, layer, layer + 1, block_inputs=kwargs)
                out[layer + 1, idx] = backbone.pool(hidden, mask_t).float().cpu().numpy()
            advance(len(idx))
    return Traces(out, time.perf_counter() - start)
