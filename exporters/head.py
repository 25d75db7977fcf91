"""A head for a plain pretrained model: a logistic probe on the pooled top features.

A Hugging Face model without a task head would ship a package that predicts
nothing until the device has trained it. When labelled data is given, the
exporter fits a multinomial logistic regression (L2, lbfgs) on the features
the head reads (blocks cut+1..L, final norm, pooling, all at their pretrained
weights) and writes its weights into the head. Logistic rather than ridge:
the device fine-tunes the head with cross-entropy, and a logistic probe is
the cross-entropy optimum of the frozen features, so training starts from it.

Features are standardized for the fit (the solver converges on any scale);
the scaling is folded back into the weights, so the head reads raw features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from device_sim.runtime import map_batches
from edgetune.data import DataError, LabelMap, TextDataset
from edgetune.modeling import SequenceClassifier
from edgetune.tokenization import TextEncoder


@dataclass
class Probe:
    """Head weights ``(C, d)`` and bias ``(C,)`` with how they were fitted."""

    weight: np.ndarray
    bias: np.ndarray
    info: dict[str, Any]


def pooled_features(
    classifier: SequenceClassifier,
    encoder: TextEncoder,
    texts: list[str],
    batch_size: int = 32,
    progress: bool = False,
) -> np.ndarray:
    """What the head reads for each text: the top's pooled, normed output (torch, server side)."""
    top = classifier.top(0)
    classifier.eval()

    def fn(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
            hidden = classifier.backbone.embed(ids_t, mask_t)
            return top.features(hidden, mask_t).float().numpy()

    return map_batches(encoder, texts, fn, batch_size, progress, "head probe features")


def fit_probe(features: np.ndarray, labels: np.ndarray, num_labels: int, c: float = 1.0, seed: int = 0) -> Probe:
    """Multinomial logistic probe; every label must have examples (a label never seen cannot be predicted)."""
    from sklearn.linear_model import LogisticRegression

    present = np.unique(labels)
    if len(present) < num_labels:
        missing = sorted(set(range(num_labels)) - set(present.tolist()))
        raise DataError(f"the head probe needs examples of every label; none for label indices {missing}")
    mean = features.mean(axis=0)
    scale = features.std(axis=0)
    scale[scale < 1e-6] = 1.0
    z = (features - mean) / scale
    probe = LogisticRegression(C=c, max_iter=5000, random_state=seed)
    probe.fit(z, labels)
    coef, intercept = probe.coef_, probe.intercept_
    if coef.shape[0] == 1:  # binary: sklearn returns one row for the positive class
        coef = np.vstack([-coef[0] / 2, coef[0] / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    weight = coef / scale[None, :]
    bias = intercept - weight @ mean
    train_acc = float((probe.predict(z) == labels).mean())
    info = {
        "method": "logistic",
        "c": c,
        "num_examples": int(len(labels)),
        "train_accuracy": train_acc,
        "standardized": True,
    }
    return Probe(weight.astype(np.float32), bias.astype(np.float32), info)


def init_head_from_probe(
    classifier: SequenceClassifier,
    encoder: TextEncoder,
    data: TextDataset,
    c: float = 1.0,
    seed: int = 0,
    batch_size: int = 32,
    progress: bool = False,
) -> dict[str, Any]:
    """Fit a probe on ``data`` and write it into ``classifier.head``; returns the probe's info."""
    label_map = LabelMap(tuple(classifier.labels))
    labels = data.encoded_labels(label_map)
    seen = set(data.labels)
    missing = [label for label in label_map.labels if label not in seen]
    if missing:
        raise DataError(
            f"{data.source}: no example of label(s) {missing}; the head probe needs every label of the plan "
            f"({', '.join(label_map.labels)})"
        )
    features = pooled_features(classifier, encoder, data.texts, batch_size, progress)
    probe = fit_probe(features, labels, len(label_map), c, seed)
    with torch.no_grad():
        classifier.head.weight.copy_(torch.from_numpy(probe.weight))
        classifier.head.bias.copy_(torch.from_numpy(probe.bias))
    return probe.info


def zero_head(classifier: SequenceClassifier) -> None:
    """Every text gets the same scores until the head is trained (explicit, rather than random)."""
    with torch.no_grad():
        classifier.head.weight.zero_()
        classifier.head.bias.zero_()
