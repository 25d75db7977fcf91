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
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from device_sim.backends.build import trainer_binary
from device_sim.backends.job import (
    BackendError,
    LightResult,
    Prepared,
    TrainSettings,
    epoch_order,
    finish,
    param_settings,
    prepare,
    schedule,
    start_output,
)

if TYPE_CHECKING:
    from device_sim.package import DevicePackage
    from device_sim.profiles import DeviceProfile
    from edgetune.data import TextDataset

BACKEND = "executorch-cpp"
BETAS = (0.9, 0.999)  # torch.optim.AdamW's defaults, as the torch backend uses them
EPS = 1e-8


def write_job(work: Path, program_file: Path, job: Prepared, settings: TrainSettings, threads: int | None) -> Path:
    """The trainer's inputs in ``work``: label and order files and ``job.txt`` (features are already there)."""
    y_train = job.y[job.train_idx].astype(np.int64)
    n = len(y_train)
    job.train[1].tofile(work / "train.mask")
    y_train.tofile(work / "train.labels")
    np.concatenate([epoch_order(n, settings.seed, e) for e in range(settings.epochs)]).astype(np.int64).tofile(
        work / "order.i64"
    )
    warmup, total = schedule(n, settings)
    seq = job.train[1].shape[1]
    lines = {
        "program": str(program_file),
        "seq": seq,
        "hidden": job.hidden_size,
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
        "val_n": 0 if job.val is None else len(job.val_idx),
        "order": work / "order.i64",
        "out": work / "delta.safetensors",
        "log": work / "train.log",
    }
    if job.val is not None:
        job.val[1].tofile(work / "val.mask")
        job.y[job.val_idx].astype(np.int64).tofile(work / "val.labels")
        lines.update(val_features=work / "val.f32", val_mask=work / "val.mask", val_labels=work / "val.labels")
    text = "".join(f"{k} {v}\n" for k, v in lines.items())
    for name, lr, decay, shape in param_settings(job.program, settings):
        text += f"param {name} {lr!r} {decay!r} {' '.join(str(d) for d in shape)}\n"
    (work / "job.txt").write_text(text)
    return work / "job.txt"


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


def personalize(
    package: DevicePackage,
    data: str | Path | TextDataset,
    out: str | Path,
    config: Any | None = None,
    profile: DeviceProfile | None = None,
    threads: int | None = None,
    callbacks: Sequence[Callable[[int, float], None]] = (),
) -> LightResult:
    """Personalize ``package`` on ``data`` with the C++ trainer; the personal state goes to ``out``."""
    from safetensors.numpy import load_file

    start = time.perf_counter()
    settings = TrainSettings.of(config)
    out = start_output(out)
    threads = threads if threads is not None else (profile.threads if profile is not None else None)
    binary = trainer_binary()  # built on first use; fails before any work when it cannot be
    work = out.parent / f".{out.name}.partial"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        job = prepare(package, data, settings, profile, threads, BACKEND, work=work)
        t_train = time.perf_counter()
        job_file = write_job(work, package.file(job.program["train"]["file"]), job, settings, threads)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads or 1)}
        run = subprocess.run([str(binary), str(job_file)], capture_output=True, text=True, env=env)
        if run.returncode != 0:
            raise BackendError(f"C++ trainer failed (exit {run.returncode}): {run.stderr.strip()[-2000:]}")
        history, losses, best_epoch, stopped = read_log(work / "train.log")
        tensors = load_file(str(work / "delta.safetensors"))
        names = [p["name"] for p in job.program["train"]["parameters"]]
        if sorted(tensors) != sorted(names):
            raise BackendError("the C++ trainer wrote other tensors than top_train.pte trains")
        for step, loss in enumerate(losses):
            for callback in callbacks:
                callback(step, loss)
        seconds = {**job.seconds, "train": time.perf_counter() - t_train}
        result = finish(
            package, out, job, tensors, history, best_epoch, stopped, losses, settings, profile, BACKEND, seconds
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result.seconds["total"] = time.perf_counter() - start
    return result
