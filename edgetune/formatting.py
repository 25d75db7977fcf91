"""Short human-readable forms of model names and quantities, for tables, plots and logs."""

from __future__ import annotations

from pathlib import Path


def display_name(model_id: str) -> str:
    """A short name for a model path: its directory name (the parent's, for a generic ``model`` folder)."""
    p = Path(model_id)
    return f"{p.parent.name}/{p.name}" if p.name in ("model", "backbone") else p.name


def human(n: float, unit: str = "") -> str:
    """``n`` with a k/M/G/T suffix and two decimals (1234567 -> ``1.23M``)."""
    for factor, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= factor:
            return f"{n / factor:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"
