"""FaLA: keep a user's personalization across a backbone replacement.

FaLA (Findings of EMNLP 2023); only the abstract is public. Our reading (docs/methods.md,
"FaLA"):

1. **Correlation clustering.** The user's documents are embedded by the *new*
   backbone and clustered by correlation distance, 1 - Pearson r between two
   embeddings (agglomerative clustering, average linkage, on the precomputed
   distance matrix; scikit-learn). One medoid per cluster (the member with the
   smallest total distance to the others) is a curated example, k << n.
   By default k is split over the labels in proportion to their counts (at least
   one example per label when k allows), so a rare personal label is not lost.
   k can be fixed, a fraction of n, or chosen by the silhouette score.
2. **Personal matrix.** A closed-form ridge regression W: e_new -> e_old (with
   intercept; d_new may differ from d_old) on texts embedded by both backbones.
   The map needs no labels, so by default (``map_on="all"``, our extension) it is
   fitted on *all* the user's texts, which are on the device unlabelled, during
   the swap, while the old backbone is still there; the abstract's reading fits
   it on the k curated examples alone (``map_on="curated"``). The user's old
   personal head applied to W e_new predicts at once, before any training.
3. **Tuning** (optional, done by the device code): W and the head, plus the new
   backbone's top layer if its plan says so, are fine-tuned on the curated
   (labelled) examples with cached trunk features; optionally (``distill`` > 0,
   our extension) with a second loss that keeps the tuned head's predictions on
   all the user's unlabelled texts near the old personal model's.

Which features the clustering reads (``cluster_on``): the new backbone's (the
abstract), the old personal model's, or both (each row centred and normed per
backbone, then side by side, so the correlation is the mean of the two).

**Residual form** (our extension, ``SwapConfig(form="residual")``): with k of about 10 examples, a ridge map
from a 768-wide space to a 384-wide one is barely determined, and a user whose personal head differs little from
the old global one loses what the new global head already knew (measured on the MiniLM -> MPNet swap's
validation users). The residual head keeps the new package's global head and adds only the user's personal
*difference* carried through W: ``g_new(e) + h_personal(W e + b) - g_old(W e + b)`` (``g_old`` frozen); W,
``h_personal`` and ``g_new`` are tuned on the same k curated examples. Every piece is linear, so a later swap
folds the whole head into one linear layer (:func:`as_linear`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


def correlation_distance(embeddings: np.ndarray) -> np.ndarray:
    """(n, d) -> (n, n) matrix of 1 - Pearson r; constant rows get distance 1 to everything else."""
    x = np.asarray(embeddings, dtype=np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    safe = np.where(norms > 1e-12, norms, 1.0)
    z = x / safe
    r = np.clip(z @ z.T, -1.0, 1.0)
    const = norms[:, 0] <= 1e-12
    r[const, :] = 0.0
    r[:, const] = 0.0
    d = 1.0 - r
    np.fill_diagonal(d, 0.0)
    return d


def joint_features(*blocks: np.ndarray) -> np.ndarray:
    """Feature blocks of the same rows side by side, each row centred and normed per block: the Pearson r of two
    joined rows is the mean of their per-block r (each backbone weighs the same, whatever its width)."""
    parts = []
    for block in blocks:
        x = np.asarray(block, dtype=np.float64)
        x = x - x.mean(axis=1, keepdims=True)
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        parts.append(x / np.where(norms > 1e-12, norms, 1.0))
    if len({len(p) for p in parts}) != 1:
        raise ValueError("feature blocks must describe the same rows")
    return np.concatenate(parts, axis=1)


def medoids(distance: np.ndarray, assignment: np.ndarray) -> list[int]:
    """Index of each cluster's medoid, clusters in order of their smallest member index."""
    out = []
    for c in dict.fromkeys(assignment.tolist()):
        members = np.flatnonzero(assignment == c)
        within = distance[np.ix_(members, members)].sum(axis=1)
        out.append(int(members[int(np.argmin(within))]))
    return out


def cluster_medoids(embeddings: np.ndarray, k: int) -> list[int]:
    """k medoids of correlation-distance clusters (all points if k >= n)."""
    from sklearn.cluster import AgglomerativeClustering

    n = len(embeddings)
    if k <= 0:
        raise ValueError(f"k must be >= 1, got {k}")
    if k >= n:
        return list(range(n))
    d = correlation_distance(embeddings)
    if k == 1:
        return [int(np.argmin(d.sum(axis=1)))]
    assignment = AgglomerativeClustering(n_clusters=k, metric="precomputed", linkage="average").fit_predict(d)
    return medoids(d, assignment)


def choose_k_by_silhouette(embeddings: np.ndarray, candidates: list[int]) -> int:
    """The k with the best silhouette score (correlation distance) among ``candidates``."""
    from sklearn.cluster import AgglomerativeClustering
    from sklearn.metrics import silhouette_score

    d = correlation_distance(embeddings)
    n = len(embeddings)
    best_k, best = None, -np.inf
    for k in sorted(set(candidates)):
        if not 2 <= k < n:
            continue
        labels = AgglomerativeClustering(n_clusters=k, metric="precomputed", linkage="average").fit_predict(d)
        if len(set(labels)) < 2:
            continue
        score = silhouette_score(d, labels, metric="precomputed")
        if score > best:
            best_k, best = k, score
    if best_k is None:
        return max(1, min(n, max(candidates)))
    return best_k


def allocate_per_label(labels: np.ndarray, k: int) -> dict[int, int]:
    """Split k examples over labels in proportion to their counts, >= 1 each while k allows."""
    values, counts = np.unique(labels, return_counts=True)
    k = min(k, len(labels))
    alloc = np.zeros(len(values), dtype=int)
    alloc[np.argsort(-counts, kind="stable")[:k]] = 1
    while alloc.sum() < k:
        deficit = counts / counts.sum() * k - alloc  # distance below each label's proportional share
        deficit[alloc >= counts] = -np.inf
        alloc[int(np.argmax(deficit))] += 1
    return {int(v): int(a) for v, a in zip(values, alloc)}


@dataclass
class SelectionConfig:
    k: int | None = None  # fixed number of curated examples
    fraction: float = 0.1  # used when k is None: k = ceil(fraction * n)
    per_label: bool = True
    silhouette: bool = False  # choose k by silhouette among 1..2k (global clustering only)
    min_k: int = 1

    def resolve_k(self, n: int) -> int:
        k = self.k if self.k is not None else math.ceil(self.fraction * n)
        return max(self.min_k, min(int(k), n))


def select_examples(
    embeddings: np.ndarray, labels: np.ndarray | None, config: SelectionConfig | None = None
) -> list[int]:
    """Indices of the curated examples: correlation-cluster medoids (per label by default)."""
    cfg = config or SelectionConfig()
    n = len(embeddings)
    if n == 0:
        raise ValueError("no examples to select from")
    k = cfg.resolve_k(n)
    if cfg.silhouette and not cfg.per_label:
        k = choose_k_by_silhouette(embeddings, list(range(2, min(n - 1, 2 * k) + 1)))
    if labels is None or not cfg.per_label:
        return sorted(cluster_medoids(embeddings, k))
    picked: list[int] = []
    for label, k_label in allocate_per_label(np.asarray(labels), k).items():
        if k_label == 0:
            continue
        members = np.flatnonzero(labels == label)
        picked += [int(members[i]) for i in cluster_medoids(embeddings[members], k_label)]
    return sorted(picked)


def random_examples(
    n: int, k: int, labels: np.ndarray | None = None, seed: int = 0, per_label: bool = True
) -> list[int]:
    """The random-selection baseline with the same k (and the same per-label allocation)."""
    rng = np.random.default_rng(seed)
    k = max(1, min(k, n))
    if labels is None or not per_label:
        return sorted(rng.choice(n, size=k, replace=False).tolist())
    picked: list[int] = []
    for label, k_label in allocate_per_label(np.asarray(labels), k).items():
        members = np.flatnonzero(labels == label)
        picked += rng.choice(members, size=k_label, replace=False).tolist()
    return sorted(int(i) for i in picked)


class PersonalMatrix(nn.Module):
    """W e_new + b: the map from the new backbone's feature space into the old one's."""

    def __init__(self, d_new: int, d_old: int) -> None:
        super().__init__()
        self.linear = nn.Linear(d_new, d_old)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features)

    @classmethod
    def fit(cls, new_features: np.ndarray, old_features: np.ndarray, alpha: float = 1.0) -> PersonalMatrix:
        """Closed-form ridge regression new -> old (scikit-learn ``Ridge``, intercept unpenalized)."""
        from sklearn.linear_model import Ridge

        if len(new_features) != len(old_features):
            raise ValueError("new and old features must describe the same examples")
        if len(new_features) == 0:
            raise ValueError("no curated examples to fit the personal matrix on")
        ridge = Ridge(alpha=alpha, fit_intercept=True, solver="auto")
        ridge.fit(np.asarray(new_features, dtype=np.float64), np.asarray(old_features, dtype=np.float64))
        matrix = cls(new_features.shape[1], old_features.shape[1])
        with torch.no_grad():
            matrix.linear.weight.copy_(torch.as_tensor(np.atleast_2d(ridge.coef_), dtype=torch.float32))
            matrix.linear.bias.copy_(torch.as_tensor(np.atleast_1d(ridge.intercept_), dtype=torch.float32))
        return matrix


class FalaHead(nn.Module):
    """The personal head after a swap, ``head(W e_new + b)``: the old personal head reading the new features.

    The **residual** form (our extension, see the module docstring) adds the new package's global head and
    carries only the user's *difference* from the old global head through W:
    ``base(e_new) + head(W e_new + b) - reference(W e_new + b)``, where ``base`` is the new package's global
    head (trained with the rest) and ``reference`` the old package's global head (frozen). A user who differs
    little from the old global model then starts from the new global model rather than from a W fitted on a
    handful of examples."""

    def __init__(
        self, matrix: PersonalMatrix, head: nn.Linear, base: nn.Linear | None = None, reference: nn.Linear | None = None
    ) -> None:
        super().__init__()
        if (base is None) != (reference is None):
            raise ValueError("the residual form needs both the new global head (base) and the old one (reference)")
        self.matrix = matrix
        self.head = head
        self.base = base
        self.reference = reference
        if reference is not None:
            reference.requires_grad_(False)

    @property
    def residual(self) -> bool:
        return self.base is not None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = self.matrix(features)
        if self.base is None or self.reference is None:
            return self.head(z)
        return self.base(features) + self.head(z) - self.reference(z)

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor]) -> FalaHead:
        """Rebuild from :meth:`state_dict` tensors (``matrix.linear.*``, ``head.*``, and ``base.*`` +
        ``reference.*`` in the residual form); shapes give the sizes."""
        d_old, d_new = tensors["matrix.linear.weight"].shape
        num_labels = tensors["head.weight"].shape[0]
        base = reference = None
        if "base.weight" in tensors or "reference.weight" in tensors:
            base, reference = nn.Linear(d_new, num_labels), nn.Linear(d_old, num_labels)
        module = cls(PersonalMatrix(d_new, d_old), nn.Linear(d_old, num_labels), base, reference)
        module.load_state_dict(tensors)
        return module


def as_linear(module: nn.Module, in_features: int) -> nn.Linear:
    """An affine module (a linear head, a :class:`FalaHead` of either form) as one ``nn.Linear``, exactly: its
    bias is ``f(0)`` and its weight's columns are ``f(e_i) - f(0)``."""
    with torch.no_grad():
        probe = torch.cat([torch.zeros(1, in_features), torch.eye(in_features)])
        out = module(probe)
        linear = nn.Linear(in_features, out.shape[1])
        linear.bias.copy_(out[0])
        linear.weight.copy_((out[1:] - out[0]).T)
    return linear


def _fresh(linear: nn.Linear) -> nn.Linear:
    copy = nn.Linear(linear.in_features, linear.out_features)
    copy.load_state_dict(linear.state_dict())
    return copy


def compose(
    matrix: PersonalMatrix,
    old_head: nn.Module,
    base: nn.Linear | None = None,
    reference: nn.Module | None = None,
) -> FalaHead:
    """``old_head`` after ``matrix``; when ``old_head`` is itself a :class:`FalaHead` (a second swap), the two
    affine maps fold into one, so a personal state always holds one matrix and one head. With ``base`` (the new
    package's global head) and ``reference`` (the old package's global head): the residual form (copies; the
    arguments are not modified)."""
    head = old_head
    if isinstance(old_head, FalaHead) and (old_head.residual or base is not None):  # affine: one linear head
        head = as_linear(old_head, old_head.matrix.linear.in_features)
    elif isinstance(old_head, FalaHead):
        inner = old_head.matrix.linear
        folded = PersonalMatrix(matrix.linear.in_features, inner.out_features)
        with torch.no_grad():
            folded.linear.weight.copy_(inner.weight @ matrix.linear.weight)
            folded.linear.bias.copy_(inner.weight @ matrix.linear.bias + inner.bias)
        matrix, head = folded, old_head.head
    if not isinstance(head, nn.Linear):
        raise TypeError(f"the old personal head must be a linear layer, got {type(head).__name__}")
    if base is None:
        return FalaHead(matrix, _fresh(head))
    if reference is None:
        raise ValueError("the residual form needs the old package's global head as reference")
    ref = reference if isinstance(reference, nn.Linear) else as_linear(reference, matrix.linear.out_features)
    return FalaHead(matrix, _fresh(head), _fresh(base), _fresh(ref))
