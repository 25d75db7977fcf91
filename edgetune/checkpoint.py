"""Training checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint is a directory, swapped in atomically (a crash while writing
leaves the previous checkpoint):

* ``trainable.safetensors`` — the tuner's trainable tensors (names as in the top model);
* ``best.safetensors``      — the best-on-validation tensors so far (when validating);
* ``optimizer.pt``          — optimizer and LR-scheduler state dicts (tensors and
  numbers only; read back with ``torch.load(weights_only=True)``);
* ``rng.safetensors``       — torch RNG states (CPU and each CUDA device), so dropout
  after a resume draws the masks an uninterrupted run would have drawn;
* ``state.json``            — progress (epoch, step, history, best epoch) and the
  *identity* of the run (plan cut, model hash, data digest, tuner, settings):
  a checkpoint is resumed only by a run with the same identity.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from edgetune.io import atomic_directory


@dataclass
class TrainState:
    """Where a run is: ``epoch`` epochs done, plus ``step_in_epoch`` optimizer steps into the next."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_metric: float | None = None
    best_epoch: int | None = None
    epochs_without_improvement: int = 0
    stopped_early: bool = False


@dataclass
class Checkpoint:
    state: TrainState
    identity: dict[str, Any]
    trainable: dict[str, torch.Tensor]
    best: dict[str, torch.Tensor] | None
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, torch.Tensor]


def rng_state() -> dict[str, torch.Tensor]:
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            states[f"cuda{i}"] = s
    return states


def set_rng_state(states: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(states["cpu"])
    if torch.cuda.is_available():
        cuda = [states[k] for k in sorted(k for k in states if k.startswith("cuda"))]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(directory: str | Path, ckpt: Checkpoint) -> Path:
    with atomic_directory(directory) as tmp:
        save_file(ckpt.trainable, str(tmp / "trainable.safetensors"))
        if ckpt.best is not None:
            save_file(ckpt.best, str(tmp / "best.safetensors"))
        torch.save({"optimizer": ckpt.optimizer, "scheduler": ckpt.scheduler}, tmp / "optimizer.pt")
        save_file({k: v.contiguous() for k, v in ckpt.rng.items()}, str(tmp / "rng.safetensors"))
        meta = {"identity": ckpt.identity, "state": asdict(ckpt.state)}
        (tmp / "state.json").write_text(json.dumps(meta, indent=2))
    return Path(directory)


def load_checkpoint(directory: str | Path) -> Checkpoint | None:
    """The checkpoint in ``directory``, or ``None`` if there is none."""
    directory = Path(directory)
    if not (directory / "state.json").exists():
        return None
    meta = json.loads((directory / "state.json").read_text())
    best_path = directory / "best.safetensors"
    opt = torch.load(directory / "optimizer.pt", map_location="cpu", weights_only=True)
    return Checkpoint(
        state=TrainState(**meta["state"]),
        identity=meta["identity"],
        trainable=load_file(str(directory / "trainable.safetensors")),
        best=load_file(str(best_path)) if best_path.exists() else None,
        optimizer=opt["optimizer"],
        scheduler=opt["scheduler"],
        rng=load_file(str(directory / "rng.safetensors")),
    )


def identity_mismatch(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Names of the identity fields that differ between a checkpoint and the current run."""
    return sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k))
