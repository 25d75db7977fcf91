"""Choosing among a job's candidate tops and the do-no-harm verdict, the same on every training backend.

A personalization job trains one or more candidate configurations
(:data:`device_sim.settings.DEFAULT_CANDIDATES`), picks the one with the best
inner validation accuracy (:func:`choose`; ties go to the cheaper, listed
first), and keeps it only when it beats the global top on the inner
validation split and passes the guard on the held-out guard split
(:func:`verdict`, :mod:`device_sim.guard`). The records written into
``personal.json`` (``selection``, ``training``) are built here too, so the
torch and the ExecuTorch backends write the same state for the same outcome.
Torch-free.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from device_sim.guard import GuardDecision, decide
from device_sim.profiles import DeviceProfile
from device_sim.settings import PersonalizeConfig
from edgetune.costs import CutCost


@dataclass
class Trained:
    """One candidate's personalized top: its tensors as a personal state would hold them, and its scores."""

    name: str
    tensors: dict[str, Any]  # torch tensors (torch backend) or numpy arrays (ExecuTorch backends)
    train_cut: int
    tuner: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False
    trainable_params: int = 0
    val_accuracy: float | None = None
    estimate: CutCost | None = None
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)  # every optimizer step's loss (ExecuTorch backends)


@dataclass
class PersonalizeResult:
    """What a personalization job did; ``manifest`` is the written ``personal.json``.

    ``kept`` is ``"personal"`` or ``"global"`` (the guard refused the personal top: the state is of kind
    ``kept_global``); ``candidate`` is the personal top that was chosen, kept or not (its tensors let a
    benchmark score what the guard refused)."""

    path: Path
    manifest: dict[str, Any]
    history: list[dict[str, Any]]
    best_epoch: int | None
    stopped_early: bool
    trainable_params: int
    num_train: int
    num_val: int
    train_cut: int
    tuner: dict[str, Any]
    estimate: CutCost
    cache: str
    resumed: bool
    seconds: dict[str, float] = field(default_factory=dict)
    kept: str = "personal"
    guard: GuardDecision | None = None
    num_guard: int = 0
    selection: dict[str, Any] = field(default_factory=dict)
    candidate: Trained | None = None
    candidates: list[Trained] = field(default_factory=list)  # every candidate the selection tried
    losses: list[float] = field(default_factory=list)  # the chosen candidate's step losses (ExecuTorch backends)

    @property
    def backward_flops(self) -> float:
        """Backward FLOPs the whole job spent (cost model): every candidate it trained, each for the epochs it ran
        on the training examples. A selecting job that keeps the prior shift (which trains nothing) still paid
        for the candidates it tried; only a job that trained nothing at all spent none."""
        if self.candidates:
            return float(
                sum(c.estimate.backward_flops * self.num_train * len(c.history) for c in self.candidates if c.estimate)
            )
        return float(self.estimate.backward_flops * self.num_train * len(self.history))

    @property
    def val_metrics(self) -> dict[str, Any] | None:
        """Validation metrics of the epoch that was kept (``None`` without validation)."""
        return self.manifest["training"].get("val_metrics")


def choose(candidates: list[Trained]) -> int:
    """Index of the candidate with the best inner validation accuracy; ties go to the one listed first."""
    scores = [c.val_accuracy if c.val_accuracy is not None else -1.0 for c in candidates]
    return int(np.argmax(scores))  # argmax returns the first of equal maxima


def verdict(
    config: PersonalizeConfig,
    chosen: Trained,
    global_val: float | None,
    y_guard: np.ndarray,
    guard_logits: tuple[np.ndarray, np.ndarray] | None,
) -> tuple[bool, str | None, GuardDecision | None]:
    """``(keep the personal top, why not, the guard's decision)``.

    ``global_val``: the global top's inner validation accuracy (``None``: no validation split);
    ``guard_logits``: the global and the chosen top's logits on the guard split (``None``: no guard split).
    With ``config.select`` a candidate must beat the global top on the inner validation split; with a guard
    (``config.guard_fraction > 0``) it must pass the guard's test too."""
    beats_global = (
        not config.select
        or global_val is None
        or (chosen.val_accuracy is not None and chosen.val_accuracy > global_val)
    )
    keep = beats_global
    reason = None if beats_global else "no candidate beat the global model on the inner validation split"
    guard = None
    if config.guard_fraction > 0:
        if guard_logits is None:
            return False, reason or "too few examples to hold out a guard split", None
        global_logits, personal_logits = guard_logits
        guard = decide(
            personal_logits.argmax(axis=1) == y_guard, global_logits.argmax(axis=1) == y_guard, config.guard_alpha
        )
        if not guard.keep_personal:
            keep = False
            reason = reason or (
                f"the personal top was not significantly better on the guard split "
                f"(p = {guard.p_value:.3g} >= alpha {guard.alpha})"
            )
    return keep, reason, guard


def write_outcome(
    out: Path, package: Any, chosen: Trained, keep: bool, training: dict[str, Any], extra: dict[str, Any]
) -> None:
    """The job's personal state: the chosen top's tensors, or, when it is not kept, a ``kept_global`` state."""
    from edgetune_format.personal import write_personal_state

    if keep:
        write_personal_state(
            out, chosen.tensors, package, train_cut=chosen.train_cut, tuner=chosen.tuner, training=training,
            extra=extra,
        )  # fmt: skip
    else:
        write_personal_state(
            out, {}, package, train_cut=package.cut, tuner={"name": "none", "params": {}}, training=training,
            kind="kept_global", extra=extra,
        )  # fmt: skip


def result_of(
    out: Path,
    job: Any,
    chosen: Trained,
    keep: bool,
    package_cut: int,
    guard: GuardDecision | None,
    selection: dict[str, Any],
    candidates: list[Trained],
    resumed: bool,
    seconds: dict[str, float],
    losses: list[float] | None = None,
) -> PersonalizeResult:
    """What a job returns once :func:`write_outcome` has written its state at ``out`` (every backend alike)."""
    import json

    return PersonalizeResult(
        path=out,
        manifest=json.loads((out / "personal.json").read_text()),
        history=chosen.history,
        best_epoch=chosen.best_epoch,
        stopped_early=chosen.stopped_early,
        trainable_params=chosen.trainable_params if keep else 0,
        num_train=len(job.train_idx),
        num_val=len(job.val_idx),
        train_cut=chosen.train_cut if keep else package_cut,
        tuner=chosen.tuner if keep else {"name": "none", "params": {}},
        estimate=job.estimate,
        cache=job.cache,
        resumed=resumed,
        seconds=seconds,
        kept="personal" if keep else "global",
        guard=guard,
        num_guard=len(job.guard_idx),
        selection=selection,
        candidate=chosen,
        candidates=candidates,
        losses=list(losses or []),
    )


def guard_record(
    config: PersonalizeConfig, keep: bool, reason: str | None, guard: GuardDecision | None, chosen: Trained,
    seconds: float,
) -> dict[str, Any]:  # fmt: skip
    """The ``guard`` entry of ``personal.json``."""
    return {
        **(guard.to_dict() if guard is not None else {}),
        "kept": "personal" if keep else "global",
        "reason": reason,
        "candidate": chosen.name,
        "seconds": seconds,
        "enabled": config.guard_fraction > 0,
    }


def selection_record(
    candidates: list[Trained], chosen: Trained, global_val: float | None, skipped: list[dict[str, Any]]
) -> dict[str, Any]:
    """The ``selection`` entry of ``personal.json``: every candidate's inner validation score and cost."""
    rows = [
        {
            "name": c.name,
            "train_cut": c.train_cut,
            "tuner": c.tuner.get("name"),
            "val_accuracy": c.val_accuracy,
            "best_epoch": c.best_epoch,
            "epochs_run": len(c.history),
            "seconds": c.seconds,
            "estimated_device_seconds": c.estimate.device_seconds if c.estimate is not None else None,
        }
        for c in candidates
    ]
    return {"global_val_accuracy": global_val, "candidates": rows, "chosen": chosen.name, "skipped": skipped}


def training_record(
    job: Any,
    chosen: Trained,
    config: PersonalizeConfig,
    profile: DeviceProfile | None,
    resumed: bool,
    seconds: dict[str, float],
) -> dict[str, Any]:
    """The ``training`` entry of ``personal.json``: how this state came about (the chosen candidate's run)."""
    best = next((h for h in chosen.history if h["epoch"] == chosen.best_epoch), None)
    val_metrics = {k[4:]: v for k, v in best.items() if k.startswith("val_")} if best else None
    if val_metrics is None and chosen.val_accuracy is not None:
        val_metrics = {"accuracy": chosen.val_accuracy}
    estimate = job.estimate
    return {
        "data": job.dataset.source,
        "num_train": int(len(job.train_idx)),
        "num_val": int(len(job.val_idx)),
        "num_guard": int(len(job.guard_idx)),
        "config": {k: v for k, v in asdict(config).items() if k != "progress"},
        "candidate": chosen.name,
        "history": chosen.history,
        "best_epoch": chosen.best_epoch,
        "stopped_early": chosen.stopped_early,
        "val_metrics": val_metrics,
        "trainable_params": chosen.trainable_params,
        "cache": job.cache,
        "estimate": {
            "train_memory_mb": estimate.train_memory_mb,
            "device_seconds": estimate.device_seconds,
            "backward_frac": estimate.backward_frac,
            "backward_flops_per_example": estimate.backward_flops,
        },
        "profile": profile.to_dict() if profile is not None else None,
        "resumed": resumed,
        "seconds": seconds,
    }
