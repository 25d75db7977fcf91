"""Config of the ``lora`` tuner."""

from __future__ import annotations

from dataclasses import dataclass

from edgetune.families import FAMILIES
from edgetune.tuners.base import TunerConfig

# Every family's default LoRA targets (peft's where peft has the architecture; a test keeps them equal):
# the families hold them (Family.lora_targets); this table is the built-in families' view.
FALLBACK_TARGETS = {model_type: list(family.lora_targets) for model_type, family in FAMILIES.items()}


@dataclass
class LoraConfig(TunerConfig):
    """LoRA (Hu et al., 2021) through peft, inside the blocks the plan chose.

    ``target_modules=None`` takes peft's default for the architecture (the query
    and value projections for BERT and Llama-style models, ``c_attn`` for GPT-2).
    ``layers`` restricts the adapters to some of the chosen blocks (1-based block
    numbers, as in ``Plan.trainable_layers``); ``None`` adapts every chosen block.
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.1
    target_modules: list[str] | None = None
    layers: list[int] | None = None

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"LoRA rank r must be >= 1, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        if self.layers is not None:
            self.layers = sorted({int(x) for x in self.layers})
