"""What the ExecuTorch backends share: training the package's exported program (``top_train.pte``), torch-free.

The exported program ``top_train.pte`` trains the whole exported top (tuner
``full``, above the package's cut): a head-only candidate runs it with the
blocks at learning rate 0, so every candidate costs the full top's training
(:meth:`ProgramBackend.price_basis`). ``top_train_lora.pte`` (where the
package has it) trains the LoRA candidate: rank-8 adapters (alpha 16) in
every block above the cut, with the final norm and head, from the adapters'
starting values the exporter drew. Other cuts, other tuners and LoRA of
other settings need the torch backend and are skipped
(:meth:`ProgramBackend.unsupported`). The trunk runs
once in onnxruntime into float32 feature arrays (in memory, or raw files in
the work directory for a trainer in another process), and tops are scored on
them with the package's ONNX top (:class:`OnnxLogits`).

The epoch order (:func:`epoch_order`), the batch width (longest example), the
AdamW groups (:func:`param_settings`) and the schedule (:func:`lr_factor`) are
the torch backend's, so the three backends train the same way. A subclass
runs one candidate's training (:meth:`ProgramBackend.run_program`). Only numpy,
tokenizers, onnxruntime and safetensors are imported here.
"""

from __future__ import annotations

import os
import time
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from device_sim.apply import fold_adapters
from device_sim.backends.base import Backend, BackendError, Candidate
from device_sim.runtime import OnnxTop
from device_sim.selection import Trained
from device_sim.settings import PersonalizeConfig
from edgetune.arrays import batch_width, length_sorted_batches
from edgetune.costs import TunerCost
from edgetune.learning_rates import linear_warmup_factor
from edgetune.metrics import METRICS, classification_metrics

if TYPE_CHECKING:
    from device_sim.package import DevicePackage
    from device_sim.personalize import Job

Features = tuple[Any, np.ndarray]  # features (n, S, d) float32 (or the raw file holding them), mask (n, S) uint8


@dataclass
class ProgramRun:
    """What one candidate's run of the program returns: every tensor the program trains (the best epoch's), the
    epoch history, the best epoch, whether it stopped early, and every step's loss."""

    tensors: dict[str, np.ndarray]
    history: list[dict[str, Any]]
    best_epoch: int | None
    stopped_early: bool
    losses: list[float]


def run_trunk(
    package: DevicePackage,
    ids: np.ndarray,
    mask: np.ndarray,
    settings: PersonalizeConfig,
    threads: int | None,
    file: Path | None = None,
) -> Features:
    """The ONNX trunk once over ``ids``: features ``(n, S, d)`` float32 (padding zeroed) and the mask (uint8).

    ``file``: write the features as raw float32 rows to this file instead of keeping them (the C++ trainer reads
    them; the rows go through the page cache, not this process's memory); it is returned in their place.
    """
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


def features_array(features: Any, mask: np.ndarray, hidden: int) -> np.ndarray:
    """Features kept in memory, or those a raw float32 file holds (memory-mapped)."""
    if isinstance(features, np.ndarray):
        return features
    return np.memmap(features, np.float32, "r", shape=(*mask.shape, hidden))


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The examples' order in an epoch: the torch backend's ``EpochSampler`` permutation."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def is_head(name: str) -> bool:
    """The head and the final norm: what a head-only candidate trains."""
    return name.startswith(("head.", "norm."))


def param_settings(
    entry: dict[str, Any], settings: PersonalizeConfig, head_only: bool = False
) -> list[tuple[str, float, float, list[int]]]:
    """``(name, lr, weight_decay, shape)`` per tensor a training program (its manifest ``entry``) trains, in
    program order: the head and final norm at ``head_lr``, the rest (blocks or adapters) at ``lr``, no weight
    decay on biases and norm weights (the torch backend's AdamW groups); ``head_only``: the blocks at learning
    rate 0 (AdamW leaves them exactly as they are)."""
    head_lr = settings.head_lr if settings.head_lr is not None else settings.lr
    out = []
    for p in entry["parameters"]:
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


# LoraConfig's defaults (edgetune.tuners.lora.config imports torch; a test keeps these equal to it).
LORA_DEFAULTS = {"r": 8, "alpha": 16.0}


class ProgramRules(Backend):
    """What a backend that runs the package's training programs can and cannot train, and at what price: the
    exported top (tuner ``full``, above the package's cut) or its head alone with ``top_train.pte``, the LoRA
    top of ``top_train_lora.pte``; the whole top's cost for every candidate."""

    program: dict[str, Any]  # the manifest's executorch entry, once checked

    def check(self) -> None:
        entry = self.package.manifest.get("executorch")
        if not entry:
            raise BackendError(
                f"{self.package.path}: exported without the executorch target (no top_train.pte); re-export with "
                f"`edgetune export ... --target executorch` to train with --trainer {self.name}"
            )
        if self.config.cache_dtype != "float32":
            raise BackendError(
                f"--trainer {self.name} reads float32 features (cache dtype {self.config.cache_dtype!r})"
            )
        self.program = entry

    def training_entry(self, candidate: Candidate) -> dict[str, Any]:
        """The manifest entry of the program that trains ``candidate`` (``train``, or ``train_lora``)."""
        return self.program["train_lora"] if candidate.tuner == "lora" else self.program["train"]

    def lora_mismatch(self, candidate: Candidate) -> str | None:
        """Why ``top_train_lora.pte`` cannot train the LoRA ``candidate`` (None: it can)."""
        entry = self.program.get("train_lora") or {}
        if "file" not in entry:
            why = entry.get("skipped", "exported before top_train_lora.pte existed")
            return f"the package has no LoRA training program ({why})"
        if candidate.cut != self.package.cut:
            return f"top_train_lora.pte adapts the blocks above cut {self.package.cut}, not above {candidate.cut}"
        exported = entry["tuner"]["params"]
        asked = {**LORA_DEFAULTS, **(candidate.config.tuner_params or {})}
        differ = [f"{k} {asked[k]} (program: {exported[k]})" for k in LORA_DEFAULTS if float(asked[k]) != exported[k]]
        if asked.get("target_modules") not in (None, exported["target_modules"]):
            differ.append(f"target_modules {asked['target_modules']} (program: {exported['target_modules']})")
        if asked.get("layers") is not None:
            differ.append("layers (the program adapts every block)")
        return f"top_train_lora.pte was exported with other LoRA settings: {', '.join(differ)}" if differ else None

    def unsupported(self, candidate: Candidate, configured: bool) -> str | None:
        package = self.package
        if candidate.tuner == "lora" and not candidate.head_only:
            why = self.lora_mismatch(candidate)
            return None if why is None else (f"{why}; it needs --trainer torch" if configured else why)
        if configured:
            if candidate.tuner != "full":
                return (
                    f"--trainer {self.name} trains the full top (tuner 'full'); tuner {candidate.tuner!r} needs "
                    "--trainer torch"
                )
            if candidate.cut not in (package.cut, package.num_layers):
                return (
                    f"--trainer {self.name} trains the exported top (above cut {package.cut}) or its head alone "
                    f"(--cut {package.num_layers}); --cut {candidate.cut} needs --trainer torch"
                )
            return None
        if candidate.tuner != "full" and candidate.cut != package.num_layers:
            return f"tuner {candidate.tuner!r} needs --trainer torch"
        if candidate.cut not in (package.cut, package.num_layers):
            return f"cut {candidate.cut} needs --trainer torch"
        return None

    def price_basis(self, candidate: Candidate) -> tuple[int, TunerCost]:
        return self.package.cut, TunerCost()  # every candidate, the prior's logits included, runs the whole top


class ProgramBackend(ProgramRules):
    """A backend that trains ``top_train.pte`` in the job's steps; subclasses run one candidate
    (:meth:`run_program`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.program: dict[str, Any] = {}  # the manifest's executorch entry, once checked
        self.split_features: dict[str, Features | None] = {}
        self.y: dict[str, np.ndarray] = {}  # the labels of each split

    def features(self, job: Job, work: Path) -> dict[str, float]:
        seconds = {}
        for name in ("train", "val", "guard"):
            t0 = time.perf_counter()
            idx = job.split(name)
            file = work / f"{name}.f32" if self.cache == "mmap" else None
            self.y[name] = job.y[idx]
            self.split_features[name] = (
                run_trunk(self.package, job.ids[idx], job.mask[idx], self.config, self.threads, file)
                if len(idx)
                else None
            )
            seconds[name] = time.perf_counter() - t0
        self.package.release_sessions()  # training needs only the features: the trunk's memory goes back to the OS
        return seconds

    def logits(self, split: str, trained: Trained | None = None) -> np.ndarray:
        features = self.split_features[split]
        assert features is not None
        tensors = None if trained is None else {k: np.asarray(v, np.float32) for k, v in trained.tensors.items()}
        if trained is not None and trained.tuner["name"] != "full":  # adapters run folded into the top's weights
            model_type = self.package.manifest["backbone"]["model_type"]
            tensors = fold_adapters(self.package.top_tensors(), tensors or {}, trained.tuner, model_type)
        out = OnnxLogits(self.package, self.threads)(*features, self.package.hidden_size, tensors)
        self.package.release_sessions()  # training runs without the ONNX top's session beside it
        return out

    def prior_tensors(self, shift: np.ndarray) -> dict[str, Any]:
        weights = self.package.top_tensors()
        return {"head.weight": weights["head.weight"], "head.bias": weights["head.bias"] + shift.astype(np.float32)}

    @abstractmethod
    def run_program(self, candidate: Candidate, work: Path) -> ProgramRun:
        """One candidate's training run of the program, from the package's weights at the candidate's rates."""

    def train(self, candidate: Candidate, job: Job, work: Path) -> Trained:
        t0 = time.perf_counter()
        run = self.run_program(candidate, work)
        tensors = run.tensors
        if candidate.head_only:
            tensors = {k: v for k, v in tensors.items() if is_head(k)}
        best = next((h for h in run.history if h["epoch"] == run.best_epoch), None)
        tuner = self.training_entry(candidate).get("tuner", {"name": "full", "params": {}})
        return Trained(
            candidate.name, tensors, candidate.cut, tuner, run.history, run.best_epoch,
            run.stopped_early, int(sum(int(np.prod(t.shape)) for t in tensors.values())),
            float(best["val_accuracy"]) if best is not None else None, candidate.estimate, time.perf_counter() - t0,
            run.losses,
        )  # fmt: skip

    def record(self, chosen: Trained) -> dict[str, Any]:
        return {"backend": self.name, "step_losses": [float(x) for x in chosen.losses]}
