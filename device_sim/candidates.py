"""A personalization job's candidate configurations: resolved, filtered by the backend, priced, trimmed to fit.

With ``select`` (the default) a job tries every candidate of
``config.candidates`` (:data:`~device_sim.settings.DEFAULT_CANDIDATES`: the
global head moved to the user's label prior, the head alone at two learning
rates, LoRA on the plan's blocks, the plan's blocks with its tuner); without
it, the one configured job. Each candidate is resolved to a cut and a tuner
(:func:`resolve_candidates`), the backend says which it can train, and the cost
model prices the rest (:func:`price_candidates`): with ``select``, those that
do not fit the device profile's memory are dropped, then the most expensive
until their sum fits its time budget; without ``select`` the one configured job
is refused when it does not fit, naming the lowest higher cut that would
(:mod:`device_sim.profiles`). Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from device_sim.backends.base import Backend, BackendError, Candidate
from device_sim.package import DevicePackage
from device_sim.profiles import DeviceProfile, check_job
from device_sim.settings import DEFAULT_CANDIDATES, PersonalizeConfig
from edgetune.costs import ArchSummary, CostConfig, CutCost, TunerCost, estimate_cut
from edgetune.training_config import TrainError


def resolve_cut(package: DevicePackage, cut: int | None) -> int:
    """The cut the device trains above: the package's, or a higher one (the trunk cannot be trained)."""
    if cut is None:
        return package.cut
    if not package.cut <= cut <= package.num_layers:
        raise TrainError(
            f"cut {cut}: this package's trunk ends at block {package.cut} and the model has {package.num_layers} "
            f"blocks; the device can train above a cut in {package.cut}..{package.num_layers}"
        )
    return cut


def candidate_config(package: DevicePackage, config: PersonalizeConfig, spec: dict[str, Any]) -> PersonalizeConfig:
    """The job's settings with one candidate spec's cut (``plan``, ``head`` or a block), tuner and rates."""
    cut = spec.get("cut", "plan")
    cut = package.num_layers if cut == "head" else (config.cut if cut == "plan" else int(cut))
    changes: dict[str, Any] = {"cut": cut, "select": False}
    for key in ("tuner", "tuner_params", "lr", "head_lr"):
        if key in spec:
            changes[key] = spec[key]
    if cut == package.num_layers and "tuner" not in spec:
        changes.update(tuner="full", tuner_params={})  # nothing but the head: no adapters
    return replace(config, **changes)


def resolve_candidates(package: DevicePackage, config: PersonalizeConfig) -> list[Candidate]:
    """Every candidate the job's settings ask for, in order (their cuts not yet checked against the package)."""
    plan_tuner = package.plan.tuner
    if not config.select:
        cut = package.cut if config.cut is None else config.cut
        tuner = config.tuner or plan_tuner
        return [Candidate("configured", "train", cut, tuner, config, "checkpoint", cut == package.num_layers)]
    candidates = []
    for spec in config.candidates or DEFAULT_CANDIDATES:
        kind = spec.get("kind", "train")
        cand = candidate_config(package, config, spec)
        cut = (package.cut if cand.cut is None else cand.cut) if kind == "train" else package.num_layers
        tuner = (cand.tuner or plan_tuner) if kind == "train" else "full"
        name = spec["name"]
        candidates.append(Candidate(name, kind, cut, tuner, cand, f"checkpoint-{name}", cut == package.num_layers))
    return candidates


def trainable(
    backend: Backend, candidates: list[Candidate], configured: bool
) -> tuple[list[Candidate], list[dict[str, Any]]]:
    """The candidates ``backend`` can train, and those it cannot (with why); the configured job that it cannot
    train is a :class:`BackendError`."""
    kept, skipped = [], []
    for cand in candidates:
        reason = backend.unsupported(cand, configured) if cand.kind == "train" else None
        if reason is None:
            kept.append(cand)
        elif configured:
            raise BackendError(reason)
        else:
            skipped.append({"name": cand.name, "reason": reason})
    return kept, skipped


def estimate_job(
    package: DevicePackage,
    cut: int,
    tuner_cost: TunerCost,
    num_examples: int,
    width: int,
    config: PersonalizeConfig,
    in_memory: bool,
    gflops: float | None = None,
) -> tuple[ArchSummary, CostConfig, CutCost]:
    """The cost model's price of training above ``cut``: the plan's architecture, the user's data, the tuner."""
    arch = package.plan.arch
    cost = CostConfig(
        seq_len=width,
        batch_size=config.batch_size,
        num_examples=num_examples,
        epochs=config.epochs,
        cached=True,
        cache_in_memory=in_memory,
        feature_bytes=np.dtype(config.cache_dtype).itemsize,
    )
    if gflops is not None:
        cost = replace(cost, device_gflops=gflops)
    return arch, cost, estimate_cut(arch, cost, cut, tuner_cost)


@dataclass
class Priced:
    """The candidates a job runs, those it dropped, and where and at what price it runs them."""

    candidates: list[Candidate]
    skipped: list[dict[str, Any]]
    cut: int  # the lowest cut any candidate trains above: the features are h_cut
    cache: str  # "memory" | "mmap"
    estimate: CutCost  # the whole job's: the most expensive candidate's, with the summed device seconds


def price_candidates(
    backend: Backend,
    candidates: list[Candidate],
    skipped: list[dict[str, Any]],
    config: PersonalizeConfig,
    profile: DeviceProfile | None,
    shape: tuple[int, int],
) -> Priced:
    """Price every candidate (its training: epochs x one epoch; the trunk runs once for the whole job), choose
    where the features go, and refuse (configured job) or drop (``select``) what does not fit the profile."""
    package = backend.package
    examples, width = shape
    gflops = profile.gflops if profile is not None else None
    in_memory = backend.cache != "mmap"
    trunk_seconds: dict[str, float] = {}  # per candidate: the trunk's seconds up to the cut it is priced at
    for cand in candidates:
        if cand.kind == "train":
            cand.cut = resolve_cut(package, cand.cut)
        cut, tuner_cost = backend.price_basis(cand)

        estimate, one, two = (
            estimate_job(package, cut, tuner_cost, examples, width, settings, in_memory, gflops)[2]
            for settings in (cand.config, replace(cand.config, epochs=1), replace(cand.config, epochs=2))
        )
        per_epoch = two.device_seconds - one.device_seconds
        seconds = per_epoch * cand.config.epochs if cand.kind == "train" else 0.0
        cand.estimate = replace(estimate, device_seconds=seconds)
        trunk_seconds[cand.name] = one.device_seconds - per_epoch
        if cand.kind == "train":
            backend.validate(cand)
    fits = None if profile is None else max(_estimate(c).train_memory_mb for c in candidates) <= profile.memory_mb
    nbytes = examples * width * package.hidden_size * np.dtype(config.cache_dtype).itemsize
    place = backend.cache or cache_place(config, nbytes, fits)
    if not config.select:
        cand = candidates[0]
        cut, tuner_cost = backend.price_basis(cand)
        arch, cost, cand.estimate = estimate_job(
            package, cut, tuner_cost, examples, width, config, place == "memory", gflops
        )
        if profile is not None:
            check_job(profile, arch, cost, cut, tuner_cost)
    elif profile is not None:
        skipped = skipped + fit_profile(candidates, profile, trunk_seconds)
    if not candidates:
        raise TrainError("no candidate configuration fits the device profile")
    if config.select:  # the whole job's price: the trunk once (up to the highest cut) + every candidate's training
        main = max(candidates, key=lambda c: _estimate(c).train_memory_mb)
        estimate = replace(_estimate(main), device_seconds=_total(candidates, trunk_seconds))
    else:
        estimate = _estimate(candidates[0])
    return Priced(candidates, skipped, min(c.cut for c in candidates), place, estimate)


def _estimate(cand: Candidate) -> CutCost:
    assert cand.estimate is not None, "priced by price_candidates"
    return cand.estimate


def _total(candidates: list[Candidate], trunk_seconds: dict[str, float]) -> float:
    """A job's device seconds: the trunk once (up to the highest cut) + every candidate's training."""
    trunk = max((trunk_seconds[c.name] for c in candidates), default=0.0)
    return trunk + sum(_estimate(c).device_seconds for c in candidates)


def cache_place(config: PersonalizeConfig, nbytes: int, fits_in_memory: bool | None) -> str:
    """Where the feature cache goes: as asked, or (auto) in memory when it fits the profile and a quarter of
    the free memory, else memory-mapped."""
    if config.cache != "auto":
        return config.cache
    import psutil

    if fits_in_memory is False or nbytes > 0.25 * psutil.virtual_memory().available:
        return "mmap"
    return "memory"


def fit_profile(
    candidates: list[Candidate], profile: DeviceProfile, trunk_seconds: dict[str, float]
) -> list[dict[str, Any]]:
    """Drop (in place) the candidates that do not fit the profile's memory, then the most expensive until the job
    fits its time budget; returns what was dropped and why."""
    skipped = []
    for cand in list(candidates):
        if cand.kind == "train" and _estimate(cand).train_memory_mb > profile.memory_mb:
            candidates.remove(cand)
            skipped.append({"name": cand.name, "reason": f"needs ~{_estimate(cand).train_memory_mb:.0f} MB"})
    while _total(candidates, trunk_seconds) > profile.time_budget_s and any(c.kind == "train" for c in candidates):
        costly = max((c for c in candidates if c.kind == "train"), key=lambda c: _estimate(c).device_seconds)
        candidates.remove(costly)
        seconds = _estimate(costly).device_seconds
        skipped.append({"name": costly.name, "reason": f"over the time budget (~{seconds:.0f} s)"})
    return skipped
