"""The validation split of a personalization job, in numpy (every training backend uses this one).

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
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    if counts.min() < 2 or n_val < len(classes):
        val = rng.permutation(n)[:n_val]
    else:
        exact = n_val * counts / n
        share = np.floor(exact).astype(int)
        remainder = exact - share
        order = np.lexsort((rng.random(len(classes)), -remainder))  # largest remainder first, random ties
        share[order[: n_val - share.sum()]] += 1
        share = np.minimum(share, counts - 1)  # every label keeps a training example
        val = np.concatenate([rng.permutation(idx[labels == c])[:k] for c, k in zip(classes, share)])
    mask = np.zeros(n, bool)
    mask[val] = True
    return idx[~mask], idx[mask]
