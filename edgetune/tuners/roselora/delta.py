"""The compact format of a row/column-sparse tensor in a delta: values + indices, safetensors-ready.

A RoseLoRA factor keeps the same number m of entries in every row of A
(sparse along dim 1) and in every column of B (sparse along dim 0). Such a
tensor is stored as two dense tensors of the same shape, the tensor's shape
with ``dim`` shrunk to m:

* ``<name>.values``  — the kept values (the tensor's dtype), in index order;
* ``<name>.indices`` — their positions along ``dim`` (int16 when the
  dimension fits, else int32).

A dense tensor of shape (r, k) (4 bytes per value) thus costs m / k * (4 + 2)
bytes per entry: 1.5 x the density. Reading it back scatters the values into
zeros, so the round trip is exact.
"""

from __future__ import annotations

import torch

VALUES, INDICES = ".values", ".indices"


def index_dtype(size: int) -> torch.dtype:
    return torch.int16 if size <= torch.iinfo(torch.int16).max + 1 else torch.int32


def compress(tensor: torch.Tensor, mask: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, indices) of ``tensor`` on ``mask``, which keeps the same count along ``dim`` everywhere."""
    if mask.shape != tensor.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} differs from tensor shape {tuple(tensor.shape)}")
    counts = mask.sum(dim=dim)
    m = int(counts.flatten()[0]) if counts.numel() else 0
    if not bool((counts == m).all()):
        raise ValueError(f"the mask keeps different counts along dim {dim}; it is not row/column sparse")
    if bool((tensor.detach().masked_fill(mask, 0) != 0).any()):
        raise ValueError("the tensor has non-zero entries outside its mask")
    # kept positions first (stable sort keeps them in index order), then the first m of them
    order = torch.argsort((~mask).to(torch.int8), dim=dim, stable=True)
    indices = order.narrow(dim, 0, m)
    values = torch.gather(tensor.detach(), dim, indices)
    return values.cpu().contiguous(), indices.to(index_dtype(tensor.shape[dim])).cpu().contiguous()


def expand(values: torch.Tensor, indices: torch.Tensor, shape: torch.Size, dim: int) -> torch.Tensor:
    """The dense tensor of ``shape`` holding ``values`` at ``indices`` along ``dim`` (zeros elsewhere)."""
    expected = list(shape)
    expected[dim] = values.shape[dim] if values.dim() == len(shape) else -1
    if values.shape != indices.shape or list(values.shape) != expected:
        raise ValueError(
            f"sparse entry of shape {tuple(values.shape)} / indices {tuple(indices.shape)} "
            f"does not fit a tensor of shape {tuple(shape)} along dim {dim}"
        )
    idx = indices.long()
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= shape[dim]):
        raise ValueError(f"sparse indices out of range 0..{shape[dim] - 1}")
    dense = torch.zeros(shape, dtype=values.dtype)
    dense.scatter_(dim, idx, values)
    return dense


def mask_of(indices: torch.Tensor, shape: torch.Size, dim: int) -> torch.Tensor:
    """The boolean mask that ``indices`` (along ``dim``) select in a tensor of ``shape``."""
    mask = torch.zeros(shape, dtype=torch.bool)
    mask.scatter_(dim, indices.long(), True)
    return mask
