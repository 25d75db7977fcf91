"""Config of the ``full`` tuner."""

from __future__ import annotations

from dataclasses import dataclass

from edgetune.tuners.base import TunerConfig


@dataclass
class FullConfig(TunerConfig):
    """Every weight of the chosen blocks, the final norm and the head is trained; nothing to set."""
