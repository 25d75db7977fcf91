"""Training logs in the formats people already read: ``--report-to tensorboard`` (the transformers convention).

A :class:`TensorBoardCallback` plugs into the one training loop (:class:`edgetune.callbacks.TrainerCallback`) and
writes TensorBoard event files: the loss after every optimizer step (``train/loss``, x = the global step) and
every number of each epoch's history row (``epoch/loss``, ``epoch/val_accuracy``, ``epoch/seconds`` ...; x = the
epoch). The progress bar stays the default; the log is an addition. tensorboard is an optional dependency
(``pip install edgetune[tensorboard]``); asking for it without it installed is a :class:`ReportToError`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from edgetune.callbacks import StepEvent, TrainerCallback
from edgetune.errors import EdgetuneError

REPORT_TO = ("none", "tensorboard")


class ReportToError(EdgetuneError):
    """A ``--report-to`` destination that is unknown or whose package is not installed."""


class TensorBoardCallback(TrainerCallback):
    """Writes the loop's step losses and epoch rows to TensorBoard event files in ``log_dir``."""

    def __init__(self, log_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ReportToError(
                "--report-to tensorboard needs the tensorboard package: pip install tensorboard "
                "(or edgetune[tensorboard])"
            ) from None
        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir))

    def on_step_end(self, event: StepEvent) -> None:
        self.writer.add_scalar("train/loss", event.loss, event.global_step)

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        epoch = int(row.get("epoch", 0))
        for key, value in row.items():
            # booleans (``resumed``) and missing figures (None, NaN) are not curves
            if (
                key != "epoch"
                and isinstance(value, int | float)
                and not isinstance(value, bool)
                and math.isfinite(value)
            ):
                self.writer.add_scalar(f"epoch/{key}", float(value), epoch)
        self.writer.flush()  # a run killed later still leaves every finished epoch readable

    def close(self) -> None:
        self.writer.close()


def report_callbacks(report_to: str, log_dir: str | Path) -> list[TensorBoardCallback]:
    """The callbacks ``--report-to`` asks for (none for ``none``); :class:`ReportToError` for an unknown one."""
    if report_to == "none":
        return []
    if report_to == "tensorboard":
        return [TensorBoardCallback(log_dir)]
    raise ReportToError(f"--report-to must be one of {', '.join(REPORT_TO)}, got {report_to!r}")


def default_log_dir(out: str | Path) -> Path:
    """``runs/<name of --out>`` next to ``--out``: beside the checkpoint, never inside the directory that is
    replaced atomically when the run finishes."""
    out = Path(out)
    return out.parent / "runs" / out.name
