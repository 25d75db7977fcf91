"""Data-free merging of models fine-tuned from one base: RankMean and its baselines.

RankMean (Findings of ACL 2024, "RankMean: Module-Level Importance
Score for Merging Fine-tuned LLM Models"); our reading of the abstract:

* a *module* is a parameter-owning leaf module inside the repeated blocks
  (e.g. ``encoder.layer.3.attention.self.query`` with its weight and bias);
* model i's importance for module m is its weight change from the base,
  s_im = sum |theta_im - theta_0m| (L1 over the module's parameters);
* the scores are ranked *within each model* (average ranks for ties) and
  normalized by the number of modules, r_im = rank_i(s_im) / M, which makes
  models trained for different lengths or learning rates comparable;
* the merge coefficient of model i for module m is p_im = r_im / sum_j r_jm
  (for two models p = R_1 / (R_1 + R_2)), and theta_m = sum_i p_im theta_im;
* parameters outside the blocks (embeddings, final norms, task heads) are
  averaged.

Baselines: plain averaging, and task arithmetic (Ilharco et al., 2023),
theta = theta_0 + lambda * sum_i (theta_i - theta_0).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import rankdata

METHODS = ("rankmean", "average", "task_arithmetic")
# ``...layer.3.``, ``...layers.3.``, ``...h.3.`` (GPT-2), ``blocks.3.`` (edgetune TopModel)
LAYER_PATTERN = re.compile(r"(^|\.)(layer|layers|h|blocks)\.(\d+)\.")


class MergeError(ValueError):
    """Models that cannot be merged (different bases, keys or shapes)."""


@dataclass
class MergeReport:
    method: str
    num_models: int
    layer_modules: int
    other_tensors: int
    relative_change: list[float]  # ||theta_i - theta_0|| / ||theta_0|| per model
    coefficients: dict[str, list[float]] = field(default_factory=dict)  # module -> p_i (RankMean)


def is_layer_param(name: str) -> bool:
    return LAYER_PATTERN.search(name) is not None


def module_of(name: str) -> str:
    return name.rsplit(".", 1)[0]


def _check_compatible(base: Mapping[str, torch.Tensor] | None, models: Sequence[Mapping[str, torch.Tensor]]) -> None:
    if len(models) < 2:
        raise MergeError(f"need at least 2 models to merge, got {len(models)}")
    keys = set(models[0])
    for i, m in enumerate(models[1:], start=2):
        if set(m) != keys:
            diff = sorted(set(m) ^ keys)[:5]
            raise MergeError(f"model {i} has different tensors than model 1 (e.g. {diff})")
    for name in sorted(keys):
        shapes = [tuple(m[name].shape) for m in models]
        if base is not None and name in base:
            shapes.append(tuple(base[name].shape))
        if len(set(shapes)) != 1:
            raise MergeError(f"tensor {name!r} has different shapes across models/base: {shapes}")


def relative_changes(base: Mapping[str, torch.Tensor], models: Sequence[Mapping[str, torch.Tensor]]) -> list[float]:
    shared = [k for k in models[0] if k in base and base[k].is_floating_point()]
    base_norm = torch.sqrt(sum(base[k].double().pow(2).sum() for k in shared))
    out = []
    for m in models:
        diff = torch.sqrt(sum((m[k].double() - base[k].double()).pow(2).sum() for k in shared))
        out.append(float(diff / base_norm.clamp_min(1e-30)))
    return out


def rankmean_coefficients(
    base: Mapping[str, torch.Tensor], models: Sequence[Mapping[str, torch.Tensor]]
) -> dict[str, np.ndarray]:
    """module -> (n_models,) merge coefficients from normalized within-model ranks."""
    modules: dict[str, list[str]] = {}
    for name in models[0]:
        if is_layer_param(name) and name in base and models[0][name].is_floating_point():
            modules.setdefault(module_of(name), []).append(name)
    names = sorted(modules)
    if not names:
        return {}
    scores = np.zeros((len(models), len(names)))
    for i, m in enumerate(models):
        for j, mod in enumerate(names):
            scores[i, j] = sum(float((m[p].double() - base[p].double()).abs().sum()) for p in modules[mod])
    ranks = np.stack([rankdata(row, method="average") / len(names) for row in scores])
    coeffs = ranks / ranks.sum(axis=0, keepdims=True)
    return {mod: coeffs[:, j] for j, mod in enumerate(names)}


def merge_state_dicts(
    base: Mapping[str, torch.Tensor] | None,
    models: Sequence[Mapping[str, torch.Tensor]],
    method: str = "rankmean",
    scale: float = 1.0,
    max_relative_change: float = 0.5,
) -> tuple[dict[str, torch.Tensor], MergeReport]:
    """Merge ``models`` (same keys and shapes, fine-tuned from ``base``) without data.

    ``scale`` is task arithmetic's lambda. A model whose weights moved more than
    ``max_relative_change`` (relative L2) from the base was not fine-tuned from it:
    merging would average unrelated networks, so it is refused.
    """
    if method not in METHODS:
        raise MergeError(f"unknown merge method {method!r}; choose one of {', '.join(METHODS)}")
    if method != "average" and base is None:
        raise MergeError(f"{method} needs the base model the others were fine-tuned from")
    _check_compatible(base, models)
    rel = relative_changes(base, models) if base is not None else []
    for i, r in enumerate(rel, start=1):
        if r > max_relative_change:
            raise MergeError(
                f"model {i} differs from the base by {r:.2f} (relative L2 change > {max_relative_change}): "
                "it was not fine-tuned from this base"
            )
    coeffs = rankmean_coefficients(base, models) if method == "rankmean" else {}
    merged: dict[str, torch.Tensor] = {}
    n_layer = 0
    for name in models[0]:
        tensors = [m[name] for m in models]
        if not tensors[0].is_floating_point():
            merged[name] = tensors[0].clone()
            continue
        stacked = torch.stack([t.double() for t in tensors])
        has_base = base is not None and name in base
        if method == "task_arithmetic" and has_base:
            b = base[name].double()
            value = b + scale * (stacked - b).sum(dim=0)
        elif method == "rankmean" and module_of(name) in coeffs:
            p = torch.as_tensor(coeffs[module_of(name)], dtype=torch.float64).view(-1, *([1] * tensors[0].dim()))
            value = (p * stacked).sum(dim=0)
            n_layer += 1
        else:
            value = stacked.mean(dim=0)
        merged[name] = value.to(tensors[0].dtype)
    report = MergeReport(
        method=method,
        num_models=len(models),
        layer_modules=len(coeffs),
        other_tensors=len(merged) - n_layer,
        relative_change=rel,
        coefficients={k: v.tolist() for k, v in coeffs.items()},
    )
    return merged, report
