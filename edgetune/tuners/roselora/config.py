"""Config of the ``roselora`` tuner."""

from __future__ import annotations

from dataclasses import dataclass

from edgetune.tuners.lora.config import LoraConfig


@dataclass
class RoseLoraConfig(LoraConfig):
    """RoseLoRA: LoRA whose A rows and B columns are pruned to ``target_density`` during training.

    Inherits the LoRA settings (rank ``r``, ``alpha``, ``dropout``,
    ``target_modules``, ``layers``). ``target_density`` is the fraction of each
    row of A (length ``in_features``) and of each column of B (length
    ``out_features``) kept at the end. The density follows a cubic schedule from
    1 down to the target: it stays 1 for the first ``warmup`` share of the
    optimizer steps, reaches the target ``final`` share of the steps before the
    end and stays there. ``ema`` is the weight of the old value in the
    importance average (I <- ema * I + (1 - ema) * |w * grad|).
    """

    target_density: float = 0.1
    warmup: float = 0.1
    final: float = 0.2
    ema: float = 0.8

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.target_density <= 1.0:
            raise ValueError(f"RoseLoRA target_density must be in (0, 1], got {self.target_density}")
        if self.warmup < 0 or self.final < 0 or self.warmup + self.final >= 1.0:
            raise ValueError(
                f"RoseLoRA warmup and final are shares of the steps: >= 0 and warmup + final < 1, "
                f"got {self.warmup} and {self.final}"
            )
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"RoseLoRA ema must be in [0, 1), got {self.ema}")
