"""DSEE stage 2: magnitude pruning of the final weights of the trained blocks, and what it saves.

* :func:`prune_unstructured` zeroes exactly round(ratio x count) weights of
  smallest magnitude among the ``nn.Linear`` / ``Conv1D`` weights of the
  trained blocks, per matrix or with one global ranking (biases, norms and the
  head are left alone);
* :func:`prune_attention_heads` removes round(ratio x heads) heads of lowest
  importance from every trained block (:mod:`edgetune.tuners.dsee.heads`);
* :func:`inference_flops` counts the forward FLOPs of the trained blocks per
  example of n tokens, with the cost model's convention: 2 FLOPs per
  multiply-add of every weight per token, plus 4 n^2 x (attention width) for
  QK^T and AV. ``dense`` is what dense kernels execute (it drops only with
  removed heads); ``nonzero`` counts only non-zero weights and unmasked heads,
  the theoretical figure a sparse kernel could reach.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edgetune.modeling import TopModel
from edgetune.tuners.dsee.heads import head_importance, head_slices, masked_heads, remove_heads
from edgetune.tuners.dsee.layout import is_dense_layer, weight_out_in
from edgetune.tuners.lora.native import is_lora_layer

SCOPES = ("per_matrix", "global")


def prunable_weights(top: TopModel) -> dict[str, nn.Parameter]:
    """The 2-D weights of every ``nn.Linear`` / ``Conv1D`` in the trained blocks, by name in ``top``."""
    out = {}
    for name, module in top.blocks.named_modules():
        if is_lora_layer(module):
            raise ValueError("merge the adapters before pruning (found a LoRA layer in the trained blocks)")
        if is_dense_layer(module):
            out[f"blocks.{name}.weight"] = module.weight
    return out


@torch.no_grad()
def prune_unstructured(top: TopModel, ratio: float, scope: str = "per_matrix") -> dict[str, Any]:
    """Zero the smallest-magnitude ``ratio`` of the trained blocks' weights; returns counts per matrix."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"unstructured prune ratio must be in [0, 1), got {ratio}")
    if scope not in SCOPES:
        raise ValueError(f"prune scope must be one of {SCOPES}, got {scope!r}")
    weights = prunable_weights(top)
    if scope == "per_matrix":
        for w in weights.values():
            k = round(ratio * w.numel())
            if k:
                idx = torch.topk(w.abs().flatten(), k, largest=False).indices
                w.view(-1)[idx] = 0
    else:
        flat = torch.cat([w.detach().abs().flatten() for w in weights.values()])
        k = round(ratio * flat.numel())
        chosen = torch.zeros(flat.numel(), dtype=torch.bool)
        if k:
            chosen[torch.topk(flat, k, largest=False).indices] = True
        start = 0
        for w in weights.values():
            part = chosen[start : start + w.numel()].view_as(w).to(w.device)
            w.masked_fill_(part, 0)
            start += w.numel()
    return {name: {"zeros": int((w == 0).sum()), "size": w.numel()} for name, w in weights.items()}


@torch.no_grad()
def prune_attention_heads(top: TopModel, ratio: float) -> dict[int, list[int]]:
    """Remove the ``ratio`` least important heads of every trained block (at least one head stays).

    Returns {layer (0-based in the whole model): removed head positions}. For
    families with ``prune_heads`` the shared model config records the removed
    heads (``pruned_heads``), so a saved model reloads with the smaller shapes.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"head prune ratio must be in [0, 1), got {ratio}")
    removed: dict[int, list[int]] = {}
    for i, block in enumerate(top.blocks):
        slices = head_slices(block, top.family.name)
        alive = [h for h in range(slices.num_heads) if h not in masked_heads(slices)]
        count = min(round(ratio * slices.num_heads), len(alive) - 1)
        if count <= 0:
            continue
        score = head_importance(slices)
        heads = sorted(sorted(alive, key=lambda h: float(score[h]))[:count])
        layer = top.cut + i
        if slices.prunable:
            done = set(getattr(slices.attention, "pruned_heads", set()))
            original = [h for h in range(slices.num_heads + len(done)) if h not in done]
            ids = [original[h] for h in heads]
            config_heads = dict(getattr(top.config, "pruned_heads", {}) or {})
            config_heads[layer] = sorted(set(config_heads.get(layer, [])) | set(ids))
            top.config.pruned_heads = config_heads
            top.spec.setdefault("hf_config", {})["pruned_heads"] = {str(k): v for k, v in config_heads.items()}
        remove_heads(slices, heads)
        removed[layer] = heads
    return removed


def inference_flops(top: TopModel, seq_len: int) -> dict[str, Any]:
    """Forward FLOPs per example of the trained blocks: dense (executed) and non-zero (theoretical).

    ``linear`` is the projections' share alone (what a profiler that does not
    price the fused attention kernel measures).
    """
    n = seq_len
    blocks = []
    for block in top.blocks:
        linear = linear_nonzero = 0.0
        for module in block.modules():
            if is_dense_layer(module):
                w = weight_out_in(module)
                linear += 2.0 * w.numel() * n
                linear_nonzero += 2.0 * int(torch.count_nonzero(w)) * n
        slices = head_slices(block, top.family.name)
        alive = slices.num_heads - len(masked_heads(slices))
        attention = 4.0 * n * n * slices.num_heads * slices.head_dim
        attention_nonzero = 4.0 * n * n * alive * slices.head_dim
        blocks.append(
            {
                "linear": linear,
                "dense": linear + attention,
                "nonzero": linear_nonzero + attention_nonzero,
                "heads": alive,
            }
        )
    return {
        "seq_len": n,
        "linear": sum(b["linear"] for b in blocks),
        "dense": sum(b["dense"] for b in blocks),
        "nonzero": sum(b["nonzero"] for b in blocks),
        "blocks": blocks,
    }


def weight_sparsity(top: TopModel) -> float:
    """Share of zero entries among the trained blocks' prunable weights."""
    weights = prunable_weights(top)
    total = sum(w.numel() for w in weights.values())
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    return zeros / total if total else 0.0
