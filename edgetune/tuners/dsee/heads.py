"""Attention heads of one block: how important each is and how to remove it (the family says where they are).

Head importance is the squared Frobenius norm of the head's slices of the
projections: the Q, K and V rows (out features) of the head and the O
columns (in features) that read its output. Models whose K/V heads are
shared between query heads (grouped-query attention) score and remove only
the head's Q rows and O columns.

Removal uses transformers' ``prune_heads`` where the attention module has it
(BERT, RoBERTa, DistilBERT, GPT-2): the projections shrink and the attention
runs on fewer heads, so the FLOPs are really gone. Llama-style attention has
no ``prune_heads``; there the head's Q rows and O columns are zeroed (masked).
The output is the same as removing the head, but a dense kernel still
computes it: :func:`~edgetune.tuners.dsee.prune.inference_flops` counts
masked heads in the dense figure and leaves them out of the theoretical one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from edgetune.families import family_for
from edgetune.tuners.dsee.layout import weight_out_in

MASKED = "edgetune_masked_heads"


@dataclass
class HeadSlices:
    """The projections of one attention module and how its heads are laid out."""

    attention: nn.Module
    q: list[tuple[nn.Module, int]]  # (layer, offset of the head block in its out features)
    kv: list[tuple[nn.Module, int]]  # empty when K/V heads are shared (GQA)
    o: nn.Module
    num_heads: int
    head_dim: int
    prunable: bool  # the module has transformers' prune_heads


def head_slices(block: nn.Module, family: str) -> HeadSlices:
    """Locate the attention of ``block`` (a block of the family of model type ``family``, from transformers or
    :mod:`edgetune.native`): each family knows its layout (:meth:`edgetune.families.base.Family.attention_heads`)."""
    return family_for(family).attention_heads(block)


def masked_heads(slices: HeadSlices) -> set[int]:
    return set(getattr(slices.attention, MASKED, set()))


def head_importance(slices: HeadSlices) -> torch.Tensor:
    """Squared norm of each head's Q/K/V rows and O columns (masked heads score 0)."""
    h, dh = slices.num_heads, slices.head_dim
    score = torch.zeros(h)
    with torch.no_grad():
        for layer, offset in slices.q + slices.kv:
            w = weight_out_in(layer)[offset : offset + h * dh].float()
            score += w.pow(2).reshape(h, dh, -1).sum(dim=(1, 2)).cpu()
        o = weight_out_in(slices.o).float()  # (d, h * dh)
        score += o.pow(2).reshape(o.shape[0], h, dh).sum(dim=(0, 2)).cpu()
    return score


def remove_heads(slices: HeadSlices, heads: list[int]) -> None:
    """Remove ``heads`` (indices among the module's current heads) with prune_heads, or mask them."""
    if not heads:
        return
    if slices.prunable:
        # prune_heads numbers heads as in the unpruned model: map current positions back to those ids
        done = set(getattr(slices.attention, "pruned_heads", set()))
        original = [i for i in range(slices.num_heads + len(done)) if i not in done]
        slices.attention.prune_heads([original[h] for h in heads])
        return
    dh = slices.head_dim
    with torch.no_grad():
        for head in heads:
            for layer, offset in slices.q:
                weight_out_in(layer)[offset + head * dh : offset + (head + 1) * dh] = 0
                bias = getattr(layer, "bias", None)
                if bias is not None:
                    bias[offset + head * dh : offset + (head + 1) * dh] = 0
            weight_out_in(slices.o)[:, head * dh : (head + 1) * dh] = 0
    setattr(slices.attention, MASKED, masked_heads(slices) | set(heads))
