"""Data-free merging of models fine-tuned from one base: RankMean and its baselines.

RankMean (Findings of ACL 2024, "RankMean: Module-Level Importance
Score for Merging Fine-tuned LLM Models"); our reading of the abstract:

* a *module* is, by default, one transformer block (``granularity="layer"``,
  as in the authors' reference code); ``"module"`` uses each parameter-owning
  leaf module inside the blocks (e.g. ``encoder.layer.3.attention.self.query``),
  ``"tensor"`` each parameter tensor (the finer-grained variants);
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
from pathlib import Path

import numpy as np
import torch
from scipy.stats import rankdata

from edgetune.errors import EdgetuneError

METHODS = ("rankmean", "average", "task_arithmetic")
GRANULARITIES = ("layer", "module", "tensor")
# ``...layer.3.``, ``...layers.3.``, ``...h.3.`` (GPT-2), ``blocks.3.`` (edgetune TopModel)
LAYER_PATTERN = re.compile(r"(^|\.)(layer|layers|h|blocks)\.(\d+)\.")


class MergeError(EdgetuneError, ValueError):
    """Models that cannot be merged (different bases, keys or shapes)."""


@dataclass
class MergeReport:
    method: str
    num_models: int
    layer_modules: int  # ranked modules (blocks, leaf modules or tensors, by granularity)
    other_tensors: int
    relative_change: list[float]  # per model: median relative L2 change of the weight matrices
    coefficients: dict[str, list[float]] = field(default_factory=dict)  # module -> p_i (RankMean)


def is_layer_param(name: str) -> bool:
    return LAYER_PATTERN.search(name) is not None


def module_of(name: str) -> str:
    return name.rsplit(".", 1)[0]


def group_of(name: str, granularity: str) -> str:
    """The RankMean module a block parameter belongs to: its block, its leaf module, or itself."""
    if granularity == "layer":
        match = LAYER_PATTERN.search(name)
        return name[: match.end() - 1]
    return module_of(name) if granularity == "module" else name


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
    """Per model: the median over weight matrices of ||theta_i - theta_0|| / ||theta_0||.

    Matrices, not norms and biases: those start at the same constants (1, 0) in
    every initialization and would make unrelated networks look alike. The
    median, not the max: fine-tuning may move a few matrices a lot (or leave
    most untouched), while two different initializations differ in every one.
    """
    shared = [k for k in models[0] if k in base and base[k].is_floating_point() and base[k].dim() >= 2]
    out = []
    for m in models:
        ratios = [
            float((m[k].double() - base[k].double()).norm() / base[k].double().norm().clamp_min(1e-30)) for k in shared
        ]
        out.append(float(np.median(ratios)) if ratios else 0.0)
    return out


def rankmean_coefficients(
    base: Mapping[str, torch.Tensor], models: Sequence[Mapping[str, torch.Tensor]], granularity: str = "layer"
) -> dict[str, np.ndarray]:
    """module -> (n_models,) merge coefficients from normalized within-model ranks."""
    if granularity not in GRANULARITIES:
        raise MergeError(f"unknown granularity {granularity!r}; choose one of {', '.join(GRANULARITIES)}")
    modules: dict[str, list[str]] = {}
    for name in models[0]:
        if is_layer_param(name) and name in base and models[0][name].is_floating_point():
            modules.setdefault(group_of(name, granularity), []).append(name)
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
    granularity: str = "layer",
) -> tuple[dict[str, torch.Tensor], MergeReport]:
    """Merge ``models`` (same keys and shapes, fine-tuned from ``base``) without data.

    ``scale`` is task arithmetic's lambda. A model whose weight matrices moved more
    than ``max_relative_change`` (median relative L2) from the base was not
    fine-tuned from it: merging would average unrelated networks, so it is refused.
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
                f"model {i} differs from the base by {r:.2f} (median relative change of its weight matrices "
                f"> {max_relative_change}): "
                "it was not fine-tuned from this base"
            )
    coeffs = rankmean_coefficients(base, models, granularity) if method == "rankmean" else {}
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
        elif method == "rankmean" and is_layer_param(name) and group_of(name, granularity) in coeffs:
            group = group_of(name, granularity)
            p = torch.as_tensor(coeffs[group], dtype=torch.float64).view(-1, *([1] * tensors[0].dim()))
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


# -- files ------------------------------------------------------------------------------------------
def load_state(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """Tensors of a classifier checkpoint, a Hugging Face model directory or a ``.safetensors`` file.

    Checkpoints and HF models are keyed like ``SequenceClassifier.state_dict()`` (``model.*``,
    ``head.*``) so a pretrained base and its fine-tuned classifiers line up.
    """
    from safetensors.torch import load_file

    from edgetune.backbones import Backbone
    from edgetune.modeling import SequenceClassifier

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such model or state file")
    if path.is_file():
        if path.suffix != ".safetensors":
            raise MergeError(f"{path}: expected a .safetensors state file or a model directory")
        return load_file(str(path)), "state"
    if (path / "edgetune.json").is_file():
        return dict(SequenceClassifier.from_pretrained(path).state_dict()), "classifier"
    if (path / "config.json").is_file():
        model = Backbone.from_pretrained(path).model
        return {f"model.{k}": v for k, v in model.state_dict().items()}, "huggingface"
    raise MergeError(f"{path}: neither an edgetune checkpoint, a Hugging Face model directory nor a .safetensors file")


def merge_files(
    base: str | Path,
    models: Sequence[str | Path],
    out: str | Path,
    method: str = "rankmean",
    scale: float = 1.0,
    head_from: int = 0,
    granularity: str = "layer",
) -> MergeReport:
    """Merge checkpoints (or state files) fine-tuned from ``base`` and write the result atomically.

    Classifier checkpoints give a classifier checkpoint; task heads are merged when every model has
    the same labels, else the head (and labels, tokenizer) of ``models[head_from]`` is kept.
    State files give a state file.
    """
    from safetensors.torch import save

    from edgetune.evaluation import load_trained
    from edgetune.io import atomic_write_bytes

    base_state, _ = load_state(base)
    loaded = [load_state(m) for m in models]
    kinds = {kind for _, kind in loaded}
    if len(kinds) != 1:
        raise MergeError(f"cannot merge different kinds of inputs together: {sorted(kinds)}")
    states = [s for s, _ in loaded]
    if not 0 <= head_from < len(models):
        raise MergeError(f"head_from must index one of the {len(models)} models, got {head_from}")
    kind = kinds.pop()
    if kind != "classifier":
        merged, report = merge_state_dicts(base_state, states, method, scale, granularity=granularity)
        atomic_write_bytes(out, save({k: v.contiguous() for k, v in merged.items()}))
        return report

    keeper, encoder = load_trained(models[head_from])
    same_labels = all(load_trained(m)[0].labels == keeper.labels for m in models)
    head_keys = [k for k in states[0] if k.startswith("head.")]
    if not same_labels:  # task-specific heads: merge the bodies only
        states = [{k: v for k, v in s.items() if not k.startswith("head.")} for s in states]
    merged, report = merge_state_dicts(base_state, states, method, scale, granularity=granularity)
    if not same_labels:
        merged.update({k: keeper.state_dict()[k] for k in head_keys})
    keeper.load_state_dict(merged, strict=True)
    keeper.meta.update(
        {
            "merge": {
                "method": method,
                "granularity": granularity,
                "models": [str(m) for m in models],
                "base": str(base),
                "heads": "merged" if same_labels else f"from {models[head_from]}",
                "relative_change": report.relative_change,
            }
        }
    )
    keeper.save_pretrained(out, encoder)
    return report
