"""Backend ``executorch-cpp``: the whole device job in ``libedgetune_device`` (the C library of ``native/``).

This process does what the job does before any work (:func:`device_sim.personalize.prepare`): it reads and
checks the user's data, resolves the candidate configurations, keeps those ``top_train.pte`` can train and
prices them against the device profile (dropping what does not fit). The library then runs the rest, the
same code an app runs without Python: it tokenizes, draws the guard and validation splits (numpy's draws),
runs ``trunk.pte`` once, computes or trains every candidate on the cached features, chooses one, applies the
do-no-harm guard and writes the personal state atomically. What the job returns is read back from that state
(:func:`result_from_state`). There is one implementation of the native job, not a Python orchestration around a
trainer. A killed job run again resumes in the library (its work directory, ``.<out>.partial/``, is the
Python device's). Nothing here imports torch.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from device_sim.backends import register
from device_sim.backends.base import BackendError, Candidate, WholeJobBackend
from device_sim.backends.program import ProgramRules
from device_sim.guard import GuardDecision
from device_sim.selection import PersonalizeResult, Trained
from device_sim.settings import PersonalizeConfig

if TYPE_CHECKING:
    from device_sim.personalize import Job

GUARD_FIELDS = tuple(GuardDecision.__dataclass_fields__)


def library_settings(config: PersonalizeConfig, job: Job, threads: int | None) -> dict[str, Any]:
    """``edgetune_personalize_settings`` of the job (as keyword arguments of :func:`device_sim.native.personalize`)."""
    settings: dict[str, Any] = {
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "weight_decay": config.weight_decay,
        "warmup_ratio": config.warmup_ratio,
        "max_grad_norm": config.max_grad_norm or 0.0,
        "patience": -1 if config.patience is None else config.patience,
        "seed": config.seed,
        "val_fraction": config.val_fraction,
        "guard_fraction": config.guard_fraction,
        "guard_alpha": config.guard_alpha,
        "threads": threads or 0,
        "select": int(config.select),
        "int8_trunk": int(config.precision == "int8"),
    }
    if not config.select:  # the one configured candidate's cut and rates
        cand = job.candidates[0]
        settings.update(head_only=int(cand.head_only), tuner=cand.tuner, **_rates(cand.config))
    else:
        settings.update(_rates(config))
    return settings


def _rates(config: PersonalizeConfig) -> dict[str, float]:
    lr = float(config.lr or 0.0)
    return {"lr": lr, "head_lr": float(config.head_lr if config.head_lr is not None else lr)}


def library_candidate(cand: Candidate) -> dict[str, Any]:
    """An ``edgetune_candidate`` (as a dict) for a resolved, priced candidate."""
    return {
        "name": cand.name,
        "prior": cand.kind == "prior",
        "head_only": cand.head_only,
        "tuner": cand.tuner,
        **_rates(cand.config),
        "estimated_seconds": cand.estimate.device_seconds if cand.estimate is not None else -1.0,
    }


def result_from_state(
    out: Path, job: Job, losses: dict[str, list[float]], seconds: dict[str, float], resumed: bool = False
) -> PersonalizeResult:
    """What the job did, read from the personal state the library wrote at ``out``: every candidate's scores
    (the selection), the chosen one's history and losses, the guard's decision. ``losses``: each candidate's
    step losses, as the library reported them. Tensors: the kept top's; a top the guard refused is not kept by
    the library, so its :class:`Trained` holds none."""
    manifest = json.loads((out / "personal.json").read_text())
    training, selection, guard_entry = manifest["training"], manifest["selection"], manifest["guard"]
    kept = manifest["kind"] != "kept_global"
    kinds = {c.name: c for c in job.candidates}
    tensors: dict[str, Any] = {}
    if kept:
        from safetensors.numpy import load_file

        tensors = load_file(str(out / manifest["weights"]))
    trained = []
    for row in selection["candidates"]:
        chosen = row["name"] == selection["chosen"]
        tuner: dict[str, Any] = manifest["tuner"] if chosen and kept else {"name": row["tuner"], "params": {}}
        cand = kinds.get(row["name"])
        if cand is not None and cand.kind == "prior":
            tuner["prior_shift"] = manifest["tuner"].get("prior_shift", []) if chosen and kept else []
        history = training["history"] if chosen else [{"epoch": e + 1} for e in range(row["epochs_run"])]
        trained.append(
            Trained(
                name=row["name"],
                tensors=tensors if chosen else {},
                train_cut=row["train_cut"],
                tuner=tuner,
                history=history,
                best_epoch=row["best_epoch"],
                stopped_early=chosen and training["stopped_early"],
                trainable_params=int(sum(int(np.prod(t.shape)) for t in tensors.values())) if chosen else 0,
                val_accuracy=row["val_accuracy"],
                estimate=cand.estimate if cand is not None else None,
                seconds=row["seconds"],
                losses=losses.get(row["name"], []),
            )  # fmt: skip
        )
    chosen = next(t for t in trained if t.name == selection["chosen"])
    guard = GuardDecision(**{k: guard_entry[k] for k in GUARD_FIELDS}) if "keep_personal" in guard_entry else None
    return PersonalizeResult(
        path=out, manifest=manifest, history=chosen.history, best_epoch=chosen.best_epoch,
        stopped_early=chosen.stopped_early, trainable_params=chosen.trainable_params if kept else 0,
        num_train=training["num_train"], num_val=training["num_val"], train_cut=manifest["train_cut"],
        tuner=manifest["tuner"], estimate=job.estimate, cache="memory", resumed=resumed, seconds=seconds,
        kept="personal" if kept else "global", guard=guard, num_guard=training["num_guard"], selection=selection,
        candidate=chosen, candidates=trained, losses=chosen.losses,
    )  # fmt: skip


@register
class ExecuTorchCpp(ProgramRules, WholeJobBackend):
    """See the module docstring."""

    name = "executorch-cpp"
    cache = "memory"  # the library keeps each split's features in its own memory, once
    resumes = True  # the library goes on from the work directory an interrupted run of the same job left

    def check(self) -> None:
        super().check()
        from device_sim.native import load_library

        if self.config.metric != "accuracy":
            raise BackendError(
                f"--trainer {self.name} keeps the epoch of the best validation accuracy (--metric accuracy)"
            )
        trunk = "trunk_int8" if self.config.precision == "int8" else "trunk"
        if trunk == "trunk_int8" and "trunk_int8" not in self.program:
            raise BackendError(
                f"{self.package.path}: no int8 trunk program (trunk.int8.pte); re-export with `edgetune export ... "
                f"--int8 --targets onnx,executorch` or use --precision fp32"
            )
        if "trunk" not in self.program:
            raise BackendError(
                f"{self.package.path}: no trunk.pte (exported by an earlier release); re-export with "
                f"`edgetune export ... --targets onnx,executorch` to train with --trainer {self.name}"
            )
        load_library()  # built on first use; fails before any work when it cannot be

    def run_whole(self, job: Job, out: Path, config: PersonalizeConfig, started: float) -> PersonalizeResult:
        from device_sim import native

        prepared = time.perf_counter()
        losses: dict[str, list[float]] = {}

        def progress(stage: str, candidate: str, done: int, total: int, loss: float) -> None:
            if stage == "train":
                losses.setdefault(candidate, []).append(loss)
                for callback in self.callbacks:
                    callback(done - 1, loss)

        try:
            with native.NativePackage(self.package.path) as package:
                result = native.personalize_texts(
                    package, job.dataset.texts, job.y, out, data_name=str(job.dataset.source),
                    candidates=[library_candidate(c) for c in job.candidates] if config.select else None,
                    skipped=job.skipped, progress=progress, **library_settings(config, job, self.threads),
                )  # fmt: skip
        except native.NativeError as err:
            raise BackendError(f"libedgetune_device: {err}") from err
        if (result["num_train"], result["num_val"]) != (len(job.train_idx), len(job.val_idx)):
            raise BackendError("libedgetune_device drew other splits than this job's (a library of another version?)")
        state = json.loads((out / "personal.json").read_text())["training"]["seconds"]
        seconds = {"prepare": prepared - started, **{k: state[k] for k in ("trunk", "train", "guard")}}
        seconds["total"] = time.perf_counter() - started
        return result_from_state(out, job, losses, seconds, bool(result["resumed"]))
