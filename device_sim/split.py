"""The validation and guard splits of a personalization job, in numpy (every training backend uses these).

Stratified when every label present has at least two examples: each label gives
the held-out set its share of ``round(fraction * n)`` (largest remainders
first, ties broken by the seeded generator), drawn at random from its
examples; otherwise a plain random draw. Fewer than ``MIN_VALIDATION`` held-out
(or remaining) examples: nothing is held out.
"""

from __future__ import annotations

import numpy as np

MIN_VALIDATION = 4  # fewer held-out examples than this: train on everything, keep the last epoch


def validation_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train indices, validation indices)``, both sorted; see the module docstring."""
    labels = np.asarray(labels)
    n = len(labels)
    idx = np.arange(n)
    n_val = int(round(fraction * n))
    if fraction <= 0 or n_val < MIN_VALIDATION or n - n_val < MIN_VALIDATION:
        return idx, idx[:0]
    val = stratified_draw(labels, n_val, np.random.default_rng(seed), keep_one=True)
    mask = np.zeros(n, bool)
    mask[val] = True
    return idx[~mask], idx[mask]


def stratified_draw(labels: np.ndarray, n_held: int, rng: np.random.Generator, keep_one: bool) -> np.ndarray:
    """``n_held`` indices: each label its largest-remainder share when every label present has two examples
    (and there are at least as many to draw as labels), else a plain random draw. ``keep_one``: every label
    keeps one example out of the draw."""
    n = len(labels)
    classes, counts = np.unique(labels, return_counts=True)
    if counts.min() < 2 or n_held < len(classes):
        return rng.permutation(n)[:n_held]
    exact = n_held * counts / n
    share = np.floor(exact).astype(int)
    remainder = exact - share
    order = np.lexsort((rng.random(len(classes)), -remainder))  # largest remainder first, random ties
    share[order[: n_held - share.sum()]] += 1
    if keep_one:
        share = np.minimum(share, counts - 1)
    idx = np.arange(n)
    return np.concatenate([rng.permutation(idx[labels == c])[:k] for c, k in zip(classes, share)])


def guard_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The rest and the do-no-harm guard's held-out indices, both sorted: a stratified ``fraction`` (at least
    one example when ``fraction > 0``), drawn with its own seed so it never coincides with the validation
    split."""
    labels = np.asarray(labels)
    idx = np.arange(len(labels))
    if fraction <= 0 or len(labels) < 2:
        return idx, idx[:0]
    n_guard = max(1, int(round(fraction * len(labels))))
    if n_guard >= len(labels):
        return idx, idx[:0]
    held = stratified_draw(labels, n_guard, np.random.default_rng(seed + 7919), keep_one=False)
    mask = np.zeros(len(labels), bool)
    mask[held] = True
    return idx[~mask], idx[mask]
