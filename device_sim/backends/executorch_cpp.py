"""Backend ``executorch-cpp``: ``top_train.pte`` trained by the C++ trainer (``device_sim/cpp``), torch-free.

This process tokenizes, runs the ONNX trunk once and writes the features as
raw files into a work directory next to the output (``.<out>.partial/``):
``train.f32`` / ``val.f32`` (n x S x d float32 rows, padding zeroed; the trainer reads a batch's rows
when it needs them), ``*.mask``
(uint8), ``*.labels`` (int64), ``order.i64`` (every epoch's permutation, the
torch backend's), and ``job.txt`` (one ``key value`` per line; ``param NAME
LR WEIGHT_DECAY DIMS...`` per trained tensor, in program order). The trainer
(ExecuTorch's C++ runtime, no libtorch) trains and writes ``delta.safetensors``
(the best epoch's tensors) and ``train.log`` (``step``, ``epoch`` and ``done``
lines), which this module turns into the personal state. Nothing here imports
torch.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from device_sim.backends import register
from device_sim.backends.base import BackendError, Candidate
from device_sim.backends.build import trainer_binary
from device_sim.backends.program import ProgramBackend, ProgramRun, epoch_order, param_settings, schedule
from device_sim.settings import PersonalizeConfig

BETAS = (0.9, 0.999)  # torch.optim.AdamW's defaults, as the torch backend uses them
EPS = 1e-8


def write_job(
    work: Path,
    program: dict[str, Any],
    program_file: Path,
    features: dict[str, Any],
    y: dict[str, np.ndarray],
    hidden: int,
    cand: Candidate,
    threads: int | None,
) -> Path:
    """The trainer's inputs in ``work``: label and order files and ``job.txt`` (features are already there);
    the candidate's own files (``job.txt``, its delta and log) in ``work/<name>/``. ``features`` and ``y``: each
    split's (features, mask) and labels."""
    settings: PersonalizeConfig = cand.config
    own = work / cand.name
    own.mkdir(exist_ok=True)
    y_train = y["train"].astype(np.int64)
    n = len(y_train)
    train_mask = features["train"][1]
    train_mask.tofile(work / "train.mask")
    y_train.tofile(work / "train.labels")
    np.concatenate([epoch_order(n, settings.seed, e) for e in range(settings.epochs)]).astype(np.int64).tofile(
        work / "order.i64"
    )
    warmup, total = schedule(n, settings)
    lines = {
        "program": str(program_file),
        "seq": train_mask.shape[1],
        "hidden": hidden,
        "epochs": settings.epochs,
        "batch_size": settings.batch_size,
        "warmup_steps": warmup,
        "total_steps": total,
        "max_grad_norm": settings.max_grad_norm or 0.0,
        "beta1": BETAS[0],
        "beta2": BETAS[1],
        "eps": EPS,
        "patience": -1 if settings.patience is None else settings.patience,
        "metric": settings.metric,
        "threads": threads or 0,
        "train_n": n,
        "train_features": work / "train.f32",
        "train_mask": work / "train.mask",
        "train_labels": work / "train.labels",
        "val_n": 0 if features["val"] is None else len(y["val"]),
        "order": work / "order.i64",
        "out": own / "delta.safetensors",
        "log": own / "train.log",
    }
    if features["val"] is not None:
        features["val"][1].tofile(work / "val.mask")
        y["val"].astype(np.int64).tofile(work / "val.labels")
        lines.update(val_features=work / "val.f32", val_mask=work / "val.mask", val_labels=work / "val.labels")
    text = "".join(f"{k} {v}\n" for k, v in lines.items())
    for name, lr, decay, shape in param_settings(program, settings, cand.head_only):
        text += f"param {name} {lr!r} {decay!r} {' '.join(str(d) for d in shape)}\n"
    (own / "job.txt").write_text(text)
    return own / "job.txt"


def read_log(path: Path) -> tuple[list[dict[str, Any]], list[float], int | None, bool]:
    """``(history, step losses, best epoch, stopped early)`` from the trainer's log."""
    history: list[dict[str, Any]] = []
    losses: list[float] = []
    best_epoch, stopped, done = None, False, False
    for line in path.read_text().splitlines():
        parts = line.split()
        if parts[0] == "step":
            losses.append(float(parts[3]))
        elif parts[0] == "epoch":
            row: dict[str, Any] = {"epoch": int(parts[1]), "loss": float(parts[2])}
            row.update(seconds=float(parts[4]), steps=int(parts[3]), resumed=False)
            if len(parts) >= 7:
                row.update(val_accuracy=float(parts[5]), val_macro_f1=float(parts[6]))
            history.append(row)
        elif parts[0] == "done":
            best_epoch = int(parts[1]) if int(parts[1]) > 0 else None
            stopped, done = parts[2] == "1", True
    if not done:
        raise BackendError(f"{path}: the trainer did not finish")
    return history, losses, best_epoch, stopped


@register
class ExecuTorchCpp(ProgramBackend):
    """See the module docstring."""

    name = "executorch-cpp"
    cache = "mmap"  # the trainer reads the features from files in the work directory

    def check(self) -> None:
        self.binary = trainer_binary()  # built on first use; fails before any work when it cannot be
        super().check()

    def run_program(self, candidate: Candidate, work: Path) -> ProgramRun:
        """One candidate's run in the C++ trainer (a fresh process: the package's weights, the candidate's rates)."""
        from safetensors.numpy import load_file

        program_file = self.package.file(self.program["train"]["file"])
        job_file = write_job(
            work, self.program, program_file, self.split_features, self.y, self.package.hidden_size, candidate,
            self.threads,
        )  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads or 1)}
        run = subprocess.run([str(self.binary), str(job_file)], capture_output=True, text=True, env=env)
        if run.returncode != 0:
            raise BackendError(f"C++ trainer failed (exit {run.returncode}): {run.stderr.strip()[-2000:]}")
        history, losses, best_epoch, stopped = read_log(job_file.parent / "train.log")
        tensors = load_file(str(job_file.parent / "delta.safetensors"))
        names = [p["name"] for p in self.program["train"]["parameters"]]
        if sorted(tensors) != sorted(names):
            raise BackendError("the C++ trainer wrote other tensors than top_train.pte trains")
        for step, loss in enumerate(losses):
            for callback in self.callbacks:
                callback(step, loss)
        return ProgramRun(tensors, history, best_epoch, stopped, losses)
