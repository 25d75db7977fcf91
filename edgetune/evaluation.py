"""Accuracy and macro-F1 on held-out data (scikit-learn metrics).

Macro-F1 averages the F1 of every label present in the truth or the
predictions, so a rare topic counts as much as a frequent one; accuracy alone
hides a classifier that ignores a small class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgetune.data import LabelMap, TextDataset
from edgetune.features import length_sorted_batches
from edgetune.metrics import METRICS, classification_metrics  # noqa: F401 (re-exported)
from edgetune.modeling import SequenceClassifier
from edgetune.progress import progress_bar
from edgetune.tokenization import TextEncoder


@torch.inference_mode()
def predict_logits(
    classifier: SequenceClassifier,
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Logits (N, C) of the whole classifier, in input order (batched by length for speed)."""
    was_training = classifier.training
    classifier.eval()
    device = device or next(classifier.parameters()).device
    out = np.zeros((len(input_ids), classifier.num_labels), dtype=np.float32)
    try:
        with progress_bar("predicting", total=len(input_ids), enabled=progress) as advance:
            for idx in length_sorted_batches(attention_mask, batch_size):
                width = max(1, int(attention_mask[idx].sum(axis=1).max()))
                ids = torch.from_numpy(input_ids[idx, :width]).to(device)
                mask = torch.from_numpy(attention_mask[idx, :width]).to(device)
                out[idx] = classifier(ids, mask).float().cpu().numpy()
                advance(len(idx))
    finally:
        classifier.train(was_training)
    return out


def evaluate_classifier(
    classifier: SequenceClassifier,
    encoder: TextEncoder,
    dataset: TextDataset,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Metrics of ``classifier`` on ``dataset``; a label the classifier was not trained on is a DataError."""
    label_map = LabelMap(tuple(classifier.labels))
    y = dataset.encoded_labels(label_map)
    ids, mask = encoder(dataset.texts)
    logits = predict_logits(classifier, ids, mask, batch_size, device, progress)
    return classification_metrics(y, logits.argmax(axis=1), classifier.labels)


def load_trained(directory: str | Path) -> tuple[SequenceClassifier, TextEncoder]:
    """A classifier written by the trainer, and the text encoder saved with it."""
    directory = Path(directory)
    if not directory.exists():
        raise FileNotFoundError(f"{directory}: no such model directory")
    classifier = SequenceClassifier.from_pretrained(directory)
    if not (directory / "backbone" / "encoder.json").exists():
        raise FileNotFoundError(f"{directory}: no tokenizer saved with the model (backbone/encoder.json)")
    return classifier, TextEncoder.from_dir(directory / "backbone")
