"""Helpers shared by the exporter tests: tiny plans, checkpoints and packages (no downloads)."""

from __future__ import annotations

from pathlib import Path

import torch

from edgetune.api import load_model, plan
from edgetune.data import TextDataset
from edgetune.modeling import SequenceClassifier
from edgetune.planner.plan import Plan
from tests.conftest import LABELS, synthetic_rows

MAX_LENGTH = 32


def dataset(n: int, seed: int = 0) -> TextDataset:
    rows = synthetic_rows(n, seed=seed)
    return TextDataset([t for t, _ in rows], [label for _, label in rows], source=f"synthetic-{seed}")


def make_plan(model_dir: Path, k: int = 2) -> Plan:
    """A top-k plan (cut = L - k) made on ``model_dir``: instant, and the cut is inside the model."""
    return plan(str(model_dir), dataset(60), planner="topk", planner_params={"k": k}, max_length=MAX_LENGTH,
                progress=False)  # fmt: skip


def make_checkpoint(model_dir: Path, out: Path, seed: int = 0) -> Path:
    """An edgetune classifier checkpoint over ``model_dir``'s weights with a random (seeded) head."""
    backbone, encoder = load_model(model_dir, MAX_LENGTH)
    torch.manual_seed(seed)
    classifier = SequenceClassifier(backbone, len(LABELS), list(LABELS))
    classifier.save_pretrained(out, encoder)
    return out


def source_logits(checkpoint: Path, texts: list[str]) -> torch.Tensor:
    """The checkpoint's own prediction, whole model in torch eager."""
    from edgetune.tokenization import TextEncoder

    classifier = SequenceClassifier.from_pretrained(checkpoint).eval()
    encoder = TextEncoder.from_dir(checkpoint / "backbone")
    ids, mask = encoder(texts)
    with torch.inference_mode():
        return classifier(torch.from_numpy(ids), torch.from_numpy(mask))
