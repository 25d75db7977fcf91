"""The settings of one planning run (``edgetune plan``): which planner, its parameters, the training job the cost
model prices and the budget a cut must fit.

Torch-free, like :mod:`edgetune.training_config`: each field's ``metadata["help"]`` is also its command-line help
(``edgetune_cli.config_options`` generates the options of `edgetune plan` from these fields) and the command line
reads this class to show its help, so nothing here may import torch or numpy. ``__post_init__`` is the one check
of these settings as the command line takes them; the planners' own configs (:class:`~edgetune.planner.SALFConfig`
...) and :class:`~edgetune.costs.Budget` still check what library callers give them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgetune.errors import SettingError, check_setting
from edgetune.planner_registry import PLANNER_NAMES

POLICIES = ("cheapest", "argmax-gain")
"""SALF's choice of a cut (:class:`edgetune.planner.salf.SALFConfig` reads them from here)."""

MAX_LENGTH_RANGE = (2, 1 << 16)
MIN_SAMPLE_SIZE = 4  # SALF fits its probes by leave-one-out: fewer examples leave nothing to compare


@dataclass
class PlanConfig:
    """What ``edgetune plan`` is told besides its inputs (model, data, tuner) and outputs."""

    planner: str = field(
        default="salf",
        metadata={
            "help": f"Planner: {', '.join(PLANNER_NAMES)}. SALF reads latent traces (no training).",
            "choices": PLANNER_NAMES,
        },
    )
    max_length: int = field(default=128, metadata={"help": "Tokens per example (truncation)."})
    batch_size: int = field(default=16, metadata={"help": "Training batch size assumed by the cost model."})
    epochs: int = field(default=3, metadata={"help": "Training epochs assumed by the cost model."})
    sample_size: int = field(default=256, metadata={"help": "SALF calibration sample size."})
    policy: str = field(
        default="cheapest",
        metadata={
            "help": "SALF's choice: 'cheapest' = the cheapest cut whose predicted accuracy loss against the best "
            "cut is within --tolerance (head-only allowed); 'argmax-gain' = the paper's rule, the layer of "
            "largest expected fine-tuning gain.",
            "choices": POLICIES,
        },
    )
    tolerance: float = field(
        default=1.0,
        metadata={"help": "SALF 'cheapest': accuracy points the plan may give up against the best cut."},
    )
    min_trainable_layers: int | None = field(
        default=None,
        metadata={
            "help": "SALF/random: keep at least this many top blocks trainable (default: 0 for SALF 'cheapest', "
            "1 otherwise)."
        },
    )
    k: int = field(default=2, metadata={"help": "topk planner: number of top blocks to train."})
    max_backward_frac: float | None = field(
        default=None, metadata={"help": "Budget: max backward FLOPs as a fraction of full fine-tuning (0-1]."}
    )
    max_train_memory_mb: float | None = field(
        default=None, metadata={"help": "Budget: max estimated training memory in MB."}
    )
    max_device_seconds: float | None = field(
        default=None, metadata={"help": "Budget: max estimated job time in seconds at --device-gflops."}
    )
    device_gflops: float = field(default=20.0, metadata={"help": "Sustained GFLOP/s of the target device."})
    seed: int = field(default=0, metadata={"help": "Seed for sampling and splits: same seed, same plan."})

    def __post_init__(self) -> None:
        """The one check of every setting (a :class:`SettingError` names the field; the command line shows it
        under the field's flag)."""
        if self.planner not in PLANNER_NAMES:
            raise SettingError("planner", f"must be one of {', '.join(PLANNER_NAMES)}, got {self.planner!r}")
        if self.policy not in POLICIES:
            raise SettingError("policy", f"must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        check_setting("max_backward_frac", self.max_backward_frac, 0, 1, low_open=True)
        check_setting("tolerance", self.tolerance, 0)
        check_setting("max_length", self.max_length, *MAX_LENGTH_RANGE)
        for name in ("batch_size", "epochs", "k"):
            check_setting(name, getattr(self, name), 1)
        check_setting("sample_size", self.sample_size, MIN_SAMPLE_SIZE)
        check_setting("min_trainable_layers", self.min_trainable_layers, 0)
        for name in ("max_train_memory_mb", "max_device_seconds", "device_gflops"):
            check_setting(name, getattr(self, name), 0, low_open=True)

    def planner_params(self) -> dict[str, Any]:
        """The settings the chosen planner reads (the others are ignored)."""
        if self.planner == "salf":
            return {
                "sample_size": self.sample_size,
                "min_trainable_layers": self.min_trainable_layers,
                "policy": self.policy,
                "tolerance": self.tolerance,
            }
        if self.planner == "random":
            return {"min_trainable_layers": 1 if self.min_trainable_layers is None else self.min_trainable_layers}
        if self.planner == "topk":
            return {"k": self.k}
        return {}

    def budget_limits(self) -> dict[str, float | None]:
        """The keyword arguments of :class:`edgetune.costs.Budget`."""
        return {
            "max_backward_frac": self.max_backward_frac,
            "max_train_memory_mb": self.max_train_memory_mb,
            "max_device_seconds": self.max_device_seconds,
        }
