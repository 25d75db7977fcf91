"""The settings of every training loop of the project: one family of torch-free dataclasses.

The server trainer's :class:`TrainConfig` (and HadSkip's :class:`HadSkipConfig`, a TrainConfig) and a device's
personalization job (:class:`device_sim.settings.PersonalizeConfig`) all derive from :class:`TrainingConfig`: the
shared fields are declared and checked here once; a subclass only adds its own fields and re-states the defaults
that suit its setting (a device trains a few hundred texts of one user for more epochs, with validation on by
default). Each field's ``metadata["help"]`` is also its command-line help (``edgetune_cli.config_options``
generates the options from the fields), so nothing here may import torch or numpy: the command line reads these
classes at start-up.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from edgetune.errors import EdgetuneError, SettingError, check_setting
from edgetune.learning_rates import default_learning_rates


class TrainError(EdgetuneError, ValueError):
    """A training run cannot start as asked (output directory, checkpoint, settings); declared here, beside the
    settings, so that a torch-free device job raises the same class as the server trainer."""


CACHE_PLACES = ("auto", "memory", "mmap")
# The metrics a run can select its best epoch on (edgetune.metrics computes them). Declared here, not there, so
# that reading a config (the command line builds one at start-up) does not import numpy.
METRICS = ("accuracy", "macro_f1")


@dataclass
class TrainingConfig:
    """Optimization, validation, feature cache and checkpoint settings of a top's training."""

    # Each field's ``help`` is the text of its command-line option (edgetune_cli.config_options builds the
    # options of `edgetune train` and `edgetune personalize` from these fields); ``choices``: the values
    # __post_init__ accepts.
    epochs: int = field(default=3, metadata={"help": "Training epochs (early stopping may end sooner)."})
    batch_size: int = field(default=16, metadata={"help": "Examples per optimizer step."})
    lr: float | None = field(
        default=None,
        metadata={
            "help": "Learning rate of the trained blocks or their adapters (default: the rule for what is trained, "
            "edgetune.learning_rates: 3e-4 up to half the blocks, down to 5e-5 for all; 5e-4 for adapters)."
        },
    )
    head_lr: float | None = field(
        default=None,
        metadata={
            "help": "Learning rate of the head and the final norm (default: the rule's head rate, 1e-3; 9e-3 when "
            "the head trains alone)."
        },
    )
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    warmup_ratio: float = field(
        default=0.06, metadata={"help": "Share of the steps over which the learning rate rises linearly."}
    )
    max_grad_norm: float | None = field(default=1.0, metadata={"help": "Gradient clipping norm (None: no clipping)."})
    seed: int = field(
        default=0, metadata={"help": "Seed of the head, adapters, batches, dropout and the validation split."}
    )
    val_fraction: float = field(
        default=0.0,
        metadata={"help": "Share of the training data held out to keep the best epoch and stop early (0: none)."},
    )
    patience: int | None = field(
        default=None,
        metadata={"help": "Stop after this many epochs without validation improvement (default: never stop early)."},
    )
    metric: str = field(
        default="macro_f1", metadata={"help": "Validation metric that picks the best epoch.", "choices": METRICS}
    )
    cache: str = field(
        default="auto",
        metadata={
            "help": "Feature cache: memory, mmap (a memory-mapped file in the output directory) or auto (memory "
            "when the features fit).",
            "choices": CACHE_PLACES,
        },
    )
    cache_dtype: str = field(default="float32", metadata={"help": "Cached feature storage: float32 or float16."})
    cache_batch_size: int = field(default=64, metadata={"help": "Texts per trunk call while the cache is built."})
    checkpoint_steps: int | None = field(
        default=None, metadata={"help": "Also checkpoint every N steps (always at each epoch's end)."}
    )
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})

    def __post_init__(self) -> None:
        """The one check of the shared settings (the command line shows a refusal under the field's flag)."""
        if self.cache not in CACHE_PLACES:
            raise SettingError("cache", f"must be one of {CACHE_PLACES}, got {self.cache!r}")
        if self.metric not in METRICS:
            raise SettingError("metric", f"must be one of {METRICS}, got {self.metric!r}")
        for name in ("epochs", "batch_size", "patience", "checkpoint_steps", "cache_batch_size"):
            check_setting(name, getattr(self, name), 1)
        for name in ("lr", "head_lr"):
            check_setting(name, getattr(self, name), 0, low_open=True)
        check_setting("val_fraction", self.val_fraction, 0, 1, high_open=True)

    def shared_settings(self) -> dict[str, Any]:
        """The values of the fields declared here (what another config of the family takes over)."""
        return {f.name: getattr(self, f.name) for f in fields(TrainingConfig)}


MODES = ("cached", "naive")


@dataclass
class TrainConfig(TrainingConfig):
    """How the server trains; the defaults suit a small encoder on a few thousand examples (the shared fields:
    :class:`edgetune.training_config.TrainingConfig`)."""

    mode: str = field(
        default="cached",
        metadata={
            "help": "cached: run the frozen trunk once and train on its output; naive: run it on every step.",
            "choices": MODES,
        },
    )
    release_trunk: bool = field(
        default=False, metadata={"help": "Cached mode: free the trunk's weights while the top trains."}
    )
    max_length: int | None = field(default=None, metadata={"help": "Tokens per example (default: the plan's)."})
    device: str | None = field(
        default=None, metadata={"help": "cpu or cuda (default: Accelerate's choice, a GPU when there is one)."}
    )
    mixed_precision: str = field(default="no", metadata={"help": "Accelerate's mixed precision: no, fp16 or bf16."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in MODES:
            raise SettingError("mode", f"must be one of {MODES}, got {self.mode!r}")
        check_setting("max_length", self.max_length, 2, 1 << 16)
        if self.patience is not None and self.val_fraction == 0:
            raise ValueError("patience needs val_fraction > 0 and must be >= 1")
        if self.release_trunk and self.mode != "cached":
            raise ValueError("release_trunk needs mode='cached' (naive mode runs the trunk every step)")

    def with_learning_rates(self, trained_blocks: int, num_layers: int, tuner: str, steps: int) -> TrainConfig:
        """A copy with both learning rates set: the ones given, else the rule for what is trained, for how long."""
        block, head = default_learning_rates(trained_blocks, num_layers, tuner, steps)
        return replace(self, lr=self.lr if self.lr is not None else block, head_lr=self.head_lr or head)

    def identity(self) -> dict[str, Any]:
        """The settings that change the result (a checkpoint resumes only under the same ones)."""
        # naive and cached mode give the same result, so a run may resume in the other mode
        skip = {"mode", "progress", "checkpoint_steps", "cache", "cache_batch_size", "device", "release_trunk"}
        return {k: v for k, v in asdict(self).items() if k not in skip}


@dataclass
class HadSkipConfig(TrainConfig):
    """HadSkip's settings on top of the trainer's (:mod:`edgetune.skip`): the whole model trains (cut 0, the
    embeddings frozen) on the shared loop, so warm-up and decay, clipping, device placement, mixed precision and
    checkpoints work as for any run. The defaults that suit joint training are re-stated."""

    epochs: int = 2
    lr: float | None = field(default=5e-5, metadata={"help": "Learning rate of the blocks."})
    head_lr: float | None = field(default=1e-3, metadata={"help": "Learning rate of the task head."})
    budget: float = field(default=0.5, metadata={"help": "Target fraction of blocks executed at inference, in (0, 1]."})
    penalty: float = field(default=10.0, metadata={"help": "Weight of the budget penalty (mean gate - budget)^2."})
    init_scale: float = field(
        default=3.0, metadata={"help": "Scale of the gates' initial logits (from each block's importance)."}
    )
    temperature_start: float = field(default=1.0, metadata={"help": "Gate temperature at the first step."})
    temperature_end: float = field(
        default=0.05, metadata={"help": "Gate temperature at the last step (annealed geometrically)."}
    )
    adaptive: bool = field(
        default=True, metadata={"help": "Gates also read each block's input (per-example skipping while training)."}
    )
    gate_lr: float = field(default=5e-2, metadata={"help": "Learning rate of the gates (no weight decay)."})
    calibration_size: int = field(
        default=64, metadata={"help": "Texts that measure block importance and choose the exported skip set."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_setting("budget", self.budget, 0, 1, low_open=True)
        if not 0 < self.temperature_end <= self.temperature_start:
            raise ValueError("need 0 < temperature_end <= temperature_start")
        if self.gate_lr <= 0 or self.penalty < 0 or self.calibration_size < 1:
            raise ValueError("need gate_lr > 0, penalty >= 0 and calibration_size >= 1")
