"""Config of the ``fala`` personal-state kind: the head's form and the settings its fit recorded."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgetune.tuners.base import TunerConfig

FORMS = ("plain", "residual")


@dataclass
class FalaConfig(TunerConfig):
    """``form``: ``plain`` (``head(W e + b)``) or ``residual`` (``g_new(e) + head(W e + b) - g_old(W e + b)``).
    ``settings``: how the swap that wrote the state selected examples and fitted W (provenance only: loading and
    merging need nothing but the tensors)."""

    form: str = "plain"
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.form not in FORMS:
            raise ValueError(f"FaLA form must be one of {', '.join(FORMS)}, got {self.form!r}")

    def to_dict(self) -> dict[str, Any]:
        """Flat, as a swap writes a state's ``tuner.params``: the form beside the fit's settings."""
        return {**self.settings, "form": self.form}
