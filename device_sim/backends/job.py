"""The part of a personalization job that every ExecuTorch backend shares, torch-free.

Read and check the user's data, tokenize it, hold out the validation split
(:func:`device_sim.split.validation_split`, the torch backend's too), price the
job with the cost model (:mod:`edgetune.costs`) against the device profile, run
the ONNX trunk once into a feature array (in memory or a memory-mapped file),
and, at the end, write the personal state. Only numpy, tokenizers,
onnxruntime and safetensors are imported here; the torch backend's loop lives
in :mod:`device_sim.personalize`.

The epoch order (:func:`epoch_order`), the batch width (longest example), the
AdamW groups (:func:`param_settings`) and the schedule
(:func:`lr_factor`) are the torch backend's, so the three backends train the
same way.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from device_sim.personal import check_writable, write_personal_state
from device_sim.profiles import DeviceProfile, check_job
from device_sim.split import validation_split
from edgetune.costs import ArchSummary, CostConfig, CutCost, TunerCost, estimate_cut
from edgetune.data import DataError, LabelMap, TextDataset, load_dataset

if TYPE_CHECKING:
    from device_sim.package import DevicePackage

METRICS = ("accuracy", "macro_f1")


class BackendError(ValueError):
    """An ExecuTorch backend cannot run this job (package without the program, unsupported setting, failed run)."""


@dataclass
class TrainSettings:
    """The settings of a job on an ExecuTorch backend: ``PersonalizeConfig``'s fields with its defaults (a test
    keeps the two equal), without importing torch."""

    epochs: int = 8
    batch_size: int = 16
    lr: float = 1e-4
    head_lr: float | None = 3e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_grad_norm: float | None = 1.0
    val_fraction: float = 0.15
    patience: int | None = 3
    metric: str = "accuracy"
    seed: int = 0
    cut: int | None = None
    tuner: str | None = None
    tuner_params: dict[str, Any] | None = None
    precision: str = "fp32"
    cache: str = "auto"
    cache_dtype: str = "float32"
    cache_batch_size: int = 8
    checkpoint_steps: int | None = None
    text_column: str | None = None
    label_column: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {self.metric!r}")

    @classmethod
    def of(cls, config: Any | None) -> TrainSettings:
        """These settings from a ``PersonalizeConfig`` (or anything with the same fields), or the defaults."""
        if config is None or isinstance(config, TrainSettings):
            return config or cls()
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls) if hasattr(config, f.name)})


@dataclass
class LightResult:
    """What a job on an ExecuTorch backend did (the fields of the torch backend's ``PersonalizeResult``)."""

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
    losses: list[float] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def val_metrics(self) -> dict[str, Any] | None:
        return self.manifest["training"].get("val_metrics")


@dataclass
class Prepared:
    """A checked, priced job with its trunk features."""

    dataset: TextDataset
    y: np.ndarray
    train_idx: np.ndarray
    val_idx: np.ndarray
    cut: int
    estimate: CutCost
    train: tuple[Any, np.ndarray]  # features (n, S, d) float32 (or the raw file holding them), mask (n, S) uint8
    val: tuple[Any, np.ndarray] | None
    cache: str
    program: dict[str, Any]  # the manifest's executorch entry
    seconds: dict[str, float] = field(default_factory=dict)
    hidden_size: int = 0


def read_user_data(package: DevicePackage, data: str | Path | TextDataset, settings: TrainSettings) -> TextDataset:
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
            f"`edgetune export ... --target executorch` to train with --backend {backend}"
        )
    return entry


def check_settings(package: DevicePackage, settings: TrainSettings, program: dict[str, Any], backend: str) -> int:
    """The cut the job trains above; what the exported program cannot do is refused before any work."""
    plan_tuner = package.manifest["plan"].get("tuner", "full")
    tuner = settings.tuner or plan_tuner
    if tuner != "full":
        raise BackendError(
            f"--backend {backend} trains the full top (tuner 'full'); tuner {tuner!r} needs --backend torch"
        )
    cut = package.cut if settings.cut is None else settings.cut
    if cut != package.cut:
        raise BackendError(
            f"--backend {backend} trains the exported top (above cut {package.cut}); --cut {cut} needs --backend torch"
        )
    if settings.batch_size > int(program["max_batch"]):
        raise BackendError(
            f"batch size {settings.batch_size} > {program['max_batch']}, the largest batch top_train.pte was exported "
            "for; lower --batch-size or re-export with a larger --executorch-max-batch"
        )
    if settings.cache_dtype != "float32":
        raise BackendError(f"--backend {backend} reads float32 features (cache dtype {settings.cache_dtype!r})")
    return cut


def estimate_job(package: DevicePackage, settings: TrainSettings, num: int, width: int, in_memory: bool) -> tuple:
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
    settings: TrainSettings,
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


def release_memory(package: DevicePackage) -> None:
    """Drop the onnxruntime sessions and give the freed heap back to the OS (glibc keeps it otherwise), so a
    trainer in another process does not run beside the trunk's memory."""
    import ctypes
    import gc

    package.release_sessions()
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def prepare(
    package: DevicePackage,
    data: str | Path | TextDataset,
    settings: TrainSettings,
    profile: DeviceProfile | None,
    threads: int | None,
    backend: str,
    work: Path | None = None,
) -> Prepared:
    """Read, tokenize, split, price and refuse what does not fit; then the trunk once (features in memory, or
    raw float32 files in ``work`` for a trainer in another process)."""
    start = time.perf_counter()
    program = program_entry(package, backend)
    cut = check_settings(package, settings, program, backend)
    dataset = read_user_data(package, data, settings)
    y = dataset.encoded_labels(LabelMap(tuple(package.labels)))
    ids, mask = package.encode(dataset.texts)
    train_idx, val_idx = validation_split(y, settings.val_fraction, settings.seed)
    in_memory = work is None
    arch, cost = estimate_job(package, settings, len(ids), ids.shape[1], in_memory)
    if profile is not None:
        cost = replace(cost, device_gflops=profile.gflops)
        check_job(profile, arch, cost, cut, TunerCost())
    estimate = estimate_cut(arch, cost, cut, TunerCost())
    prepared = time.perf_counter()
    train = run_trunk(
        package, ids[train_idx], mask[train_idx], settings, threads, None if work is None else work / "train.f32"
    )
    val = None
    if len(val_idx):
        file = None if work is None else work / "val.f32"
        val = run_trunk(package, ids[val_idx], mask[val_idx], settings, threads, file)
    release_memory(package)  # training needs only the features
    seconds = {"prepare": prepared - start, "trunk": time.perf_counter() - prepared}
    place = "memory" if in_memory else "mmap"
    return Prepared(
        dataset, y, train_idx, val_idx, cut, estimate, train, val, place, program, seconds, package.hidden_size
    )


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The examples' order in an epoch: the torch backend's ``EpochSampler`` permutation."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def param_settings(program: dict[str, Any], settings: TrainSettings) -> list[tuple[str, float, float, list[int]]]:
    """``(name, lr, weight_decay, shape)`` per trained tensor in program order: the head and final norm at
    ``head_lr``, no weight decay on biases and norm weights (the torch backend's AdamW groups)."""
    head_lr = settings.head_lr if settings.head_lr is not None else settings.lr
    out = []
    for p in program["train"]["parameters"]:
        name, shape = p["name"], list(p["shape"])
        lr = head_lr if name.startswith(("head.", "norm.")) else settings.lr
        out.append((name, float(lr), settings.weight_decay if len(shape) >= 2 else 0.0, shape))
    return out


def schedule(num_train: int, settings: TrainSettings) -> tuple[int, int]:
    """``(warmup_steps, total_steps)`` of the linear warm-up and decay."""
    total = -(-num_train // settings.batch_size) * settings.epochs
    return int(settings.warmup_ratio * total), total


def lr_factor(step: int, warmup: int, total: int) -> float:
    """The learning-rate multiplier at ``step`` (transformers' linear schedule with warm-up)."""
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


def metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Accuracy and macro-F1 over the labels present in truth or predictions (scikit-learn's definition)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    present = sorted(set(y_true.tolist()) | set(y_pred.tolist()))
    f1 = []
    for c in present:
        tp = int(((y_true == c) & (y_pred == c)).sum())
        fp = int(((y_true != c) & (y_pred == c)).sum())
        fn = int(((y_true == c) & (y_pred != c)).sum())
        f1.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return {"accuracy": float((y_true == y_pred).mean()), "macro_f1": float(np.mean(f1)) if f1 else 0.0}


def finish(
    package: DevicePackage,
    out: Path,
    job: Prepared,
    tensors: dict[str, np.ndarray],
    history: list[dict[str, Any]],
    best_epoch: int | None,
    stopped_early: bool,
    losses: list[float],
    settings: TrainSettings,
    profile: DeviceProfile | None,
    backend: str,
    seconds: dict[str, float],
) -> LightResult:
    """Write the personal state (the torch backend's format; ``training.backend`` says which one trained)."""
    best = next((h for h in history if h["epoch"] == best_epoch), None)
    val_metrics = {k[4:]: v for k, v in best.items() if k.startswith("val_")} if best else None
    trainable = int(sum(int(np.prod(t.shape)) for t in tensors.values()))
    tuner = {"name": "full", "params": {}}
    estimate = job.estimate
    training = {
        "data": job.dataset.source,
        "num_train": int(len(job.train_idx)),
        "num_val": int(len(job.val_idx)),
        "config": {k: v for k, v in asdict(settings).items() if k != "progress"},
        "history": history,
        "best_epoch": best_epoch,
        "stopped_early": stopped_early,
        "val_metrics": val_metrics,
        "trainable_params": trainable,
        "cache": job.cache,
        "estimate": {
            "train_memory_mb": estimate.train_memory_mb,
            "device_seconds": estimate.device_seconds,
            "backward_frac": estimate.backward_frac,
            "backward_flops_per_example": estimate.backward_flops,
        },
        "profile": profile.to_dict() if profile is not None else None,
        "resumed": False,
        "seconds": seconds,
        "backend": backend,
        "step_losses": [float(x) for x in losses],
    }
    write_personal_state(out, tensors, package, train_cut=job.cut, tuner=tuner, training=training)
    return LightResult(
        path=out,
        manifest=json.loads((out / "personal.json").read_text()),
        history=history,
        best_epoch=best_epoch,
        stopped_early=stopped_early,
        trainable_params=trainable,
        num_train=len(job.train_idx),
        num_val=len(job.val_idx),
        train_cut=job.cut,
        tuner=tuner,
        estimate=estimate,
        cache=job.cache,
        resumed=False,
        losses=[float(x) for x in losses],
        seconds=seconds,
    )


def start_output(out: str | Path) -> Path:
    out = Path(out)
    check_writable(out)
    return out
