"""On-device personalization: train the top of a package on one user's labelled texts.

The job, in the order it runs (everything that can be wrong with the input is
found before anything is computed or written):

1. read the user's data (labels must be the package's), tokenize it with the
   package's tokenizer, hold out a stratified *guard split* (``guard_fraction``,
   20%) that nothing but the do-no-harm guard ever sees, and an inner
   validation split of the rest (``val_fraction``) for selection and early stopping;
2. price the job with the cost model: with ``select`` (the default) every
   candidate configuration (:data:`DEFAULT_CANDIDATES`: the global head moved
   to the user's label prior, the head alone at two learning rates, LoRA on
   the plan's blocks, the plan's blocks with its tuner) that does not fit the
   device profile is dropped, the most expensive first, until their sum fits
   its time budget; without ``select`` the one configured job is refused when it
   does not fit, naming the lowest higher cut that would (:mod:`device_sim.profiles`);
3. run the trunk once with onnxruntime (plus, when the device trains above a
   higher cut than the package's, the frozen top blocks below it in torch) and
   cache the output, in memory or memory-mapped (:class:`~edgetune.features.FeatureCache`);
4. train every candidate on the cache with the server's training loop
   (:class:`~edgetune.train.TopTrainer`: AdamW, warm-up, early stopping on
   the inner validation split, the best epoch kept, atomic checkpoints) and
   pick the one with the best inner validation accuracy (ties: the cheaper);
   one that does not beat the global top there is not kept;
5. the guard (:mod:`device_sim.guard`): the picked top against the global one
   on the guard split, one-sided exact McNemar test at ``guard_alpha``;
6. write the personal state (:mod:`device_sim.personal`) in one atomic step:
   the picked top's tensors (kind ``top_delta``), or, when the guard refused
   it, a state of kind ``kept_global`` that holds no tensor and both scores.

Work in progress lives next to the output, in ``.<out>.partial/`` (the job's
identity, checkpoints, a memory-mapped cache). An interrupted job run again
with the same package, data and settings resumes from its last checkpoint,
exactly (the batches and dropout masks of an uninterrupted run); a job with
other inputs discards it. The previous personal state at ``out`` is replaced
only by a complete new one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from device_sim.guard import prior_shift
from device_sim.package import DevicePackage
from device_sim.personal import check_writable, identity_digest, package_identity
from device_sim.profiles import DeviceProfile, check_job
from device_sim.selection import (
    PersonalizeResult,
    Trained,
    choose,
    guard_record,
    result_of,
    selection_record,
    training_record,
    verdict,
    write_outcome,
)
from device_sim.settings import CACHE_PLACES, CANDIDATE_KEYS, DEFAULT_CANDIDATES, PersonalizeConfig  # noqa: F401 (re-exported)
from device_sim.split import MIN_VALIDATION, guard_split, validation_split  # noqa: F401 (re-exported)
from edgetune.costs import ArchSummary, CostConfig, CutCost, TunerCost, estimate_cut
from edgetune.data import DataError, LabelMap, TextDataset, load_dataset
from edgetune.features import FeatureCache, data_digest
from edgetune.io import atomic_write_json
from edgetune.modeling import TopModel
from edgetune.train import StepEvent, TopTrainer, TrainError, seed_all
from edgetune.tuners import Tuner, get_tuner


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run torch with ``threads`` intra-op threads (a device shares its cores), then restore the old count."""
    if threads is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def read_user_data(package: DevicePackage, data: str | Path | TextDataset, config: PersonalizeConfig) -> TextDataset:
    """The user's labelled texts; a label the package does not know is a DataError naming its row."""
    plan = package.manifest["plan"]
    if isinstance(data, TextDataset):
        dataset = data
    else:
        text_column = config.text_column or plan.get("text_column", "text")
        label_column = config.label_column or plan.get("label_column", "label")
        dataset = load_dataset(data, text_column, label_column)
    if len(dataset) == 0:
        raise DataError(f"{dataset.source}: no examples")
    dataset.encoded_labels(LabelMap(tuple(package.labels)))
    return dataset


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


def resolve_tuner(plan: dict[str, Any], config: PersonalizeConfig) -> Tuner:
    """The plan's tuner (with its parameters), unless the job names another one or other parameters."""
    name = config.tuner or plan.get("tuner", "full")
    if config.tuner_params is not None:
        params = config.tuner_params
    else:
        params = plan.get("tuner_params", {}) if name == plan.get("tuner", "full") else {}
    try:
        return get_tuner(name, **params)
    except ValueError as err:
        raise TrainError(str(err)) from None


def estimate_job(
    package: DevicePackage,
    trained: TopModel,
    tuner: Tuner,
    cut: int,
    num_examples: int,
    width: int,
    config: PersonalizeConfig,
    in_memory: bool,
    gflops: float | None = None,
) -> tuple[ArchSummary, CostConfig, TunerCost, CutCost]:
    """The cost model's price of this job: the plan's architecture, the user's data, this tuner and cut."""
    arch = ArchSummary.from_dict(package.manifest["plan"]["arch"])
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
    model_type = package.manifest["backbone"]["model_type"]
    tuner_cost = tuner.cost_profile(trained.blocks[0], model_type) if len(trained.blocks) else TunerCost()
    return arch, cost, tuner_cost, estimate_cut(arch, cost, cut, tuner_cost)


def _cache_place(config: PersonalizeConfig, nbytes: int, fits_in_memory: bool | None) -> str:
    """Where the feature cache goes: as asked, or (auto) in memory when it fits the profile and a quarter of
    the free memory, else memory-mapped."""
    if config.cache != "auto":
        return config.cache
    import psutil

    if fits_in_memory is False or nbytes > 0.25 * psutil.virtual_memory().available:
        return "mmap"
    return "memory"


def _job_identity(
    package: DevicePackage,
    ids: np.ndarray,
    mask: np.ndarray,
    y: np.ndarray,
    splits: tuple[np.ndarray, ...],
    config: PersonalizeConfig,
) -> dict[str, Any]:
    """Everything that decides the result; an unfinished job resumes only under the same identity."""
    raw = y.astype(np.int64).tobytes() + b"".join(b"|" + s.astype(np.int64).tobytes() for s in splits)
    settings = {k: v for k, v in asdict(config).items() if k not in ("progress", "cache", "cache_batch_size")}
    identity = {
        "package": identity_digest(package_identity(package)),
        "data": data_digest(ids, mask),
        "labels": hashlib.sha256(raw).hexdigest(),
        "settings": settings,
    }
    return json.loads(json.dumps(identity))


def work_dir(out: Path) -> Path:
    """Where an unfinished job keeps its checkpoints and cache: a hidden sibling of ``out``."""
    return out.parent / f".{out.name}.partial"


def _open_work(work: Path, identity: dict[str, Any]) -> bool:
    """Prepare the work directory; returns whether it holds a checkpoint of this very job (a resume)."""
    job = work / "job.json"
    if work.exists():
        try:
            same = json.loads(job.read_text()) == identity
        except (OSError, ValueError):
            same = False
        if not same:
            shutil.rmtree(work)  # an interrupted job of other inputs: its checkpoints cannot be resumed
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_json(job, identity)
    return any(work.glob("checkpoint*/state.json"))


@dataclass
class _Plan:
    """One candidate configuration, resolved and priced."""

    name: str
    kind: str  # "train" | "prior"
    cut: int
    config: PersonalizeConfig  # the job's settings with this candidate's cut, tuner and learning rates
    tuner: Tuner | None
    estimate: CutCost
    checkpoint: str


@dataclass
class _Job:
    """A checked, priced job, ready to run."""

    dataset: TextDataset
    y: np.ndarray
    ids: np.ndarray
    mask: np.ndarray
    train_idx: np.ndarray
    val_idx: np.ndarray
    guard_idx: np.ndarray
    cut: int  # the lowest cut any candidate trains above: the cache holds h_cut
    plans: list[_Plan]
    skipped: list[dict[str, Any]]
    cache: str
    estimate: CutCost  # the whole job's: the most expensive candidate's, with the summed device seconds


def _candidate_config(package: DevicePackage, config: PersonalizeConfig, spec: dict[str, Any]) -> PersonalizeConfig:
    cut = spec.get("cut", "plan")
    cut = package.num_layers if cut == "head" else (config.cut if cut == "plan" else int(cut))
    changes: dict[str, Any] = {"cut": cut, "select": False}
    for key in ("tuner", "tuner_params", "lr", "head_lr"):
        if key in spec:
            changes[key] = spec[key]
    if cut == package.num_layers and "tuner" not in spec:
        changes.update(tuner="full", tuner_params={})  # nothing but the head: no adapters
    return replace(config, **changes)


def _prepare(
    package: DevicePackage, data: str | Path | TextDataset, config: PersonalizeConfig, profile: DeviceProfile | None
) -> _Job:
    """Steps 1-2 of the module docstring: read, tokenize, split, price, refuse (or drop) what does not fit."""
    dataset = read_user_data(package, data, config)
    y = dataset.encoded_labels(LabelMap(tuple(package.labels)))
    ids, mask = package.encode(dataset.texts)
    rest, guard_idx = guard_split(y, config.guard_fraction, config.seed)
    inner_train, inner_val = validation_split(y[rest], config.val_fraction, config.seed)
    train_idx, val_idx = rest[inner_train], rest[inner_val]
    width = ids.shape[1]
    gflops = profile.gflops if profile is not None else None
    specs = (config.candidates or DEFAULT_CANDIDATES) if config.select else ({"name": "configured"},)
    top = package.top_model().eval()

    plans: list[_Plan] = []
    trunk_seconds: dict[int, float] = {}
    for spec in specs:
        plan, trunk = _price_candidate(package, config, spec, top, (len(ids), width), gflops)
        plans.append(plan)
        trunk_seconds[plan.cut] = trunk
    cut = min(p.cut for p in plans)
    fits = None if profile is None else max(p.estimate.train_memory_mb for p in plans) <= profile.memory_mb
    place = _cache_place(config, len(ids) * width * package.hidden_size * np.dtype(config.cache_dtype).itemsize, fits)
    skipped: list[dict[str, Any]] = []
    if not config.select:
        plan = plans[0]
        arch, cost, tuner_cost, plan.estimate = estimate_job(
            package, top.above(plan.cut), plan.tuner, plan.cut, len(ids), width, config, place == "memory", gflops
        )
        if profile is not None:
            check_job(profile, arch, cost, plan.cut, tuner_cost)
    elif profile is not None:
        skipped = _fit_profile(plans, profile, trunk_seconds)
        cut = min([p.cut for p in plans] or [package.num_layers])
    if not plans:
        raise TrainError("no candidate configuration fits the device profile")
    if config.select:  # the whole job's price: the trunk once (up to the highest cut) + every candidate's training
        main = max(plans, key=lambda p: p.estimate.train_memory_mb)
        seconds = max(trunk_seconds[p.cut] for p in plans) + sum(p.estimate.device_seconds for p in plans)
        estimate = replace(main.estimate, device_seconds=seconds)
    else:
        estimate = plans[0].estimate
    return _Job(dataset, y, ids, mask, train_idx, val_idx, guard_idx, cut, plans, skipped, place, estimate)


def _price_candidate(
    package: DevicePackage,
    config: PersonalizeConfig,
    spec: dict[str, Any],
    top: TopModel,
    shape: tuple[int, int],
    gflops: float | None,
) -> tuple[_Plan, float]:
    """One candidate's plan with its own price (its training: epochs x one epoch; the trunk runs once for the
    whole job), and the trunk's seconds up to its cut; impossible settings (LoRA layers below the cut) refused
    here, before any work."""
    kind = spec.get("kind", "train")
    cand = _candidate_config(package, config, spec) if config.select else config
    cut = resolve_cut(package, cand.cut) if kind == "train" else package.num_layers
    tuner = resolve_tuner(package.manifest["plan"], cand) if kind == "train" else get_tuner("full")
    trained = top.above(cut)
    examples, width = shape
    estimate = estimate_job(package, trained, tuner, cut, examples, width, cand, True, gflops)[3]
    one, two = (
        estimate_job(package, trained, tuner, cut, examples, width, replace(cand, epochs=e), True, gflops)[3]
        for e in (1, 2)
    )
    per_epoch = two.device_seconds - one.device_seconds
    estimate = replace(estimate, device_seconds=(0.0 if kind == "prior" else per_epoch * cand.epochs))
    if kind == "train":
        try:
            get_tuner(tuner.name, **tuner.to_dict()["params"]).prepare(package.top_model().above(cut))
        except ValueError as err:
            raise TrainError(f"tuner {tuner.name}: {err}") from None
    name = spec["name"]
    checkpoint = "checkpoint" if not config.select else f"checkpoint-{name}"
    plan = _Plan(name, kind, cut, cand, tuner if kind == "train" else None, estimate, checkpoint)
    return plan, one.device_seconds - per_epoch


def _fit_profile(plans: list[_Plan], profile: DeviceProfile, trunk_seconds: dict[int, float]) -> list[dict[str, Any]]:
    """Drop (in place) the candidates that do not fit the profile's memory, then the most expensive until the job
    fits its time budget; returns what was dropped and why."""
    skipped = []
    for plan in list(plans):
        if plan.kind == "train" and plan.estimate.train_memory_mb > profile.memory_mb:
            plans.remove(plan)
            skipped.append({"name": plan.name, "reason": f"needs ~{plan.estimate.train_memory_mb:.0f} MB"})

    def total(plans: list[_Plan]) -> float:  # the trunk once (up to the highest cut) + every candidate
        return max((trunk_seconds[p.cut] for p in plans), default=0.0) + sum(p.estimate.device_seconds for p in plans)

    while total(plans) > profile.time_budget_s and any(p.kind == "train" for p in plans):
        costly = max((p for p in plans if p.kind == "train"), key=lambda p: p.estimate.device_seconds)
        plans.remove(costly)
        skipped.append(
            {"name": costly.name, "reason": f"over the time budget (~{costly.estimate.device_seconds:.0f} s)"}
        )
    return skipped


def _cache_features(
    package: DevicePackage, job: _Job, work: Path, package_digest: str, config: PersonalizeConfig, threads: int | None
) -> tuple[dict[str, FeatureCache | None], dict[str, float]]:
    """Step 3: the trunk once over the train, validation and guard examples (onnxruntime, then the frozen top
    blocks below the job's cut in torch); memory-mapped caches in ``work`` are reused by a resumed job.
    Returns the caches and the seconds each took."""
    top = package.top_model().eval()

    def trunk(ids_t: torch.Tensor, mask_t: torch.Tensor) -> torch.Tensor:
        hidden = package.run_trunk(ids_t.numpy(), mask_t.numpy(), config.precision, threads)
        return top.hidden_at(torch.from_numpy(hidden), mask_t, job.cut)

    caches: dict[str, FeatureCache | None] = {}
    seconds: dict[str, float] = {}
    for name, idx in (("train", job.train_idx), ("val", job.val_idx), ("guard", job.guard_idx)):
        t0 = time.perf_counter()
        if len(idx) == 0:
            caches[name] = None
            continue
        ids, mask = job.ids[idx], job.mask[idx]
        key = {"package": package_digest, "cut": job.cut, "precision": config.precision, "data": data_digest(ids, mask)}
        caches[name] = FeatureCache.reuse_or_build(
            trunk,
            ids,
            mask,
            key=key,
            path=work / f"features-{name}" if job.cache == "mmap" else None,
            batch_size=config.cache_batch_size,
            dtype=config.cache_dtype,
            progress=config.progress,
        )
        seconds[name] = time.perf_counter() - t0
    package.release_sessions()  # training needs only the cache
    assert caches["train"] is not None
    return caches, seconds


@torch.inference_mode()
@torch.inference_mode()
def _lift(cache: FeatureCache, top: TopModel, from_cut: int, to_cut: int, batch_size: int = 16) -> FeatureCache:
    """The cache of h_{to_cut} from one of h_{from_cut}: the (frozen, global) blocks in between, in memory."""
    if to_cut == from_cut:
        return cache
    top = top.above(from_cut)
    out = np.zeros(cache.features.shape, dtype=np.float32)
    for start in range(0, len(cache), batch_size):
        idx = np.arange(start, min(start + batch_size, len(cache)))
        hidden, mask = cache.batch(idx)
        out[idx, : hidden.shape[1]] = top.hidden_at(hidden, mask, to_cut).float().numpy()
    return FeatureCache(out, np.asarray(cache.mask), {**cache.key, "cut": to_cut})


@torch.inference_mode()
def _logits(top: TopModel, cache: FeatureCache | None, batch_size: int = 16) -> np.ndarray:
    """Logits of ``top`` (eval mode) on every example of ``cache``, in order; in batches of a training batch's
    size, so scoring never needs more memory than training (attention over 128 tokens: 64 texts at once held
    ~170 MB more than training did on MiniLM)."""
    if cache is None:
        return np.zeros((0, top.head.out_features), dtype=np.float32)
    modes = [(m, m.training) for m in top.modules()]
    top.eval()
    try:
        out = [top(*cache.batch(np.arange(s, min(s + batch_size, len(cache))))).float().numpy()
               for s in range(0, len(cache), batch_size)]  # fmt: skip
    finally:
        for m, training in modes:
            m.training = training
    return np.concatenate(out)


def _train_candidate(
    package: DevicePackage,
    plan: _Plan,
    caches: dict[str, FeatureCache | None],
    job: _Job,
    work: Path,
    package_digest: str,
    callbacks: Sequence[Callable[[StepEvent], None]],
) -> tuple[Trained, TopModel]:
    """Train one candidate on the cache at its cut; returns its tensors and the trained top (adapters unmerged)."""
    t0 = time.perf_counter()
    top = package.top_model().eval()
    trained = top.above(plan.cut)
    seed_all(plan.config.seed)  # adapters are initialized from the seed
    assert plan.tuner is not None
    tuner = get_tuner(plan.tuner.name, **plan.tuner.to_dict()["params"])
    try:
        tuner.prepare(trained)
    except ValueError as err:  # e.g. LoRA layers below the device's cut
        raise TrainError(f"tuner {tuner.name}: {err}") from None
    train, val = caches["train"], caches["val"]
    assert train is not None
    train_config = plan.config.train_config(validating=val is not None)
    trainer = TopTrainer(
        trained,
        tuner,
        LabelMap(tuple(package.labels)),
        train_config,
        checkpoint_dir=work / plan.checkpoint,
        callbacks=callbacks,
        model_hash=package_digest,
        cut=plan.cut,
    )
    val_labels = job.y[job.val_idx] if val is not None else None
    fit = trainer.fit_sources(train, job.y[job.train_idx], val, val_labels)
    state = fit.state
    best = next((h for h in state.history if h["epoch"] == state.best_epoch), None)
    result = Trained(
        name=plan.name,
        tensors=fit.delta,
        train_cut=plan.cut,
        tuner=tuner.to_dict(),
        history=state.history,
        best_epoch=state.best_epoch,
        stopped_early=state.stopped_early,
        trainable_params=fit.trainable_params,
        val_accuracy=float(best["val_accuracy"]) if best is not None else None,
        estimate=plan.estimate,
        seconds=time.perf_counter() - t0,
    )
    return result, trained


def _prior_candidate(package: DevicePackage, plan: _Plan, logits: dict[str, np.ndarray], job: _Job) -> Trained:
    """The global head with its bias fitted to the user's label prior (:func:`device_sim.guard.prior_shift`)."""
    t0 = time.perf_counter()
    delta = prior_shift(logits["train"], job.y[job.train_idx])
    top = package.top_model().eval()
    head_only = top.above(package.num_layers)
    tuner = get_tuner("full")
    tuner.prepare(head_only)
    with torch.no_grad():
        head_only.head.bias += torch.from_numpy(delta).to(head_only.head.bias.dtype)
    val_acc = None
    if len(job.val_idx):
        val_acc = float(((logits["val"] + delta).argmax(axis=1) == job.y[job.val_idx]).mean())
    return Trained(
        name=plan.name,
        tensors=tuner.delta_state(head_only),
        train_cut=package.num_layers,
        tuner={**tuner.to_dict(), "prior_shift": [float(d) for d in delta]},
        trainable_params=int(len(delta)),
        val_accuracy=val_acc,
        estimate=plan.estimate,
        seconds=time.perf_counter() - t0,
    )


def _run_candidates(
    package: DevicePackage,
    job: _Job,
    caches: dict[str, FeatureCache | None],
    work: Path,
    package_digest: str,
    callbacks: Sequence[Callable[[StepEvent], None]],
) -> tuple[list[tuple[Trained, Callable[[], np.ndarray]]], dict[str, np.ndarray], TopModel]:
    """Step 4: every candidate trained (the prior: fitted) at its own cut, each with a function that scores it on
    the guard split; also the global top's logits (train, validation) and the global top itself."""
    global_top = package.top_model().eval()
    lifted: dict[int, dict[str, FeatureCache | None]] = {job.cut: caches}

    def at(cut: int) -> dict[str, FeatureCache | None]:  # the caches lifted to a higher cut, once per cut
        if cut not in lifted:
            lifted[cut] = {k: None if c is None else _lift(c, global_top, job.cut, cut) for k, c in caches.items()}
        return lifted[cut]

    global_logits = {k: _logits(global_top.above(job.cut), c) for k, c in caches.items() if k != "guard"}
    candidates: list[tuple[Trained, Callable[[], np.ndarray]]] = []
    for plan in job.plans:
        if plan.kind == "prior":
            cand = _prior_candidate(package, plan, global_logits, job)
            shift = np.asarray(cand.tuner["prior_shift"])
            candidates.append((cand, lambda shift=shift: _logits(global_top.above(job.cut), caches["guard"]) + shift))
            continue
        cand, top = _train_candidate(package, plan, at(plan.cut), job, work, package_digest, callbacks)
        candidates.append((cand, lambda top=top, cut=plan.cut: _logits(top, at(cut)["guard"])))
    return candidates, global_logits, global_top


def personalize(
    package: DevicePackage,
    data: str | Path | TextDataset,
    out: str | Path,
    config: PersonalizeConfig | None = None,
    profile: DeviceProfile | None = None,
    threads: int | None = None,
    callbacks: Sequence[Callable[[StepEvent], None]] = (),
) -> PersonalizeResult:
    """Personalize ``package`` on ``data`` and write the personal state to ``out`` (see the module docstring).

    ``profile`` bounds the job (refused before any work when the cost model says it will not fit, or, with
    ``config.select``, its candidates trimmed to fit) and sets the thread count unless ``threads`` is given.
    ``callbacks`` run after every optimizer step.
    """
    config = config or PersonalizeConfig()
    start = time.perf_counter()
    out = Path(out)
    check_writable(out)
    threads = threads if threads is not None else (profile.threads if profile is not None else None)
    with torch_threads(threads):
        job = _prepare(package, data, config, profile)
        prepared = time.perf_counter()
        work = work_dir(out)
        identity = _job_identity(package, job.ids, job.mask, job.y, (job.val_idx, job.guard_idx), config)
        resumed = _open_work(work, identity)
        caches, cache_seconds = _cache_features(package, job, work, identity["package"], config, threads)
        cached = time.perf_counter()

        candidates, global_logits, global_top = _run_candidates(
            package, job, caches, work, identity["package"], callbacks
        )
        trained_at = time.perf_counter()
        global_val = None
        if len(job.val_idx):
            global_val = float((global_logits["val"].argmax(axis=1) == job.y[job.val_idx]).mean())
        chosen, chosen_guard_logits = candidates[choose([c for c, _ in candidates])]
        guard_start = time.perf_counter()
        guard_logits = None
        if config.guard_fraction > 0 and caches["guard"] is not None:
            guard_logits = (_logits(global_top.above(job.cut), caches["guard"]), chosen_guard_logits())
        keep, reason, guard = verdict(config, chosen, global_val, job.y[job.guard_idx], guard_logits)
        guard_seconds = time.perf_counter() - guard_start + cache_seconds.get("guard", 0.0)

        seconds = {
            "prepare": prepared - start,
            "trunk": cached - prepared,
            "train": trained_at - cached,
            "guard": guard_seconds,
        }
        selection = selection_record([c for c, _ in candidates], chosen, global_val, job.skipped)
        guard_entry = guard_record(config, keep, reason, guard, chosen, guard_seconds)
        training = training_record(job, chosen, config, profile, resumed, seconds)
        writing = time.perf_counter()
        extra = {"guard": guard_entry, "selection": selection}
        write_outcome(out, package, chosen, keep, training, extra)
        shutil.rmtree(work, ignore_errors=True)
    seconds["write"] = time.perf_counter() - writing
    seconds["total"] = time.perf_counter() - start
    trained = [c for c, _ in candidates]
    return result_of(out, job, chosen, keep, package.cut, guard, selection, trained, resumed, seconds)
