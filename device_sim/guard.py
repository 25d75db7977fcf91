"""The do-no-harm guard: keep a personal top only when it beats the global one on data it never saw.

After the device's inner selection has picked a personalized top (on the
user's training data and an inner validation split), the guard scores that top
and the package's global top on the job's own held-out *guard split* of the
user's data, which neither training nor selection touched, and keeps the
personal state only when the personal top is better by a margin that accounts
for the split's size.

The rule is a one-sided **exact McNemar test** (a sign test on the discordant
pairs). Both tops answer the same examples, so the comparison is paired: of the
guard examples, ``b`` are right only under the personal top ("wins") and ``c``
only under the global one ("losses"); the examples both get right or both get
wrong say nothing about which is better. Under the null hypothesis "the
personal top is no better" a discordant example is a win with probability at
most 1/2, so the p-value is ``P(X >= b)`` for ``X ~ Binomial(b + c, 1/2)``; the
personal top is kept when ``p < alpha`` (default 0.05).

Why this test and not a confidence bound from a paired bootstrap: the guard
split is small (tens of examples on a phone), where the bootstrap's
percentiles are coarse and its coverage is poor, and it would draw random
numbers; the exact binomial is exact at any size, deterministic and costs
nothing. The margin it demands grows with the split's noise, not with its
size alone: with no losses the personal top needs ``ceil(log2(1/alpha))`` wins
(5 at alpha 0.05), and every loss raises the bar (b = 7 wins against c = 1 loss
passes, 7 against 2 does not). A split without discordant pairs keeps the
global model.

:func:`prior_shift` is the cheapest personalization the selection considers:
the global head with its bias moved to the user's label prior (see its docstring).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

TEST = "exact one-sided McNemar (binomial sign test on the discordant pairs)"


@dataclass(frozen=True)
class GuardDecision:
    """The guard's verdict on one personal top against the global one, on ``num_examples`` held-out examples."""

    keep_personal: bool
    num_examples: int
    personal_accuracy: float
    global_accuracy: float
    wins: int  # right only under the personal top
    losses: int  # right only under the global top
    p_value: float
    alpha: float
    min_wins_without_losses: int  # the smallest win count that passes when there is no loss
    test: str = TEST

    @property
    def kept(self) -> str:
        return "personal" if self.keep_personal else "global"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "kept": self.kept}


def sign_test_p_value(wins: int, losses: int) -> float:
    """One-sided exact p-value of ``wins`` among ``wins + losses`` discordant pairs: ``P(Binomial(n, 1/2) >= wins)``.

    1.0 without discordant pairs (no evidence at all)."""
    if wins < 0 or losses < 0:
        raise ValueError("wins and losses must be >= 0")
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(wins, n + 1))
    return float(min(1.0, tail / 2.0**n))


def min_wins(alpha: float) -> int:
    """The fewest wins (with no loss) that pass at ``alpha``: ``ceil(log2(1 / alpha))``."""
    k = 1
    while sign_test_p_value(k, 0) >= alpha:
        k += 1
    return k


def decide(personal_correct: np.ndarray, global_correct: np.ndarray, alpha: float = 0.05) -> GuardDecision:
    """Keep the personal top iff the one-sided exact McNemar test rejects "no better" at ``alpha``.

    ``personal_correct`` and ``global_correct``: per guard example, whether each top answered it right
    (the same examples, in the same order)."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    p = np.asarray(personal_correct, dtype=bool)
    g = np.asarray(global_correct, dtype=bool)
    if p.shape != g.shape or p.ndim != 1:
        raise ValueError(f"need two equal-length 1-d arrays, got {p.shape} and {g.shape}")
    wins, losses = int((p & ~g).sum()), int((~p & g).sum())
    p_value = sign_test_p_value(wins, losses)
    n = len(p)
    return GuardDecision(
        keep_personal=bool(n > 0 and wins > losses and p_value < alpha),
        num_examples=n,
        personal_accuracy=float(p.mean()) if n else float("nan"),
        global_accuracy=float(g.mean()) if n else float("nan"),
        wins=wins,
        losses=losses,
        p_value=p_value,
        alpha=float(alpha),
        min_wins_without_losses=min_wins(alpha),
    )


def prior_shift(logits: np.ndarray, labels: np.ndarray, l2: float = 1e-2, steps: int = 200) -> np.ndarray:
    """The bias shift ``delta`` (one value per label) that best fits the global model to the user's label prior.

    Maximum likelihood of the user's training labels under ``softmax(logits + delta)``, with a small L2 penalty
    (``l2 * |delta|^2``, so a label the user never uses is pushed down but not to minus infinity): a convex
    problem in C numbers, solved by Newton steps on the cached logits. This is prior correction learned from the
    data (the label-shift adjustment ``log pi_user - log pi_train`` of Saerens et al. 2002 when the global
    model is calibrated), without knowing the server's label prior: the global head's weights stay, only its
    bias moves. It costs one forward pass of the top over the training examples and no backward pass through
    any block.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    n, c = z.shape
    onehot = np.zeros((n, c))
    onehot[np.arange(n), y] = 1.0
    delta = np.zeros(c)
    for _ in range(steps):
        s = z + delta
        s -= s.max(axis=1, keepdims=True)
        p = np.exp(s)
        p /= p.sum(axis=1, keepdims=True)
        grad = (p - onehot).mean(axis=0) + 2 * l2 * delta
        hess = (np.diag(p.sum(axis=0)) - p.T @ p) / n + 2 * l2 * np.eye(c)
        step = np.clip(np.linalg.solve(hess, grad), -2.0, 2.0)  # a damped Newton step: stays stable on confident logits
        delta -= step
        if np.abs(step).max() < 1e-8:
            break
    return delta - delta.mean()  # softmax is shift-invariant: report the centred shift
