"""``full``: train every weight of the blocks above the cut (plus the final norm and the head)."""

from __future__ import annotations

from edgetune.modeling import TopModel
from edgetune.tuners.base import Tuner
from edgetune.tuners.full.config import FullConfig


class FullTuner(Tuner):
    name = "full"
    Config = FullConfig

    def _prepare(self, top: TopModel) -> None:
        top.blocks.requires_grad_(True)
