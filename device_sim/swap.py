"""Backbone replacement on the device: carry a user's personalization from an old package to a new one.

The vendor ships a package with a new backbone; the user's personal state was trained on the old one. Three
ways to get a personal state for the new package (``SwapConfig.method``):

* ``fala`` (docs/methods.md, :mod:`edgetune.fala`): embed the user's texts with the new package and with the
  old package + old personal state (by default all of them: the map needs no labels; ``map_on="curated"``: the
  k curated ones only), pick k curated examples by correlation clustering (one medoid per cluster, per label),
  fit the personal matrix W: new -> old by ridge regression, put the old personal head after it, and optionally
  tune W + head on the k labelled examples (pooled features, computed once; ``distill`` > 0 also keeps the
  predictions on all the texts near the old personal model's). Written as a personal state of kind ``fala``.
* ``retrain``: personalize the new package from scratch on all the user's data (the top layers, as
  :mod:`device_sim.personalize` does).
* ``head-only``: personalize only the new package's head, on the same k curated examples as FaLA.

The swap never touches the old package or the old personal state: the new state is written to a different
directory in one atomic step and read back through the new package before the swap reports success; on any
failure the partial output is removed and the error says that the old pair is still the one in use.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from device_sim.device import Device
from device_sim.package import PackageError
from device_sim.personalize import PersonalizeConfig, read_user_data
from device_sim.runtime import torch_threads
from edgetune.costs import CostConfig, estimate_cut
from edgetune.data import LabelMap, TextDataset
from edgetune.errors import EdgetuneError
from edgetune.fala import (
    FalaHead,
    PersonalMatrix,
    SelectionConfig,
    compose,
    joint_features,
    random_examples,
    select_examples,
)
from edgetune.training_config import TrainError
from edgetune_format.personal import (
    PersonalState,
    PersonalStateError,
    check_writable,
    package_identity,
    write_personal_state,
)

SWAP_METHODS = ("fala", "retrain", "head-only")
SELECTIONS = ("cluster", "random")
FALA_FORMS = ("plain", "residual")
MAP_ON = ("all", "curated")  # the texts W is fitted on: all the user's (unlabelled) texts, or the k curated ones
CLUSTER_ON = ("new", "old", "both")  # the features the correlation clustering reads


class SwapError(EdgetuneError):
    """A swap that cannot be done as asked; the old package and personal state stay in use."""


@dataclass
class SwapConfig:
    """How to swap. ``k`` curated examples (default: ``ceil(fraction * n)``) for ``fala`` and ``head-only``."""

    method: str = "fala"
    k: int | None = None
    fraction: float = 0.1
    # random (per label): the default: on the swap benchmark's 65 users it tied with the clustered medoids (-0.4
    # points [-1.3, +0.6]) at less cost (docs/results.md, "Backbone swap"); cluster: the correlation-clustering
    # medoids of the method's paper
    selection: str = "random"
    cluster_on: str = "new"  # new | old (the old personal model's features) | both
    map_on: str = "all"  # all: W fitted on every text of the user (no labels needed) | curated: the k examples
    distill: float = 0.0  # weight of the loss that keeps the predictions on all texts near the old personal model's
    per_label: bool = True  # split k over the labels in proportion to their counts
    silhouette: bool = False  # choose k by the silhouette score (with per_label=False)
    ridge_alpha: float = 1.0
    # plain: head(W e + b); residual: g_new(e) + head(W e + b) - g_old(W e + b) (edgetune.fala, our extension)
    form: str = "plain"
    tune_epochs: int = 100  # full-batch steps tuning W + head on the curated examples; 0: ridge only
    tune_lr: float = 1e-3
    seed: int = 0
    # head-only: the head starts from the package's probe, whose weights are large; alone it needs a far larger
    # step than beside trained blocks to follow a user's own labels (3e-3 leaves the predictions unchanged)
    head_only_lr: float = 0.1
    personalize: PersonalizeConfig = field(default_factory=lambda: PersonalizeConfig.plain(progress=False))

    def __post_init__(self) -> None:
        if self.method not in SWAP_METHODS:
            raise ValueError(f"method must be one of {', '.join(SWAP_METHODS)}, got {self.method!r}")
        if self.form not in FALA_FORMS:
            raise ValueError(f"form must be one of {', '.join(FALA_FORMS)}, got {self.form!r}")
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {', '.join(SELECTIONS)}, got {self.selection!r}")
        if self.map_on not in MAP_ON:
            raise ValueError(f"map_on must be one of {', '.join(MAP_ON)}, got {self.map_on!r}")
        if self.cluster_on not in CLUSTER_ON:
            raise ValueError(f"cluster_on must be one of {', '.join(CLUSTER_ON)}, got {self.cluster_on!r}")
        if self.distill < 0:
            raise ValueError(f"distill must be >= 0, got {self.distill}")
        if self.k is not None and self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.ridge_alpha <= 0:
            raise ValueError(f"ridge_alpha must be > 0, got {self.ridge_alpha}")
        if self.tune_epochs < 0 or self.tune_lr <= 0:
            raise ValueError("tune_epochs must be >= 0 and tune_lr > 0")

    def selection_config(self) -> SelectionConfig:
        return SelectionConfig(k=self.k, fraction=self.fraction, per_label=self.per_label, silhouette=self.silhouette)


@dataclass
class SwapResult:
    """What a swap did. FLOPs are backward FLOPs of the whole job (all examples, all epochs)."""

    path: Path
    method: str
    num_examples: int
    examples_used: int
    selected: list[int]
    backward_flops: float
    full_retrain_backward_flops: float  # every block + head of the new backbone, all the data, the same epochs
    seconds: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def flops_reduction(self) -> float | None:
        """How many times fewer backward FLOPs than full re-training of the new backbone (``None``: the swap trained
        nothing, so there is no ratio; JSON has no infinity)."""
        return self.full_retrain_backward_flops / self.backward_flops if self.backward_flops else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        d["flops_reduction"] = self.flops_reduction
        return d


def head_backward_flops(d_new: int, d_old: int, num_labels: int, residual: bool = False) -> float:
    """Backward FLOPs per example of W + head on fixed features: the weight gradient of W (2 d_new d_old; W's
    input is a cached feature, so no input gradient) and the head's weight and input gradients (2 x 2 d_old C).
    The residual form adds the frozen old global head's input gradient (2 d_old C) and the new global head's
    weight gradient (2 d_new C; its input is a cached feature)."""
    flops = 2.0 * d_new * d_old + 4.0 * d_old * num_labels
    if residual:
        flops += 2.0 * d_old * num_labels + 2.0 * d_new * num_labels
    return flops


def tune_fala_head(
    head: FalaHead,
    features: np.ndarray,
    labels: np.ndarray,
    epochs: int,
    lr: float,
    seed: int = 0,
    unlabelled: np.ndarray | None = None,
    teacher: np.ndarray | None = None,
    distill: float = 0.0,
) -> list[float]:
    """Full-batch AdamW on cross-entropy, starting from the ridge fit; returns the loss per step. With
    ``distill`` > 0: plus ``distill`` x the KL divergence from the ``teacher`` logits (the old personal model's)
    to the head's predictions on the ``unlabelled`` features (all the user's texts)."""
    if epochs == 0 or len(features) == 0:
        return []
    torch.manual_seed(seed)
    x = torch.as_tensor(features, dtype=torch.float32)
    y = torch.as_tensor(labels, dtype=torch.long)
    distilling = distill > 0 and unlabelled is not None and teacher is not None and len(unlabelled) > 0
    if distilling:
        u = torch.as_tensor(unlabelled, dtype=torch.float32)
        target = torch.log_softmax(torch.as_tensor(teacher, dtype=torch.float32), dim=1)
    optimizer = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    losses = []
    head.train()
    for _ in range(epochs):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(head(x), y)
        if distilling:
            log_p = torch.log_softmax(head(u), dim=1)
            loss = loss + distill * nn.functional.kl_div(log_p, target, log_target=True, reduction="batchmean")
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    head.eval()
    return losses


def curated_examples(
    features: np.ndarray, labels: np.ndarray, config: SwapConfig, old_features: np.ndarray | None = None
) -> list[int]:
    """The k examples FaLA (and head-only) learn from: clustered medoids (over the new features, the old personal
    ones or both, ``config.cluster_on``; ``old_features`` of every text when it is not ``new``), or the random
    baseline."""
    if config.selection == "random":
        k = config.selection_config().resolve_k(len(features))
        return random_examples(len(features), k, labels, seed=config.seed, per_label=config.per_label)
    if config.cluster_on != "new":
        if old_features is None or len(old_features) != len(features):
            raise ValueError(f"cluster_on={config.cluster_on!r} needs the old features of every text")
        features = old_features if config.cluster_on == "old" else joint_features(features, old_features)
    return select_examples(features, labels, config.selection_config())


def full_retrain_flops(device: Device, width: int, num_examples: int, epochs: int) -> float:
    """Backward FLOPs of re-training every block and the head of ``device``'s backbone (cost model)."""
    arch = device.package.plan.arch
    cost = CostConfig(seq_len=width, batch_size=16, num_examples=num_examples, epochs=epochs, cached=False)
    return estimate_cut(arch, cost, 0).backward_flops * num_examples * epochs


def _open(package: Any, role: str, threads: int | None) -> Device:
    if isinstance(package, Device):
        return package
    try:
        return Device(package, threads=threads)
    except Exception as err:  # the package's own error says what is wrong with which file
        raise SwapError(f"{role} package: {err}") from err


def swap(
    old: str | Path | Device,
    new: str | Path | Device,
    personal: str | Path | PersonalState,
    data: str | Path | TextDataset,
    out: str | Path,
    config: SwapConfig | None = None,
    threads: int | None = None,
    new_features: np.ndarray | None = None,
) -> SwapResult:
    """Write a personal state for the ``new`` package at ``out`` from ``personal`` (trained on ``old``) and the
    user's labelled ``data``; see the module docstring. ``new_features``: the new package's
    :meth:`~device_sim.device.Device.features` of ``data``, when the caller already has them (a fleet
    simulation compares several methods on the same texts). Raises :class:`SwapError` (or the data's own error)
    with the old package and personal state untouched."""
    config = config or SwapConfig()
    out = Path(out)
    start = time.perf_counter()
    old_device = _open(old, "old", threads)
    try:
        state = personal if isinstance(personal, PersonalState) else old_device.load_personal(personal)
    except PersonalStateError as err:
        raise SwapError(f"personal state: {err}") from None
    state.check_package(old_device.package)
    if out.resolve() == Path(state.path).resolve():
        raise SwapError(
            f"--out {out} is the old personal state; write the new one elsewhere, so the old package keeps a "
            "working personal state until the new one is verified"
        )
    check_writable(out)
    new_device = _open(new, "new", threads)
    if new_device.labels != old_device.labels:
        raise SwapError(
            f"the new package's labels {new_device.labels} differ from the old one's {old_device.labels}; "
            "a personal head maps to the old labels, so re-personalize instead"
        )
    dataset = read_user_data(new_device.package, data, config.personalize)
    if new_features is not None and len(new_features) != len(dataset):
        raise ValueError(f"new_features has {len(new_features)} rows for {len(dataset)} examples")
    width = new_device.package.encode(dataset.texts)[0].shape[1]
    full = full_retrain_flops(new_device, width, len(dataset), config.personalize.epochs)
    existed = out.exists()
    try:
        with torch_threads(threads):
            if config.method == "fala":
                result = _fala(old_device, new_device, state, dataset, out, config, new_features, full)
            else:
                result = _personalize(new_device, dataset, out, config, new_features, full, old_device, state)
        new_device.top(out)  # read the new state back through the new package before reporting success
    except BaseException as err:
        if not existed and out.exists():
            shutil.rmtree(out, ignore_errors=True)
        if isinstance(err, PersonalStateError | PackageError | TrainError | ValueError | OSError):
            raise SwapError(
                f"{err}; nothing was swapped: {old_device.package.path} with {state.path} stays in use"
            ) from err
        raise
    result.seconds["total"] = time.perf_counter() - start
    return result


def _fala(
    old: Device,
    new: Device,
    state: PersonalState,
    dataset: TextDataset,
    out: Path,
    config: SwapConfig,
    new_features: np.ndarray | None,
    full_flops: float,
) -> SwapResult:
    y = dataset.encoded_labels(LabelMap(tuple(new.labels)))
    t0 = time.perf_counter()
    if new_features is None:  # forward only, every example: clustering needs them all
        new_features = new.features(dataset.texts)
    t1 = time.perf_counter()
    all_old = config.map_on == "all" or config.cluster_on != "new" or config.distill > 0
    old_all = old.features(dataset.texts, state) if all_old else None  # forward only, every example
    t_old = time.perf_counter()
    selected = curated_examples(new_features, y, config, old_all)
    t2 = time.perf_counter()
    if old_all is None:  # forward only, the k curated examples
        old_features = old.features([dataset.texts[i] for i in selected], state)
        matrix = PersonalMatrix.fit(new_features[selected], old_features, config.ridge_alpha)
    elif config.map_on == "all":
        matrix = PersonalMatrix.fit(new_features, old_all, config.ridge_alpha)
    else:
        matrix = PersonalMatrix.fit(new_features[selected], old_all[selected], config.ridge_alpha)
    head = _fala_head(old, new, state, matrix, config)
    with torch.inference_mode():
        ridge_train_acc = float((head(torch.as_tensor(new_features[selected])).argmax(1).numpy() == y[selected]).mean())
        teacher = _old_head(old, state)(torch.as_tensor(old_all)).numpy() if config.distill > 0 else None
    t3 = time.perf_counter()
    losses = tune_fala_head(
        head,
        new_features[selected],
        y[selected],
        config.tune_epochs,
        config.tune_lr,
        config.seed,
        unlabelled=new_features if config.distill > 0 else None,
        teacher=teacher,
        distill=config.distill,
    )
    t4 = time.perf_counter()
    d_new, d_old = matrix.linear.in_features, head.matrix.linear.out_features
    per_example = head_backward_flops(d_new, d_old, len(new.labels), residual=config.form == "residual")
    per_step = len(selected) + (len(dataset) if config.distill > 0 and losses else 0)  # the distilled texts too
    training = {
        "method": "fala",
        "form": config.form,
        "map_on": config.map_on,
        "cluster_on": config.cluster_on,
        "distill": config.distill,
        "curated_examples": selected,
        "num_examples": len(dataset),
        "d_new": d_new,
        "d_old": d_old,
        "ridge_train_accuracy": ridge_train_acc,
        "tune_losses": losses[:: max(1, len(losses) // 20)],
        "from_package": package_identity(old.package),
    }
    _write_fala_state(out, head, new, config, training)
    return SwapResult(
        path=out,
        method="fala",
        num_examples=len(dataset),
        examples_used=len(selected),
        selected=selected,
        backward_flops=per_example * per_step * len(losses),
        full_retrain_backward_flops=full_flops,
        seconds={
            "embed_new": t1 - t0,
            "embed_old": t_old - t1,
            "select": t2 - t_old,
            "fit_matrix": t3 - t2,
            "tune": t4 - t3,
            "write": time.perf_counter() - t4,
        },
        details={
            "ridge_train_accuracy": ridge_train_acc,
            "tune_steps": len(losses),
            "d_new": d_new,
            "d_old": d_old,
            "form": config.form,
            "map_on": config.map_on,
            "map_examples": len(dataset) if config.map_on == "all" else len(selected),
        },
    )


def _old_head(old: Device, state: PersonalState) -> Any:
    """The old personal head as it is: a FaLA head stays one, so a second swap folds the two matrices into one."""
    return old.top(state, merged=state.kind != "fala").head


def _fala_head(old: Device, new: Device, state: PersonalState, matrix: PersonalMatrix, config: SwapConfig) -> Any:
    """The personal head on the new backbone before tuning: the fitted matrix in front of the old personal head
    (in the residual form, on top of the new global head, minus the old global one)."""
    old_head = _old_head(old, state)
    if config.form == "residual":  # the new global head + the user's difference from the old global head
        return compose(matrix, old_head, base=new.top().head, reference=old.top().head)
    return compose(matrix, old_head)


def _write_fala_state(out: Path, head: Any, new: Device, config: SwapConfig, training: dict[str, Any]) -> None:
    """The FaLA head as a personal state of the new package (kind ``fala``; its settings as the tuner's)."""
    params = {k: v for k, v in asdict(config).items() if k != "personalize"}
    tensors = {name: t.detach().clone() for name, t in head.state_dict().items()}
    write_personal_state(
        out,
        tensors,
        new.package,
        train_cut=new.package.num_layers,
        tuner={"name": "fala", "params": params},
        training=training,
        kind="fala",
    )


def _personalize(
    new: Device,
    dataset: TextDataset,
    out: Path,
    config: SwapConfig,
    new_features: np.ndarray | None,
    full_flops: float,
    old: Device | None = None,
    state: PersonalState | None = None,
) -> SwapResult:
    """``retrain`` (all the data, the package's cut) or ``head-only`` (the curated examples, the head; clustered
    over the old personal features too when ``cluster_on`` says so, which needs ``old`` and ``state``)."""
    selected = list(range(len(dataset)))
    job = config.personalize
    t0 = time.perf_counter()
    if config.method == "head-only":
        y = dataset.encoded_labels(LabelMap(tuple(new.labels)))
        features = new.features(dataset.texts) if new_features is None else new_features
        needs_old = config.selection == "cluster" and config.cluster_on != "new" and old is not None
        old_features = old.features(dataset.texts, state) if needs_old else None
        selected = curated_examples(features, y, config, old_features)
        # the head as configured: k curated examples are too few for an inner split to choose between candidates
        job = replace(
            job, select=False, cut=new.package.num_layers, tuner="full", tuner_params={}, head_lr=config.head_only_lr
        )
    elif (job.cut if job.cut is not None else new.package.cut) >= new.package.num_layers:
        # A package that trains the head alone: a head from scratch needs the head-only rate (at the blocks'
        # head rate it barely moves in a few epochs).
        job = replace(job, head_lr=config.head_only_lr)
    selecting = time.perf_counter()
    result = new.personalize(dataset.subset(selected), out, job)
    epochs = len(result.history)
    return SwapResult(
        path=out,
        method=config.method,
        num_examples=len(dataset),
        examples_used=len(selected),
        selected=selected,
        backward_flops=result.backward_flops,
        full_retrain_backward_flops=full_flops,
        seconds={"select": selecting - t0, **result.seconds},
        details={"epochs": epochs, "train_cut": result.train_cut, "best_epoch": result.best_epoch},
    )
