"""Baseline planners with SALF's interface, so benchmarks can swap them in.

* ``topk``    — train the top ``k`` blocks (cut = L - k), the usual heuristic.
* ``gradnorm``— AutoFreeze-like (Liu et al., 2021): a few backward passes of the
  whole model with a probe-initialized head; blocks are ranked by gradient norm
  per parameter, and the cut keeps trainable the smallest top range whose
  blocks hold ``mass`` of the total gradient norm.
* ``autofreeze`` — AutoFreeze-like (Liu et al., 2021): a few steps of full
  fine-tuning (on a copy of the model); a block whose gradient norm changes by
  less than the median rate between the first and the second half of the
  steps has converged; the longest run of such blocks from the bottom is
  frozen. AutoFreeze applies the test repeatedly during training; here it
  runs once, before training, so that it can plan like the others.
* ``random``  — a uniformly random allowed cut (seeded).
* ``full``    — cut 0: train every block (embeddings stay frozen).

Under a budget, a baseline whose preferred cut does not fit falls back to the
fitting cut closest to it (scores are minus the distance to the preference).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from edgetune.data import sample
from edgetune.modeling import SequenceClassifier
from edgetune.planner.base import CutScores, Planner, PlanningInputs, allowed_cuts_mask
from edgetune.traces import length_sorted_batches


def _prefer(cut: int, num_layers: int, min_trainable_layers: int = 0) -> np.ndarray:
    scores = -np.abs(np.arange(num_layers + 1) - cut).astype(float)
    return np.where(allowed_cuts_mask(num_layers, min_trainable_layers), scores, np.nan)


@dataclass
class TopKConfig:
    k: int = 2

    def __post_init__(self) -> None:
        if self.k < 0:
            raise ValueError(f"k must be >= 0, got {self.k}")


class TopKPlanner(Planner):
    name = "topk"
    Config = TopKConfig

    def score_cuts(self, inputs: PlanningInputs) -> CutScores:
        L = inputs.backbone.num_layers
        k = min(self.config.k, L)
        return CutScores(_prefer(L - k, L), diagnostics={"preferred_cut": L - k})


@dataclass
class FullConfig:
    pass


class FullPlanner(Planner):
    name = "full"
    Config = FullConfig

    def score_cuts(self, inputs: PlanningInputs) -> CutScores:
        return CutScores(_prefer(0, inputs.backbone.num_layers), diagnostics={"preferred_cut": 0})


@dataclass
class RandomConfig:
    min_trainable_layers: int = 1


class RandomPlanner(Planner):
    name = "random"
    Config = RandomConfig

    def score_cuts(self, inputs: PlanningInputs) -> CutScores:
        L = inputs.backbone.num_layers
        rng = np.random.default_rng(inputs.seed)
        scores = rng.random(L + 1)
        scores = np.where(allowed_cuts_mask(L, self.config.min_trainable_layers), scores, np.nan)
        return CutScores(scores, diagnostics={"preferred_cut": int(np.nanargmax(scores))})


@dataclass
class AutoFreezeConfig:
    steps: int = 8
    batch_size: int = 16
    lr: float = 1e-4
    percentile: float = 50.0
    min_trainable_layers: int = 1

    def __post_init__(self) -> None:
        if self.steps < 2:
            raise ValueError(f"steps must be >= 2 (two halves to compare), got {self.steps}")
        if not 0.0 <= self.percentile <= 100.0:
            raise ValueError(f"percentile must be in [0, 100], got {self.percentile}")


def converged_prefix_cut(change_rates: np.ndarray, percentile: float) -> int:
    """Number of bottom blocks whose gradient-norm change rate is at or below the ``percentile`` of all rates."""
    threshold = np.percentile(change_rates, percentile)
    cut = 0
    while cut < len(change_rates) and change_rates[cut] <= threshold:
        cut += 1
    return cut


@dataclass
class GradNormConfig:
    steps: int = 4
    batch_size: int = 16
    mass: float = 0.5
    min_trainable_layers: int = 1

    def __post_init__(self) -> None:
        if not 0.0 < self.mass <= 1.0:
            raise ValueError(f"mass must be in (0, 1], got {self.mass}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")


def gradient_mass_cut(norms: np.ndarray, mass: float) -> int:
    """Smallest top range of blocks holding ``mass`` of the gradient norm -> its cut.

    Blocks are ranked by norm; the top-ranked blocks are taken until they hold
    ``mass`` of the total; since only a contiguous top can be trained, the cut is
    just below the lowest block taken.
    """
    order = np.argsort(-norms, kind="stable")
    cumulative = np.cumsum(norms[order]) / max(norms.sum(), 1e-30)
    taken = order[: int(np.searchsorted(cumulative, mass - 1e-12)) + 1]
    return int(taken.min())


class GradNormPlanner(Planner):
    name = "gradnorm"
    Config = GradNormConfig

    def score_cuts(self, inputs: PlanningInputs) -> CutScores:
        cfg: GradNormConfig = self.config
        backbone = inputs.backbone
        L = backbone.num_layers
        calib = sample(inputs.dataset, cfg.steps * cfg.batch_size, seed=inputs.seed)
        labels = torch.from_numpy(calib.encoded_labels(inputs.label_map))
        clf = SequenceClassifier(backbone, len(inputs.label_map))
        self._init_head_from_probe(clf, calib.texts, labels, inputs)

        params = [list(b.parameters()) for b in backbone.blocks]
        saved = [p.requires_grad for p in clf.parameters()]
        for p in clf.parameters():
            p.requires_grad_(True)
        sums = np.zeros(L)
        try:
            batches = length_sorted_batches(inputs.encoder.lengths(calib.texts), cfg.batch_size)
            for idx in batches[: cfg.steps]:
                ids, mask = inputs.encoder([calib.texts[i] for i in idx])
                clf.zero_grad(set_to_none=True)
                logits = clf(torch.from_numpy(ids), torch.from_numpy(mask))
                torch.nn.functional.cross_entropy(logits, labels[idx]).backward()
                for layer, ps in enumerate(params):
                    sq = sum(float(p.grad.pow(2).sum()) for p in ps if p.grad is not None)
                    count = sum(p.numel() for p in ps)
                    sums[layer] += np.sqrt(sq / count)
        finally:
            clf.zero_grad(set_to_none=True)
            for p, flag in zip(clf.parameters(), saved):
                p.requires_grad_(flag)
        norms = sums / min(cfg.steps, len(batches))
        cut = min(gradient_mass_cut(norms, cfg.mass), L - cfg.min_trainable_layers)
        return CutScores(
            _prefer(cut, L, cfg.min_trainable_layers),
            diagnostics={"grad_norm_per_param": norms.tolist(), "preferred_cut": cut},
        )

    @staticmethod
    def _init_head_from_probe(clf: SequenceClassifier, texts, labels: torch.Tensor, inputs: PlanningInputs) -> None:
        """A random head sends noise gradients down; start from a least-squares probe instead."""
        from edgetune.traces import collect_traces

        feats = collect_traces(inputs.backbone, inputs.encoder, texts, progress=False).pooled[-1]
        feats_t = torch.from_numpy(feats)
        with torch.no_grad():
            feats_t = inputs.backbone.norm(feats_t) if inputs.backbone.is_decoder else feats_t
            onehot = torch.nn.functional.one_hot(labels, clf.num_labels).float()
            x = torch.cat([feats_t, torch.ones(len(feats_t), 1)], dim=1)
            ridge = 1e-2 * torch.eye(x.shape[1])
            w = torch.linalg.solve(x.T @ x + ridge, x.T @ onehot)
            clf.head.weight.copy_(w[:-1].T)
            clf.head.bias.copy_(w[-1])


class AutoFreezePlanner(Planner):
    name = "autofreeze"
    Config = AutoFreezeConfig

    def score_cuts(self, inputs: PlanningInputs) -> CutScores:
        import copy

        cfg: AutoFreezeConfig = self.config
        L = inputs.backbone.num_layers
        calib = sample(inputs.dataset, cfg.steps * cfg.batch_size, seed=inputs.seed)
        labels = torch.from_numpy(calib.encoded_labels(inputs.label_map))
        # Train a copy: the planner must leave the caller's model as it found it.
        backbone = copy.deepcopy(inputs.backbone)
        clf = SequenceClassifier(backbone, len(inputs.label_map))
        GradNormPlanner._init_head_from_probe(clf, calib.texts, labels, inputs)
        for p in clf.parameters():
            p.requires_grad_(True)
        trained = [p for b in backbone.blocks for p in b.parameters()] + list(clf.head.parameters())
        optimizer = torch.optim.AdamW(trained, lr=cfg.lr)
        norms = np.zeros((cfg.steps, L))
        batches = length_sorted_batches(inputs.encoder.lengths(calib.texts), cfg.batch_size)
        order = np.random.default_rng(inputs.seed).permutation(len(batches))
        clf.train()
        for step in range(cfg.steps):
            idx = batches[order[step % len(batches)]]
            ids, mask = inputs.encoder([calib.texts[i] for i in idx])
            optimizer.zero_grad(set_to_none=True)
            logits = clf(torch.from_numpy(ids), torch.from_numpy(mask))
            torch.nn.functional.cross_entropy(logits, labels[idx]).backward()
            for layer, block in enumerate(backbone.blocks):
                norms[step, layer] = float(torch.sqrt(sum(p.grad.pow(2).sum() for p in block.parameters()
                                                          if p.grad is not None)))  # fmt: skip
            optimizer.step()
        half = cfg.steps // 2
        first, second = norms[:half].mean(axis=0), norms[half:].mean(axis=0)
        rates = np.abs(second - first) / np.maximum(first, 1e-12)
        cut = min(converged_prefix_cut(rates, cfg.percentile), L - cfg.min_trainable_layers)
        return CutScores(
            _prefer(cut, L, cfg.min_trainable_layers),
            diagnostics={"grad_norm_change_rate": rates.tolist(), "preferred_cut": cut},
        )
