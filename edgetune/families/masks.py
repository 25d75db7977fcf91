"""Attention masks and pooling, built with plain tensor ops.

No data-dependent branches: the same code path runs eagerly, under autograd and inside an ONNX export.
Sequences are right-padded everywhere; with a causal mask, padding at the end never changes the real tokens,
so position ids are simply ``0..S-1``.
"""

from __future__ import annotations

import torch


def padding_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, S) 0/1 mask -> additive (B, 1, 1, S) mask for bidirectional attention."""
    keep = attention_mask[:, None, None, :].to(dtype)
    return (1.0 - keep) * torch.finfo(dtype).min


def causal_padding_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, S) 0/1 mask -> additive (B, 1, S, S) causal + padding mask."""
    ones = torch.ones_like(attention_mask[0], dtype=dtype)
    causal = torch.tril(ones[:, None] * ones[None, :])  # (S, S) lower triangle of ones
    keep = causal[None, None, :, :] * attention_mask[:, None, None, :].to(dtype)
    return (1.0 - keep) * torch.finfo(dtype).min


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


def last_token_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    last = (attention_mask.long().sum(dim=1) - 1).clamp_min(0)
    idx = last[:, None, None].expand(-1, 1, hidden.shape[-1])
    return hidden.gather(1, idx).squeeze(1)
