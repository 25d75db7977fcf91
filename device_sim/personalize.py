"""On-device personalization: the one job that trains the top of a package on one user's labelled texts.

The job, in the order it runs (everything that can be wrong with the input is
found before anything is computed or written); the training backend
(``torch``, ``executorch``, ``executorch-cpp``: :mod:`device_sim.backends`)
supplies steps 3 and 4 and the logits of step 5, the job does the rest (``executorch-cpp``, the C
library, runs steps 3-6 itself from the prepared job: :class:`~device_sim.backends.base.WholeJobBackend`):

1. read the user's data (labels must be the package's), tokenize it with the
   package's tokenizer, hold out a stratified *guard split* (``guard_fraction``,
   20%) that nothing but the do-no-harm guard ever sees, and an inner
   validation split of the rest (``val_fraction``) for selection and early stopping;
2. resolve the candidate configurations, keep those the backend can train and
   price them with the cost model against the device profile
   (:mod:`device_sim.candidates`);
3. run the trunk once and cache its output, in memory or memory-mapped;
4. train every candidate on the cache (the prior candidate, the global head
   moved to the user's label prior, is computed here from the global top's
   logits) and pick the one with the best inner validation accuracy (ties: the
   cheaper); one that does not beat the global top there is not kept
   (:mod:`device_sim.selection`);
5. the guard (:mod:`device_sim.guard`): the picked top against the global one
   on the guard split, one-sided exact McNemar test at ``guard_alpha``;
6. write the personal state (:mod:`edgetune_format.personal`) in one atomic step:
   the picked top's tensors (kind ``top_delta``), or, when the guard refused
   it, a state of kind ``kept_global`` that holds no tensor and both scores.

One job per output: :func:`personalize` holds the output's lock for the whole
job. Work in progress lives next to the output, in ``.<out>.partial/``
(:func:`work_dir`: the job's identity, checkpoints, memory-mapped features).
On a backend that resumes (torch; executorch-cpp, whose library keeps its own
records there), an interrupted job run again with the same package, data and
settings resumes from its last checkpoint, exactly (the batches and dropout
masks of an uninterrupted run); a job with other inputs discards it. The
previous personal state at ``out`` is replaced only by a complete new one. Torch-free: the torch backend imports torch.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device_sim.backends import get_backend
from device_sim.backends.base import Backend, Candidate, StaleWorkError, WholeJobBackend
from device_sim.candidates import price_candidates, resolve_candidates, trainable
from device_sim.guard import prior_shift
from device_sim.package import DevicePackage
from device_sim.profiles import DeviceProfile
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
from edgetune.arrays import data_digest
from edgetune.costs import CutCost
from edgetune.data import DataError, LabelMap, TextDataset, load_dataset
from edgetune.io import atomic_write_json, output_lock, recover
from edgetune_format.personal import check_writable, identity_digest, package_identity


def read_user_data(package: DevicePackage, data: str | Path | TextDataset, config: PersonalizeConfig) -> TextDataset:
    """The user's labelled texts; a label the package does not know is a DataError naming its row."""
    if isinstance(data, TextDataset):
        dataset = data
    else:
        text_column = config.text_column or package.plan.text_column
        label_column = config.label_column or package.plan.label_column
        dataset = load_dataset(data, text_column, label_column)
    if len(dataset) == 0:
        raise DataError(f"{dataset.source}: no examples")
    dataset.encoded_labels(LabelMap(tuple(package.labels)))
    return dataset


def work_dir(out: Path) -> Path:
    """Where an unfinished job keeps its checkpoints and features: a hidden sibling of ``out``."""
    return out.parent / f".{out.name}.partial"


@dataclass
class Job:
    """A checked, priced job, ready to run."""

    dataset: TextDataset
    y: np.ndarray
    ids: np.ndarray
    mask: np.ndarray
    train_idx: np.ndarray
    val_idx: np.ndarray
    guard_idx: np.ndarray
    cut: int  # the lowest cut any candidate trains above: the features are h_cut
    candidates: list[Candidate]
    skipped: list[dict[str, Any]]
    cache: str  # "memory" | "mmap"
    estimate: CutCost  # the whole job's: the most expensive candidate's, with the summed device seconds
    package_digest: str  # the package's identity: keys the feature caches and checkpoints

    def split(self, name: str) -> np.ndarray:
        """The indices of the ``train``, ``val`` or ``guard`` split."""
        return {"train": self.train_idx, "val": self.val_idx, "guard": self.guard_idx}[name]


def prepare(
    backend: Backend, data: str | Path | TextDataset, config: PersonalizeConfig, profile: DeviceProfile | None
) -> Job:
    """Steps 1-2 of the module docstring: read, tokenize, split, price, refuse (or drop) what does not fit."""
    package = backend.package
    backend.check()
    dataset = read_user_data(package, data, config)
    y = dataset.encoded_labels(LabelMap(tuple(package.labels)))
    ids, mask = package.encode(dataset.texts)
    rest, guard_idx = guard_split(y, config.guard_fraction, config.seed)
    inner_train, inner_val = validation_split(y[rest], config.val_fraction, config.seed)
    candidates, skipped = trainable(backend, resolve_candidates(package, config), not config.select)
    priced = price_candidates(backend, candidates, skipped, config, profile, ids.shape)
    return Job(
        dataset, y, ids, mask, rest[inner_train], rest[inner_val], guard_idx, priced.cut, priced.candidates,
        priced.skipped, priced.cache, priced.estimate, identity_digest(package_identity(package)),
    )  # fmt: skip


def job_identity(job: Job, config: PersonalizeConfig) -> dict[str, Any]:
    """Everything that decides the result; an unfinished job resumes only under the same identity."""
    splits = (job.val_idx, job.guard_idx)
    raw = job.y.astype(np.int64).tobytes() + b"".join(b"|" + s.astype(np.int64).tobytes() for s in splits)
    settings = {k: v for k, v in asdict(config).items() if k not in ("progress", "cache", "cache_batch_size")}
    identity = {
        "package": job.package_digest,
        "data": data_digest(job.ids, job.mask),
        "labels": hashlib.sha256(raw).hexdigest(),
        "settings": settings,
    }
    return json.loads(json.dumps(identity))


def open_work(work: Path, identity: dict[str, Any] | None) -> bool:
    """Prepare the work directory; returns whether it holds a checkpoint of this very job (a resume).

    ``identity``: the job's (:func:`job_identity`), for a backend that resumes; ``None`` starts afresh."""
    job = work / "job.json"
    if work.exists():
        try:
            same = identity is not None and json.loads(job.read_text()) == identity
        except (OSError, ValueError):
            same = False
        if not same:
            shutil.rmtree(work)  # an interrupted job of other inputs: its checkpoints cannot be resumed
    work.mkdir(parents=True, exist_ok=True)
    if identity is None:
        return False
    atomic_write_json(job, identity)
    return any(work.glob("checkpoint*/state.json"))


def prior_candidate(backend: Backend, cand: Candidate, job: Job, global_logits: dict[str, np.ndarray]) -> Trained:
    """The global head with its bias fitted to the user's label prior (:func:`device_sim.guard.prior_shift`)."""
    t0 = time.perf_counter()
    shift = prior_shift(global_logits["train"], job.y[job.train_idx])
    val_acc = None
    if len(job.val_idx):
        val_acc = float(((global_logits["val"] + shift).argmax(axis=1) == job.y[job.val_idx]).mean())
    return Trained(
        name=cand.name,
        tensors=backend.prior_tensors(shift),
        train_cut=backend.package.num_layers,
        tuner={"name": "full", "params": {}, "prior_shift": [float(d) for d in shift]},
        trainable_params=int(len(shift)),
        val_accuracy=val_acc,
        estimate=cand.estimate,
        seconds=time.perf_counter() - t0,
    )


def run_candidates(backend: Backend, job: Job, work: Path) -> tuple[list[Trained], float | None]:
    """Step 4: every candidate trained (the prior: computed), in order; also the global top's inner validation
    accuracy (``None`` without a validation split)."""
    global_logits = {"val": backend.logits("val")} if len(job.val_idx) else {}
    if any(c.kind == "prior" for c in job.candidates):
        global_logits["train"] = backend.logits("train")
    trained = [
        prior_candidate(backend, cand, job, global_logits) if cand.kind == "prior" else backend.train(cand, job, work)
        for cand in job.candidates
    ]
    global_val = None
    if len(job.val_idx):
        global_val = float((global_logits["val"].argmax(axis=1) == job.y[job.val_idx]).mean())
    return trained, global_val


def run_job(
    backend: Backend, data: str | Path | TextDataset, out: Path, config: PersonalizeConfig
) -> PersonalizeResult:
    """Steps 1-6 of the module docstring, with ``out`` locked by the caller."""
    start = time.perf_counter()
    check_writable(out)
    profile, package = backend.profile, backend.package
    with backend.running():
        job = prepare(backend, data, config, profile)
        if isinstance(backend, WholeJobBackend):
            return backend.run_whole(job, out, config, start)
        prepared = time.perf_counter()
        work = work_dir(out)
        resumed = open_work(work, job_identity(job, config) if backend.resumes else None)
        try:
            feature_seconds = backend.features(job, work)
            cached = time.perf_counter()
            candidates, global_val = run_candidates(backend, job, work)
            trained_at = time.perf_counter()
            chosen = candidates[choose(candidates)]
            guard_logits = None
            if config.guard_fraction > 0 and len(job.guard_idx):
                guard_logits = (backend.logits("guard"), backend.logits("guard", chosen))
            keep, reason, guard = verdict(config, chosen, global_val, job.y[job.guard_idx], guard_logits)
            guard_seconds = time.perf_counter() - trained_at + feature_seconds.get("guard", 0.0)
            seconds = {"prepare": prepared - start, "trunk": cached - prepared, "train": trained_at - cached}
            seconds["guard"] = guard_seconds
            selection = selection_record(candidates, chosen, global_val, job.skipped)
            training = {**training_record(job, chosen, config, profile, resumed, seconds), **backend.record(chosen)}
            writing = time.perf_counter()
            extra = {"guard": guard_record(config, keep, reason, guard, chosen, guard_seconds), "selection": selection}
            write_outcome(out, package, chosen, keep, training, extra)
        finally:
            if not backend.resumes:  # nothing in it can be used again
                shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    seconds["write"] = time.perf_counter() - writing
    seconds["total"] = time.perf_counter() - start
    return result_of(out, job, chosen, keep, package.cut, guard, selection, candidates, resumed, seconds, chosen.losses)


def personalize(
    package: DevicePackage,
    data: str | Path | TextDataset,
    out: str | Path,
    config: PersonalizeConfig | None = None,
    profile: DeviceProfile | None = None,
    threads: int | None = None,
    callbacks: Sequence[Callable[..., None]] = (),
    backend: str = "torch",
) -> PersonalizeResult:
    """Personalize ``package`` on ``data`` and write the personal state to ``out`` (see the module docstring).

    ``profile`` bounds the job (refused before any work when the cost model says it will not fit, or, with
    ``config.select``, its candidates trimmed to fit) and sets the thread count unless ``threads`` is given.
    ``backend``: who trains (:func:`device_sim.backends.backend_names`). ``callbacks`` run after every optimizer
    step: with a :class:`~edgetune.callbacks.StepEvent` (``torch``), or with ``(step, loss)`` (the ExecuTorch
    backends; ``executorch-cpp``: from the library's progress callback, as its steps run).
    """
    config = config or PersonalizeConfig()
    threads = threads if threads is not None else (profile.threads if profile is not None else None)
    runner = get_backend(backend)(package, config, profile, threads, callbacks)
    out = Path(out)
    with output_lock(out):  # one job per output; a second one fails at once instead of mixing partial states
        recover(out.parent, [out.name])  # what a killed job left half-written next to the output
        work = work_dir(out)
        if work.is_dir():
            recover(work)
        try:
            return run_job(runner, data, out, config)
        except StaleWorkError:
            if not work.is_dir():
                raise
        shutil.rmtree(work)
        return run_job(get_backend(backend)(package, config, profile, threads, callbacks), data, out, config)
