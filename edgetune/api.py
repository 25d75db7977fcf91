"""Python API mirroring the CLI: ``edgetune.plan(model, data, ...) -> Plan``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgetune.backbones import Backbone
from edgetune.data import TextDataset, load_dataset
from edgetune.planner import Budget, CostConfig, Plan, get_planner
from edgetune.tokenization import TextEncoder


def load_model(path: str | Path, max_length: int = 128) -> tuple[Backbone, TextEncoder]:
    """A backbone and its text encoder from a local directory (or hub id)."""
    path_str = str(path)
    if Path(path_str).exists() and not (Path(path_str) / "config.json").exists():
        raise FileNotFoundError(f"{path}: no config.json; pass a Hugging Face model directory")
    return Backbone.from_pretrained(path), TextEncoder.from_pretrained(path, max_length=max_length)


def plan(
    model: str | Path | tuple[Backbone, TextEncoder],
    data: str | Path | TextDataset,
    planner: str = "salf",
    budget: Budget | None = None,
    cost: CostConfig | None = None,
    planner_params: dict[str, Any] | None = None,
    tuner: str = "full",
    tuner_params: dict[str, Any] | None = None,
    text_column: str = "text",
    label_column: str = "label",
    max_length: int = 128,
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = True,
) -> Plan:
    """Decide where to fine-tune ``model`` on ``data``; see :mod:`edgetune.planner`."""
    backbone, encoder = load_model(model, max_length) if not isinstance(model, tuple) else model
    dataset = data if isinstance(data, TextDataset) else load_dataset(data, text_column, label_column)
    cost = cost or CostConfig(seq_len=encoder.max_length, batch_size=batch_size, num_examples=len(dataset))
    result = get_planner(planner, **(planner_params or {})).plan(
        backbone,
        encoder,
        dataset,
        budget=budget,
        cost=cost,
        tuner=tuner,
        tuner_params=tuner_params,
        seed=seed,
        progress=progress,
    )
    result.text_column, result.label_column = text_column, label_column
    return result
