"""On-device personalization: train the top of a package on one user's labelled texts.

The job, in the order it runs (everything that can be wrong with the input is
found before anything is computed or written):

1. read the user's data (labels must be the package's), tokenize it with the
   package's tokenizer, hold out a small stratified validation split;
2. price the job with the cost model and refuse one that does not fit the
   device profile, naming the lowest higher cut that would
   (:mod:`device_sim.profiles`);
3. run the trunk once with onnxruntime (plus, when the device trains above a
   higher cut than the package's, the frozen top blocks below it in torch) and
   cache the output, in memory or memory-mapped (:class:`~edgetune.features.FeatureCache`);
4. train the blocks above the cut and the head with torch, with the package
   plan's tuner (full or LoRA), on the cache: the server's training loop
   (:class:`~edgetune.train.TopTrainer`: AdamW, warm-up, early stopping on
   the validation split, the best epoch kept, atomic checkpoints);
5. write the personal state (:mod:`device_sim.personal`) in one atomic step.

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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from device_sim.personal import check_writable, identity_digest, package_identity, write_personal_state
from device_sim.profiles import DeviceProfile, check_job
from device_sim.split import MIN_VALIDATION, validation_split  # noqa: F401 (re-exported)
from edgetune.costs import ArchSummary, CostConfig, CutCost, TunerCost, estimate_cut
from edgetune.data import DataError, LabelMap, TextDataset, load_dataset
from edgetune.features import FeatureCache, data_digest
from edgetune.io import atomic_write_json
from edgetune.modeling import TopModel
from edgetune.train import StepEvent, TopFit, TopTrainer, TrainConfig, TrainError
from edgetune.tuners import Tuner, get_tuner
from exporters.package import DevicePackage

CACHE_PLACES = ("auto", "memory", "mmap")


@dataclass
class PersonalizeConfig:
    """How a device trains; the defaults suit a few hundred examples of one user on a phone-class CPU."""

    epochs: int = 8
    batch_size: int = 16
    lr: float = 1e-4  # trained blocks (or their adapters)
    head_lr: float | None = 3e-3  # head and final norm; None: lr
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_grad_norm: float | None = 1.0
    val_fraction: float = 0.15
    patience: int | None = 3
    metric: str = "accuracy"
    seed: int = 0
    cut: int | None = None  # train above this block; None: the package's cut; higher: train less
    tuner: str | None = None  # None: the plan's
    tuner_params: dict[str, Any] | None = None
    precision: str = "fp32"  # trunk used for the features: fp32 or int8 (when the package has it)
    cache: str = "auto"  # auto | memory | mmap
    cache_dtype: str = "float32"
    # Texts per trunk call: the trunk's activations, not its weights, set the job's peak memory (MiniLM,
    # 128 tokens, 200 texts: peak RSS 944 MB at 32, 783 MB at 8, same trunk time on 2 cores).
    cache_batch_size: int = 8
    checkpoint_steps: int | None = None  # also checkpoint every N steps (always at each epoch's end)
    text_column: str | None = None  # None: the plan's
    label_column: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.cache not in CACHE_PLACES:
            raise ValueError(f"cache must be one of {CACHE_PLACES}, got {self.cache!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        self.train_config(validating=self.val_fraction > 0)  # the trainer's own checks

    def train_config(self, validating: bool) -> TrainConfig:
        """The trainer's settings for this job (cached mode on the CPU; no patience without validation)."""
        return TrainConfig(
            mode="cached",
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            head_lr=self.head_lr,
            weight_decay=self.weight_decay,
            warmup_ratio=self.warmup_ratio,
            max_grad_norm=self.max_grad_norm,
            seed=self.seed,
            val_fraction=self.val_fraction if validating else 0.0,
            patience=self.patience if validating else None,
            metric=self.metric,
            cache="memory" if self.cache == "auto" else self.cache,
            cache_dtype=self.cache_dtype,
            cache_batch_size=self.cache_batch_size,
            checkpoint_steps=self.checkpoint_steps,
            device="cpu",
            progress=self.progress,
        )


@dataclass
class PersonalizeResult:
    """What a personalization job did; ``manifest`` is the written ``personal.json``."""

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

    @property
    def val_metrics(self) -> dict[str, Any] | None:
        """Validation metrics of the epoch that was kept (``None`` without validation)."""
        return self.manifest["training"].get("val_metrics")


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
    val_idx: np.ndarray,
    cut: int,
    tuner: Tuner,
    config: PersonalizeConfig,
) -> dict[str, Any]:
    """Everything that decides the result; an unfinished job resumes only under the same identity."""
    labels = hashlib.sha256(y.astype(np.int64).tobytes() + b"|" + val_idx.astype(np.int64).tobytes()).hexdigest()
    settings = {k: v for k, v in asdict(config).items() if k not in ("progress", "cache", "cache_batch_size")}
    identity = {
        "package": identity_digest(package_identity(package)),
        "data": data_digest(ids, mask),
        "labels": labels,
        "cut": cut,
        "tuner": tuner.to_dict(),
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
    return (work / "checkpoint" / "state.json").is_file()


@dataclass
class _Job:
    """A checked, priced job, ready to run."""

    dataset: TextDataset
    y: np.ndarray
    ids: np.ndarray
    mask: np.ndarray
    train_idx: np.ndarray
    val_idx: np.ndarray
    cut: int
    top: TopModel
    trained: TopModel
    tuner: Tuner
    train_config: TrainConfig
    cache: str
    estimate: CutCost


def _prepare(
    package: DevicePackage, data: str | Path | TextDataset, config: PersonalizeConfig, profile: DeviceProfile | None
) -> _Job:
    """Steps 1-2 of the module docstring: read, tokenize, split, price, refuse what does not fit; then prepare
    the top for its tuner (adapters drawn from the seed; the trunk pass draws no random numbers)."""
    dataset = read_user_data(package, data, config)
    y = dataset.encoded_labels(LabelMap(tuple(package.labels)))
    cut = resolve_cut(package, config.cut)
    tuner = resolve_tuner(package.manifest["plan"], config)
    ids, mask = package.encode(dataset.texts)
    train_idx, val_idx = validation_split(y, config.val_fraction, config.seed)
    top = package.top_model().eval()
    trained = top.above(cut)
    width = ids.shape[1]
    gflops = profile.gflops if profile is not None else None

    def price(in_memory: bool) -> tuple[ArchSummary, CostConfig, TunerCost, CutCost]:
        return estimate_job(package, trained, tuner, cut, len(ids), width, config, in_memory, gflops)

    fits = None if profile is None else price(True)[3].train_memory_mb <= profile.memory_mb
    place = _cache_place(config, len(ids) * width * package.hidden_size * np.dtype(config.cache_dtype).itemsize, fits)
    arch, cost, tuner_cost, estimate = price(place == "memory")
    if profile is not None:
        check_job(profile, arch, cost, cut, tuner_cost)
    from accelerate.utils import set_seed

    set_seed(config.seed)  # adapters are initialized from the seed
    try:
        tuner.prepare(trained)
    except ValueError as err:  # e.g. LoRA layers below the device's cut
        raise TrainError(f"tuner {tuner.name}: {err}") from None
    train_config = config.train_config(validating=len(val_idx) > 0)
    return _Job(dataset, y, ids, mask, train_idx, val_idx, cut, top, trained, tuner, train_config, place, estimate)


def _cache_features(
    package: DevicePackage, job: _Job, work: Path, package_digest: str, config: PersonalizeConfig, threads: int | None
) -> tuple[FeatureCache, FeatureCache | None]:
    """Step 3: the trunk once over the train and validation examples (onnxruntime, then the frozen top blocks
    below the device's cut in torch); memory-mapped caches in ``work`` are reused by a resumed job."""

    def trunk(ids_t: torch.Tensor, mask_t: torch.Tensor) -> torch.Tensor:
        hidden = package.run_trunk(ids_t.numpy(), mask_t.numpy(), config.precision, threads)
        return job.top.hidden_at(torch.from_numpy(hidden), mask_t, job.cut)

    caches: list[FeatureCache | None] = []
    for name, idx in (("train", job.train_idx), ("val", job.val_idx)):
        if len(idx) == 0:
            caches.append(None)
            continue
        ids, mask = job.ids[idx], job.mask[idx]
        key = {"package": package_digest, "cut": job.cut, "precision": config.precision, "data": data_digest(ids, mask)}
        caches.append(
            FeatureCache.reuse_or_build(
                trunk,
                ids,
                mask,
                key=key,
                path=work / f"features-{name}" if job.cache == "mmap" else None,
                batch_size=config.cache_batch_size,
                dtype=config.cache_dtype,
                progress=config.progress,
            )
        )
    package.release_sessions()  # training needs only the cache
    train, val = caches
    assert train is not None
    return train, val


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

    ``profile`` bounds the job (refused before any work when the cost model says it will not fit) and sets
    the thread count unless ``threads`` is given. ``callbacks`` run after every optimizer step.
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
        identity = _job_identity(package, job.ids, job.mask, job.y, job.val_idx, job.cut, job.tuner, config)
        resumed = _open_work(work, identity)
        train_cache, val_cache = _cache_features(package, job, work, identity["package"], config, threads)
        cached = time.perf_counter()

        trainer = TopTrainer(
            job.trained,
            job.tuner,
            LabelMap(tuple(package.labels)),
            job.train_config,
            checkpoint_dir=work / "checkpoint",
            callbacks=callbacks,
            model_hash=identity["package"],
            cut=job.cut,
        )
        val_labels = job.y[job.val_idx] if val_cache is not None else None
        fit = trainer.fit_sources(train_cache, job.y[job.train_idx], val_cache, val_labels)
        trained = time.perf_counter()

        seconds = {"prepare": prepared - start, "trunk": cached - prepared, "train": trained - cached}
        training = _training_record(job, fit, config, profile, resumed, seconds)
        write_personal_state(out, fit.delta, package, train_cut=job.cut, tuner=job.tuner.to_dict(), training=training)
        shutil.rmtree(work, ignore_errors=True)
    seconds["write"] = time.perf_counter() - trained
    seconds["total"] = time.perf_counter() - start
    return PersonalizeResult(
        path=out,
        manifest=json.loads((out / "personal.json").read_text()),
        history=fit.state.history,
        best_epoch=fit.state.best_epoch,
        stopped_early=fit.state.stopped_early,
        trainable_params=fit.trainable_params,
        num_train=len(job.train_idx),
        num_val=len(job.val_idx),
        train_cut=job.cut,
        tuner=job.tuner.to_dict(),
        estimate=job.estimate,
        cache=job.cache,
        resumed=resumed,
        seconds=seconds,
    )


def _training_record(
    job: _Job,
    fit: TopFit,
    config: PersonalizeConfig,
    profile: DeviceProfile | None,
    resumed: bool,
    seconds: dict[str, float],
) -> dict[str, Any]:
    """The ``training`` entry of ``personal.json``: how this state came about."""
    state = fit.state
    best = next((h for h in state.history if h["epoch"] == state.best_epoch), None)
    val_metrics = {k[4:]: v for k, v in best.items() if k.startswith("val_")} if best else None
    estimate = job.estimate
    return {
        "data": job.dataset.source,
        "num_train": int(len(job.train_idx)),
        "num_val": int(len(job.val_idx)),
        "config": {k: v for k, v in asdict(config).items() if k != "progress"},
        "history": state.history,
        "best_epoch": state.best_epoch,
        "stopped_early": state.stopped_early,
        "val_metrics": val_metrics,
        "trainable_params": fit.trainable_params,
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
