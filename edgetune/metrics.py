"""Classification metrics in numpy (a device computes them without scikit-learn).

The definitions are scikit-learn's (``accuracy_score``; ``f1_score`` with
``average=None`` / ``"macro"`` over the labels present in truth or predictions,
``zero_division=0``); a test checks them against it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edgetune.training_config import METRICS  # noqa: F401 (re-exported: the metrics computed here)


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """``accuracy``, ``macro_f1``, ``num_examples`` and the F1 of each label seen in truth or predictions."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    present = sorted(set(y_true.tolist()) | set(y_pred.tolist()))
    per_label = {}
    for c in present:
        tp = int(((y_true == c) & (y_pred == c)).sum())
        wrong = int(((y_true != c) & (y_pred == c)).sum()) + int(((y_true == c) & (y_pred != c)).sum())
        per_label[c] = 2 * tp / (2 * tp + wrong) if tp + wrong else 0.0
    return {
        "accuracy": float((y_true == y_pred).mean()) if len(y_true) else 0.0,
        "macro_f1": float(np.mean(list(per_label.values()))) if per_label else 0.0,
        "num_examples": int(len(y_true)),
        "per_label_f1": {labels[c]: float(f) for c, f in per_label.items()},
    }
