"""Attention heads of one block, per architecture family: where their weights are and how to remove them.

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


def _native_head_slices(block: nn.Module) -> HeadSlices | None:
    """The layout of a block of :mod:`edgetune.native` (the device's torch top): the same attribute names as
    transformers' blocks, but the head count lives on the block and there is no ``prune_heads``, so heads are
    masked (their Q rows and O columns zeroed: the same output as removing them)."""
    from edgetune import native

    heads = getattr(block, "heads", None)
    if isinstance(block, native.BertBlock):
        s = block.attention.self
        return HeadSlices(
            block.attention, [(s.query, 0)], [(s.key, 0), (s.value, 0)], block.attention.output.dense, heads,
            s.query.out_features // heads, False,
        )  # fmt: skip
    if isinstance(block, native.DistilBertBlock):
        a = block.attention
        return HeadSlices(a, [(a.q_lin, 0)], [(a.k_lin, 0), (a.v_lin, 0)], a.out_lin, heads,
                          a.q_lin.out_features // heads, False)  # fmt: skip
    if isinstance(block, native.GPT2Block):
        a = block.attn
        split = a.c_proj.weight.shape[-1]  # Conv1D(d, d): weight (in, out)
        return HeadSlices(a, [(a.c_attn, 0)], [(a.c_attn, split), (a.c_attn, 2 * split)], a.c_proj, heads,
                          split // heads, False)  # fmt: skip
    if isinstance(block, native.LlamaBlock):
        a = block.self_attn
        kv = [(a.k_proj, 0), (a.v_proj, 0)] if block.kv_heads == heads else []
        return HeadSlices(a, [(a.q_proj, 0)], kv, a.o_proj, heads, block.head_dim, False)
    return None


def head_slices(block: nn.Module, family: str) -> HeadSlices:
    """Locate the attention of ``block`` (a block of ``family``, from transformers or :mod:`edgetune.native`)."""
    native_slices = _native_head_slices(block)
    if native_slices is not None:
        return native_slices
    if family in ("bert", "roberta"):
        att = block.attention
        s = att.self
        heads, dim = s.num_attention_heads, s.attention_head_size
        return HeadSlices(att, [(s.query, 0)], [(s.key, 0), (s.value, 0)], att.output.dense, heads, dim, True)
    if family == "mpnet":
        att = block.attention
        s = att.attn
        heads, dim = s.num_attention_heads, s.attention_head_size
        # not prunable: the relative-position bias has one row per head, so heads are masked, not removed
        return HeadSlices(att, [(s.q, 0)], [(s.k, 0), (s.v, 0)], s.o, heads, dim, False)
    if family == "distilbert":
        att = block.attention
        heads = att.n_heads
        dim = att.q_lin.out_features // heads
        return HeadSlices(att, [(att.q_lin, 0)], [(att.k_lin, 0), (att.v_lin, 0)], att.out_lin, heads, dim, True)
    if family == "gpt2":
        att = block.attn
        split = att.split_size
        return HeadSlices(
            att,
            [(att.c_attn, 0)],
            [(att.c_attn, split), (att.c_attn, 2 * split)],
            att.c_proj,
            att.num_heads,
            att.head_dim,
            True,
        )
    if family == "llama":
        att = block.self_attn
        cfg = att.config
        heads = cfg.num_attention_heads
        kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
        dim = att.head_dim
        kv = [(att.k_proj, 0), (att.v_proj, 0)] if kv_heads == heads else []
        return HeadSlices(att, [(att.q_proj, 0)], kv, att.o_proj, heads, dim, False)
    raise ValueError(f"no attention-head layout for family {family!r}")


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
