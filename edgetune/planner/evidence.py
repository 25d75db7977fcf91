"""What the traces say about each latent space, example by example, and how sure that is.

SALF's cheapest-cut policy needs two numbers per task: how much error the head alone leaves (the frozen top
latent h_L read by a linear probe) and how much of it a lower latent space avoids (task information the frozen
top discards, which training the top blocks can win back). Both are read from held-out predictions of a linear
probe on each latent space. Three choices keep them stable from one calibration sample to the next:

- **Closed-form leave-one-out ridge probes.** A ridge classifier (one-hot targets, unpenalized intercept) has
  exact leave-one-out predictions from one SVD of the features: every example is predicted by a probe that
  never saw it, with no fold split to draw (one source of noise gone) and in milliseconds, so the whole
  sample and many resamples are affordable. The ridge penalty is chosen per layer by the leave-one-out
  squared error over a fixed grid.
- **Squared error, not 0/1 error.** Each example's leave-one-out squared error ||y - p||^2 (the Brier score of
  the probe's scores) varies smoothly with the representation, so differences between layers are measured
  with a fraction of the variance of error-rate differences (a 0/1 difference of two 256-example error rates
  has a standard error of several points).
- **Paired, per example.** The recoverable share compares layers on the same examples, and resamples of the
  examples (the bootstrap) give the spread of every derived number, so the plan can say how sure it is.

Everything here is numpy on pooled traces; no model is run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RIDGE_PENALTIES = np.logspace(-2, 4, 13)
"""The ridge penalties tried per layer (standardized features), chosen by leave-one-out squared error."""

_INTERCEPT_SCALE = 1e3  # a constant column this large is, in effect, an unpenalized intercept


@dataclass
class LeaveOneOut:
    """Leave-one-out predictions of a ridge probe: ``wrong[i]`` and ``sq_error[i]`` for example i."""

    wrong: np.ndarray  # (n,) bool: the probe fitted without example i misclassifies it
    sq_error: np.ndarray  # (n,) float: ||onehot(y_i) - scores_i||^2 of that probe
    penalty: float


def ridge_leave_one_out(features: np.ndarray, labels: np.ndarray, num_labels: int) -> LeaveOneOut:
    """Exact leave-one-out predictions of a one-vs-rest ridge classifier on standardized ``features``.

    With X = U S V^T, the hat matrix at penalty lam is H = U diag(s^2 / (s^2 + lam)) U^T and the leave-one-out
    residual of example i is (y_i - (HY)_i) / (1 - H_ii): one SVD serves every penalty.
    """
    x = np.asarray(features, dtype=np.float64)
    x = (x - x.mean(axis=0)) / np.maximum(x.std(axis=0), 1e-6)
    x = np.hstack([x, np.full((len(x), 1), _INTERCEPT_SCALE)])
    y = np.eye(num_labels)[np.asarray(labels)]
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    uty, s2 = u.T @ y, s**2
    best: tuple[float, float, np.ndarray] | None = None
    for lam in RIDGE_PENALTIES:
        shrink = s2 / (s2 + lam)
        fitted = u @ (shrink[:, None] * uty)
        leverage = np.minimum((u**2) @ shrink, 1.0 - 1e-9)
        residual = (y - fitted) / (1.0 - leverage)[:, None]
        total = float((residual**2).sum())
        if best is None or total < best[0]:
            best = (total, float(lam), residual)
    assert best is not None
    _, lam, residual = best
    predicted = (y - residual).argmax(axis=1)
    return LeaveOneOut(predicted != np.asarray(labels), (residual**2).sum(axis=1), lam)


@dataclass
class LayerEvidence:
    """Leave-one-out results of a probe on every latent space h_0..h_L (rows) for every example (columns)."""

    wrong: np.ndarray  # (L + 1, n) bool
    sq_error: np.ndarray  # (L + 1, n) float
    penalties: list[float]

    @property
    def num_examples(self) -> int:
        return self.wrong.shape[1]

    def error_points(self) -> np.ndarray:
        """Leave-one-out error rate of each layer's probe, in accuracy points."""
        return 100.0 * self.wrong.mean(axis=1)

    def head_points(self, idx: np.ndarray | None = None) -> float:
        """The head-only cut's squared error (x100) on examples ``idx`` (all by default)."""
        sq = self.sq_error[-1] if idx is None else self.sq_error[-1, idx]
        return float(100.0 * sq.mean())

    def recoverable_points(self, idx: np.ndarray | None = None, margin: float = 0.0) -> float:
        """How much lower (x100) the best lower layer's squared error is than the top's, on the same examples,
        less ``margin`` standard errors of that paired difference (a lower confidence bound: a gap the sample
        cannot tell from noise counts as none).

        Zero when no lower latent space does better: the frozen top then discards nothing a probe can see.
        """
        sq = self.sq_error if idx is None else self.sq_error[:, idx]
        if sq.shape[0] < 2:
            return 0.0
        diffs = sq[-1][None, :] - sq[:-1]
        bound = diffs.mean(axis=1) - margin * diffs.std(axis=1, ddof=1) / np.sqrt(max(1, diffs.shape[1]))
        return float(100.0 * max(0.0, bound.max()))


def layer_evidence(pooled: np.ndarray, labels: np.ndarray, num_labels: int) -> LayerEvidence:
    """:class:`LayerEvidence` of pooled traces ``(L + 1, n, d)``."""
    fits = [ridge_leave_one_out(layer, labels, num_labels) for layer in pooled]
    return LayerEvidence(
        np.stack([f.wrong for f in fits]), np.stack([f.sq_error for f in fits]), [f.penalty for f in fits]
    )


def bootstrap_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """``(resamples, n)`` example indices drawn with replacement: the bootstrap of a sample of ``n``."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))
