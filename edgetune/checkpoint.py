"""Training checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint is a directory, swapped in atomically (a crash while writing
leaves the previous checkpoint):

* ``trainable.safetensors`` — the tuner's trainable tensors (names as in the top model);
* ``best.safetensors``      — the best-on-validation tensors so far (when validating);
* ``optimizer.pt``          — optimizer and LR-scheduler state dicts (tensors and
  numbers only; read back with ``torch.load(weights_only=True)``);
* ``tuner.safetensors``     — the tuner's extra state (e.g. RoseLoRA's importance
  averages), when it keeps any;
* ``rng.safetensors``       — torch RNG states (CPU and each CUDA device), so dropout
  after a resume draws the masks an uninterrupted run would have drawn;
* ``state.json``            — progress (epoch, step, history, best epoch) and the
  *identity* of the run (plan cut, model hash, data digest, tuner, settings):
  a checkpoint is resumed only by a run with the same identity; and the size
  and sha256 of every other file, so a damaged checkpoint is detected.

Every file is fsynced before the directory is renamed in. The previous
checkpoint is kept as the hidden sibling ``.<name>.prev`` until the next one
is complete: a checkpoint that is missing (a kill between two renames) or
damaged is replaced by the previous one when it loads, and a run with neither
starts over instead of failing.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from edgetune import strict_json
from edgetune.io import fsync_dir, fsync_tree, honour_umask_tree, sha256_file


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
    tuner_state: dict[str, torch.Tensor] = field(default_factory=dict)


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


def previous_dir(directory: str | Path) -> Path:
    """Where the checkpoint before ``directory``'s current one is kept until the next one is complete."""
    directory = Path(directory)
    return directory.parent / f".{directory.name}.prev"


class DamagedCheckpoint(Exception):
    """A checkpoint's files do not load or do not match the sizes and hashes its state.json lists."""


def save_checkpoint(directory: str | Path, ckpt: Checkpoint) -> Path:
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    try:
        save_file(ckpt.trainable, str(tmp / "trainable.safetensors"))
        if ckpt.best is not None:
            save_file(ckpt.best, str(tmp / "best.safetensors"))
        torch.save({"optimizer": ckpt.optimizer, "scheduler": ckpt.scheduler}, tmp / "optimizer.pt")
        save_file({k: v.contiguous() for k, v in ckpt.rng.items()}, str(tmp / "rng.safetensors"))
        if ckpt.tuner_state:
            save_file(ckpt.tuner_state, str(tmp / "tuner.safetensors"))
        files = {p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)} for p in sorted(tmp.iterdir())}
        meta = {"identity": ckpt.identity, "state": asdict(ckpt.state), "files": files}
        (tmp / "state.json").write_text(strict_json.dumps(meta, indent=2))
        honour_umask_tree(tmp)  # mkdtemp made it 0700 and safetensors writes 0600: give it the umask's modes
        fsync_tree(tmp)  # every file on disk before the rename publishes the directory
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prev = previous_dir(directory)
    if directory.exists():
        shutil.rmtree(prev, ignore_errors=True)
        os.replace(directory, prev)  # the last good checkpoint stays until the new one is in place
    os.replace(tmp, directory)
    fsync_dir(directory.parent)
    return directory


def _load(directory: Path) -> Checkpoint:
    try:
        meta = json.loads((directory / "state.json").read_text())
        for name, entry in (meta.get("files") or {}).items():
            path = directory / name
            if not path.is_file() or path.stat().st_size != entry["size"] or sha256_file(path) != entry["sha256"]:
                raise DamagedCheckpoint(f"{name} is missing, truncated or corrupt")
        best_path = directory / "best.safetensors"
        tuner_path = directory / "tuner.safetensors"
        opt = torch.load(directory / "optimizer.pt", map_location="cpu", weights_only=True)
        return Checkpoint(
            state=TrainState(**meta["state"]),
            identity=meta["identity"],
            trainable=load_file(str(directory / "trainable.safetensors")),
            best=load_file(str(best_path)) if best_path.exists() else None,
            optimizer=opt["optimizer"],
            scheduler=opt["scheduler"],
            rng=load_file(str(directory / "rng.safetensors")),
            tuner_state=load_file(str(tuner_path)) if tuner_path.exists() else {},
        )
    except DamagedCheckpoint:
        raise
    except Exception as err:  # noqa: BLE001 (json, torch, safetensors: any failure means a damaged file)
        raise DamagedCheckpoint(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from None


def load_checkpoint(directory: str | Path) -> Checkpoint | None:
    """The checkpoint in ``directory`` or, when it is missing or damaged, the previous one; ``None`` if there is
    no good one (the run starts over, with a warning when a damaged one was dropped)."""
    directory = Path(directory)
    problems = []
    for candidate in (directory, previous_dir(directory)):
        if not (candidate / "state.json").exists():
            continue
        try:
            ckpt = _load(candidate)
        except DamagedCheckpoint as err:
            problems.append(f"{candidate}: {err}")
            continue
        if problems:
            warnings.warn(f"damaged checkpoint ({'; '.join(problems)}); resuming from {candidate}", stacklevel=2)
        return ckpt
    if problems:
        warnings.warn(f"damaged checkpoint ({'; '.join(problems)}); starting over", stacklevel=2)
    return None


def remove_checkpoint(directory: str | Path) -> None:
    """Drop a checkpoint and the previous one kept beside it."""
    shutil.rmtree(directory, ignore_errors=True)
    shutil.rmtree(previous_dir(directory), ignore_errors=True)


def identity_mismatch(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Names of the identity fields that differ between a checkpoint and the current run."""
    return sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k))
