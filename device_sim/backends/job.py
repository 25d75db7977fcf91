"""The part of a personalization job that every ExecuTorch backend shares, torch-free.

Read and check the user's data, tokenize it, hold out the guard split and the
inner validation split (:mod:`device_sim.split`, the torch backend's), plan the
candidate configurations the exported program can train
(:func:`plan_candidates`: the full top or the head alone; LoRA and other cuts
need the torch backend and are listed as skipped), price the job with the cost
model (:mod:`edgetune.costs`) against the device profile, run the ONNX trunk
once into feature arrays (in memory or memory-mapped files); then
:func:`run_candidates` trains each candidate with the backend's loop, picks
one and applies the do-no-harm guard (:mod:`device_sim.selection`, the torch
backend's rules), scoring tops on cached features with the package's ONNX top, and
writes the personal state. Only numpy, tokenizers, onnxruntime and safetensors
are imported here; the torch backend's loop lives in :mod:`device_sim.personalize`.

The epoch order (:func:`epoch_order`), the batch width (longest example), the
AdamW groups (:func:`param_settings`) and the schedule
(:func:`lr_factor`) are the torch backend's, so the three backends train the
same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from device_sim.guard import prior_shift
from device_sim.personal import check_writable
from device_sim.profiles import DeviceProfile, check_job
from device_sim.runtime import OnnxTop
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
from device_sim.settings import DEFAULT_CANDIDATES, PersonalizeConfig
from device_sim.split import guard_split, validation_split
from edgetune.costs import ArchSummary, CostConfig, CutCost, TunerCost, estimate_cut
from edgetune.data import DataError, LabelMap, TextDataset, load_dataset
from edgetune.errors import EdgetuneError
from edgetune.learning_rates import linear_warmup_factor
from edgetune.metrics import METRICS, classification_metrics

if TYPE_CHECKING:
    from device_sim.package import DevicePackage


class BackendError(EdgetuneError, ValueError):
    """An ExecuTorch backend cannot run this job (package without the program, unsupported setting, failed run)."""


@dataclass
class Prepared:
    """A checked, priced job with its trunk features."""

    dataset: TextDataset
    y: np.ndarray
    train_idx: np.ndarray
    val_idx: np.ndarray
    guard_idx: np.ndarray
    cut: int
    estimate: CutCost
    train: tuple[Any, np.ndarray]  # features (n, S, d) float32 (or the raw file holding them), mask (n, S) uint8
    val: tuple[Any, np.ndarray] | None
    guard: tuple[Any, np.ndarray] | None
    cache: str
    program: dict[str, Any]  # the manifest's executorch entry
    seconds: dict[str, float] = field(default_factory=dict)
    hidden_size: int = 0


def read_user_data(package: DevicePackage, data: str | Path | TextDataset, settings: PersonalizeConfig) -> TextDataset:
    """The user's labelled texts; a label the package does not know is a DataError naming its row."""
    plan = package.manifest["plan"]
    if isinstance(data, TextDataset):
        dataset = data
    else:
        text_column = settings.text_column or plan.get("text_column", "text")
        dataset = load_dataset(data, text_column, settings.label_column or plan.get("label_column", "label"))
    if len(dataset) == 0:
        raise DataError(f"{dataset.source}: no examples")
    dataset.encoded_labels(LabelMap(tuple(package.labels)))
    return dataset


def program_entry(package: DevicePackage, backend: str) -> dict[str, Any]:
    entry = package.manifest.get("executorch")
    if not entry:
        raise BackendError(
            f"{package.path}: exported without the executorch target (no top_train.pte); re-export with "
            f"`edgetune export ... --target executorch` to train with --trainer {backend}"
        )
    return entry


@dataclass
class Candidate:
    """One configuration a light job trains (or, ``kind="prior"``, computes): the program always trains the
    exported top; a head-only candidate leaves the blocks at learning rate 0 (they still run, frozen)."""

    name: str
    kind: str  # "train" | "prior"
    head_only: bool
    settings: PersonalizeConfig


def _check_batch(settings: PersonalizeConfig, program: dict[str, Any], backend: str) -> None:
    if settings.batch_size > int(program["max_batch"]):
        raise BackendError(
            f"batch size {settings.batch_size} > {program['max_batch']}, the largest batch top_train.pte was exported "
            "for; lower --batch-size or re-export with a larger --executorch-max-batch"
        )
    if settings.cache_dtype != "float32":
        raise BackendError(f"--trainer {backend} reads float32 features (cache dtype {settings.cache_dtype!r})")


def plan_candidates(
    package: DevicePackage, settings: PersonalizeConfig, program: dict[str, Any], backend: str
) -> tuple[list[Candidate], list[dict[str, Any]]]:
    """The candidates this backend can train, and those it cannot (with why). Without ``settings.select`` the one
    configured job, refused before any work when the exported program cannot train it."""
    _check_batch(settings, program, backend)
    plan_tuner = package.manifest["plan"].get("tuner", "full")
    if not settings.select:
        tuner = settings.tuner or plan_tuner
        if tuner != "full":
            raise BackendError(
                f"--trainer {backend} trains the full top (tuner 'full'); tuner {tuner!r} needs --trainer torch"
            )
        cut = package.cut if settings.cut is None else settings.cut
        if cut not in (package.cut, package.num_layers):
            raise BackendError(
                f"--trainer {backend} trains the exported top (above cut {package.cut}) or its head alone "
                f"(--cut {package.num_layers}); --cut {cut} needs --trainer torch"
            )
        return [Candidate("configured", "train", cut == package.num_layers, settings)], []
    candidates, skipped = [], []
    for spec in settings.candidates or DEFAULT_CANDIDATES:
        if spec.get("kind", "train") == "prior":
            candidates.append(Candidate(spec["name"], "prior", True, settings))
            continue
        tuner = spec.get("tuner") or settings.tuner or plan_tuner
        where = spec.get("cut", "plan")
        cut = package.num_layers if where == "head" else (settings.cut if where == "plan" else where)
        cut = package.cut if cut is None else int(cut)
        if tuner != "full" and cut != package.num_layers:
            skipped.append({"name": spec["name"], "reason": f"tuner {tuner!r} needs --trainer torch"})
            continue
        if cut not in (package.cut, package.num_layers):
            skipped.append({"name": spec["name"], "reason": f"cut {cut} needs --trainer torch"})
            continue
        rates = {k: spec[k] for k in ("lr", "head_lr") if k in spec}
        candidates.append(Candidate(spec["name"], "train", cut == package.num_layers, replace(settings, **rates)))
    return candidates, skipped


def estimate_job(package: DevicePackage, settings: PersonalizeConfig, num: int, width: int, in_memory: bool) -> tuple:
    """The cost model's price of this job: the plan's architecture, the user's data, the full tuner."""
    arch = ArchSummary.from_dict(package.manifest["plan"]["arch"])
    cost = CostConfig(
        seq_len=width,
        batch_size=settings.batch_size,
        num_examples=num,
        epochs=settings.epochs,
        cached=True,
        cache_in_memory=in_memory,
        feature_bytes=4,
    )
    return arch, cost


def length_sorted_batches(mask: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Index batches of similar length (the torch backend's feature cache runs the trunk in the same batches)."""
    order = np.argsort(mask.sum(axis=1), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def batch_width(mask: np.ndarray) -> int:
    """Columns up to the last real token of any row."""
    used = np.flatnonzero(mask.any(axis=0))
    return int(used[-1]) + 1 if used.size else 1


def run_trunk(
    package: DevicePackage,
    ids: np.ndarray,
    mask: np.ndarray,
    settings: PersonalizeConfig,
    threads: int | None,
    file: Path | None = None,
) -> tuple[np.ndarray | Path, np.ndarray]:
    """The ONNX trunk once over ``ids``: features ``(n, S, d)`` float32 (padding zeroed) and the mask (uint8).

    ``file``: write the features as raw float32 rows to this file instead of keeping them (the C++ trainer reads
    them; the rows go through the page cache, not this process's memory); it is returned in their place.
    """
    import os

    from edgetune.progress import progress_bar

    n, width = ids.shape
    d = package.hidden_size
    mask8 = mask.astype(np.uint8)
    out = np.zeros((n, width, d), np.float32) if file is None else None
    fd = None
    if file is not None:
        fd = os.open(file, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.ftruncate(fd, n * width * d * 4)  # a sparse file of zeros: padding columns stay 0
    try:
        with progress_bar("caching trunk features", total=n, enabled=settings.progress) as advance:
            for idx in length_sorted_batches(mask8, settings.cache_batch_size):
                w = batch_width(mask8[idx])
                hidden = package.run_trunk(ids[idx, :w], mask[idx, :w].astype(np.int64), settings.precision, threads)
                hidden = hidden * mask8[idx, :w, None].astype(np.float32)
                if out is not None:
                    out[idx, :w] = hidden
                else:
                    for row, i in zip(hidden, idx):
                        os.pwrite(fd, np.ascontiguousarray(row, np.float32).tobytes(), int(i) * width * d * 4)
                advance(len(idx))
    finally:
        if fd is not None:
            os.close(fd)
    return (out if out is not None else Path(file)), mask8


def _price(
    package: DevicePackage,
    settings: PersonalizeConfig,
    candidates: list[Candidate],
    skipped: list[dict[str, Any]],
    profile: DeviceProfile | None,
    num: int,
    width: int,
    in_memory: bool,
) -> tuple[CutCost, list[Candidate]]:
    """The job's price (the trunk once + every trained candidate; each trains the same program) and the
    candidates that fit the profile: a job that cannot fit even one is refused, as on the torch backend."""
    arch, cost = estimate_job(package, settings, num, width, in_memory)
    if profile is not None:
        cost = replace(cost, device_gflops=profile.gflops)
        check_job(profile, arch, cost, package.cut, TunerCost())
    one, two = (estimate_cut(arch, replace(cost, epochs=e), package.cut, TunerCost()) for e in (1, 2))
    per_epoch = two.device_seconds - one.device_seconds
    trunk = one.device_seconds - per_epoch
    kept = list(candidates)
    if profile is not None and settings.select:
        while (
            sum(c.kind == "train" for c in kept) > 1
            and trunk + per_epoch * settings.epochs * sum(c.kind == "train" for c in kept) > profile.time_budget_s
        ):
            last = max(i for i, c in enumerate(kept) if c.kind == "train")
            skipped.append({"name": kept[last].name, "reason": "over the time budget"})
            del kept[last]
    trained = sum(c.kind == "train" for c in kept)
    estimate = estimate_cut(arch, cost, package.cut, TunerCost())
    return replace(estimate, device_seconds=trunk + per_epoch * settings.epochs * trained), kept


def prepare(
    package: DevicePackage,
    data: str | Path | TextDataset,
    settings: PersonalizeConfig,
    profile: DeviceProfile | None,
    threads: int | None,
    backend: str,
    work: Path | None = None,
) -> tuple[Prepared, list[Candidate], list[dict[str, Any]]]:
    """Read, tokenize, split (guard split, then the inner validation split of the rest, as the torch backend),
    plan and price the candidates and refuse what does not fit; then the trunk once (features in memory, or raw
    float32 files in ``work`` for a trainer in another process)."""
    start = time.perf_counter()
    program = program_entry(package, backend)
    candidates, skipped = plan_candidates(package, settings, program, backend)
    dataset = read_user_data(package, data, settings)
    y = dataset.encoded_labels(LabelMap(tuple(package.labels)))
    ids, mask = package.encode(dataset.texts)
    rest, guard_idx = guard_split(y, settings.guard_fraction, settings.seed)
    inner_train, inner_val = validation_split(y[rest], settings.val_fraction, settings.seed)
    train_idx, val_idx = rest[inner_train], rest[inner_val]
    in_memory = work is None
    estimate, candidates = _price(package, settings, candidates, skipped, profile, len(ids), ids.shape[1], in_memory)
    prepared = time.perf_counter()
    features: dict[str, Any] = {}
    for name, idx in (("train", train_idx), ("val", val_idx), ("guard", guard_idx)):
        file = None if work is None else work / f"{name}.f32"
        features[name] = run_trunk(package, ids[idx], mask[idx], settings, threads, file) if len(idx) else None
    package.release_sessions()  # training needs only the features: the trunk's memory goes back to the OS
    seconds = {"prepare": prepared - start, "trunk": time.perf_counter() - prepared}
    place = "memory" if in_memory else "mmap"
    job = Prepared(
        dataset, y, train_idx, val_idx, guard_idx, package.cut, estimate, features["train"], features["val"],
        features["guard"], place, program, seconds, package.hidden_size,
    )  # fmt: skip
    return job, candidates, skipped


def features_array(features: Any, mask: np.ndarray, hidden: int) -> np.ndarray:
    """Features kept in memory, or those a raw float32 file holds (memory-mapped)."""
    if isinstance(features, np.ndarray):
        return features
    return np.memmap(features, np.float32, "r", shape=(*mask.shape, hidden))


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The examples' order in an epoch: the torch backend's ``EpochSampler`` permutation."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def param_settings(
    program: dict[str, Any], settings: PersonalizeConfig, head_only: bool = False
) -> list[tuple[str, float, float, list[int]]]:
    """``(name, lr, weight_decay, shape)`` per trained tensor in program order: the head and final norm at
    ``head_lr``, no weight decay on biases and norm weights (the torch backend's AdamW groups); ``head_only``:
    the blocks at learning rate 0 (AdamW leaves them exactly as they are)."""
    head_lr = settings.head_lr if settings.head_lr is not None else settings.lr
    out = []
    for p in program["train"]["parameters"]:
        name, shape = p["name"], list(p["shape"])
        lr = head_lr if is_head(name) else (0.0 if head_only else settings.lr)
        out.append((name, float(lr), settings.weight_decay if len(shape) >= 2 else 0.0, shape))
    return out


def schedule(num_train: int, settings: PersonalizeConfig) -> tuple[int, int]:
    """``(warmup_steps, total_steps)`` of the linear warm-up and decay."""
    total = -(-num_train // settings.batch_size) * settings.epochs
    return int(settings.warmup_ratio * total), total


def lr_factor(step: int, warmup: int, total: int) -> float:
    """The learning-rate multiplier at ``step`` (the torch backend's schedule)."""
    return linear_warmup_factor(step, warmup, total)


def metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Accuracy and macro-F1 (:func:`edgetune.metrics.classification_metrics`)."""
    scores = classification_metrics(
        y_true, y_pred, [str(c) for c in range(int(max(np.max(y_true), np.max(y_pred))) + 1)]
    )
    return {k: scores[k] for k in METRICS}


def is_head(name: str) -> bool:
    """The head and the final norm: what a head-only candidate trains."""
    return name.startswith(("head.", "norm."))


class OnnxLogits:
    """The top's logits on cached features through the package's ONNX top (tensors as inputs), torch-free: the
    global top (the package's tensors) or a candidate's (its tensors in their place)."""

    def __init__(self, package: DevicePackage, threads: int | None) -> None:
        self.session = package.top_session(threads)
        self.weights = package.top_tensors()

    def __call__(
        self, features: Any, mask: np.ndarray, hidden: int, tensors: dict[str, np.ndarray] | None = None
    ) -> np.ndarray:
        top = OnnxTop(self.session, {**self.weights, **(tensors or {})})
        x = features_array(features, mask, hidden)
        out = np.zeros((len(mask), len(self.weights["head.bias"])), np.float32)
        for idx in length_sorted_batches(mask, 32):
            w = max(batch_width(mask[idx]), 2)
            out[idx] = top(x[idx, :w], mask[idx, :w])
        return out


Trainer = Callable[[Candidate], tuple[dict[str, np.ndarray], list[dict[str, Any]], int | None, bool, list[float]]]


def run_candidates(
    package: DevicePackage,
    out: Path,
    job: Prepared,
    candidates: list[Candidate],
    skipped: list[dict[str, Any]],
    train: Trainer,
    settings: PersonalizeConfig,
    profile: DeviceProfile | None,
    threads: int | None,
    backend: str,
) -> PersonalizeResult:
    """Train every candidate (``train``: the backend's loop, returning every tensor the program trains), pick
    one, judge it against the global top, write the personal state (the torch backend's format and records;
    ``training.backend`` says which backend trained). Returns what the torch backend returns."""
    t_train = time.perf_counter()
    logits = OnnxLogits(package, threads)
    d = job.hidden_size
    wanted = [("val", job.val)] + ([("train", job.train)] if any(c.kind == "prior" for c in candidates) else [])
    global_logits = {name: logits(f[0], f[1], d) for name, f in wanted if f is not None}
    weights = logits.weights
    del logits
    package.release_sessions()  # the training runs without the ONNX top's session beside it
    trained: list[Trained] = []
    step_losses: dict[str, list[float]] = {}
    for cand in candidates:
        t0 = time.perf_counter()
        if cand.kind == "prior":
            delta = prior_shift(global_logits["train"], job.y[job.train_idx])
            bias = weights["head.bias"] + delta.astype(np.float32)
            val_acc = None
            if "val" in global_logits:
                val_acc = float(((global_logits["val"] + delta).argmax(axis=1) == job.y[job.val_idx]).mean())
            trained.append(Trained(
                cand.name, {"head.weight": weights["head.weight"], "head.bias": bias}, package.num_layers,
                {"name": "full", "params": {}, "prior_shift": [float(x) for x in delta]}, trainable_params=len(delta),
                val_accuracy=val_acc, estimate=job.estimate, seconds=time.perf_counter() - t0,
            ))  # fmt: skip
            continue
        tensors, history, best_epoch, stopped, losses = train(cand)
        if cand.head_only:
            tensors = {k: v for k, v in tensors.items() if is_head(k)}
        best = next((h for h in history if h["epoch"] == best_epoch), None)
        trained.append(Trained(
            cand.name, tensors, package.num_layers if cand.head_only else job.cut, {"name": "full", "params": {}},
            history, best_epoch, stopped, int(sum(int(np.prod(t.shape)) for t in tensors.values())),
            float(best["val_accuracy"]) if best is not None else None, job.estimate, time.perf_counter() - t0,
        ))  # fmt: skip
        step_losses[cand.name] = losses
    trained_at = time.perf_counter()
    chosen = trained[choose(trained)]
    global_val = None
    if "val" in global_logits:
        global_val = float((global_logits["val"].argmax(axis=1) == job.y[job.val_idx]).mean())
    guard_logits = None
    if settings.guard_fraction > 0 and job.guard is not None:
        features, mask = job.guard
        tensors = {k: np.asarray(v, np.float32) for k, v in chosen.tensors.items()}
        logits = OnnxLogits(package, threads)
        guard_logits = (logits(features, mask, d), logits(features, mask, d, tensors))
    keep, reason, guard = verdict(settings, chosen, global_val, job.y[job.guard_idx], guard_logits)
    seconds = {**job.seconds, "train": trained_at - t_train, "guard": time.perf_counter() - trained_at}
    training = training_record(job, chosen, settings, profile, False, seconds)
    training.update(backend=backend, step_losses=[float(x) for x in step_losses.get(chosen.name, [])])
    selection = selection_record(trained, chosen, global_val, skipped)
    extra = {"guard": guard_record(settings, keep, reason, guard, chosen, seconds["guard"]), "selection": selection}
    write_outcome(out, package, chosen, keep, training, extra)
    losses = [float(x) for x in step_losses.get(chosen.name, [])]
    return result_of(out, job, chosen, keep, package.cut, guard, selection, trained, False, seconds, losses)


def start_output(out: str | Path) -> Path:
    out = Path(out)
    check_writable(out)
    return out


def begin(
    out: str | Path, config: PersonalizeConfig | None, profile: DeviceProfile | None, threads: int | None
) -> tuple[Path, PersonalizeConfig, int | None]:
    """A backend job's checked inputs, before any work: the output (refused if it cannot be written), the
    settings (the defaults when none are given) and the thread count (the profile's when none is given)."""
    if threads is None and profile is not None:
        threads = profile.threads
    return start_output(out), config or PersonalizeConfig(), threads
