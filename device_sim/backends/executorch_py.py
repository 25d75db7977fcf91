"""Backend ``executorch``: the package's ``top_train.pte`` run by ExecuTorch's Python bindings.

Each step runs the program's ``forward`` (loss, logits, gradients, parameters)
with ``clone_outputs=False``: the parameter outputs are the runtime's live
weights, so ``torch.optim.AdamW`` (the torch backend's groups, schedule and
clipping) updating them in place trains the program. The bindings link
libtorch, so this backend imports torch (not transformers, not the server
trainer); the ``executorch-cpp`` backend runs the same program without it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from device_sim.backends.job import (
    BackendError,
    Candidate,
    Prepared,
    batch_width,
    begin,
    epoch_order,
    lr_factor,
    metrics,
    param_settings,
    prepare,
    run_candidates,
    schedule,
)
from device_sim.settings import PersonalizeConfig

if TYPE_CHECKING:
    from device_sim.package import DevicePackage
    from device_sim.profiles import DeviceProfile
    from device_sim.selection import PersonalizeResult
    from edgetune.data import TextDataset

BACKEND = "executorch"


class ProgramRunner:
    """``top_train.pte`` loaded once; :meth:`step` returns the loss and logits and leaves gradients in ``grads``."""

    def __init__(self, path: Path, program: dict[str, Any]) -> None:
        from executorch.extension.pybindings.portable_lib import _load_for_executorch

        self.module = _load_for_executorch(str(path))
        self.names = [p["name"] for p in program["train"]["parameters"]]
        self.grad_start = int(self.module.run_method("__et_training_gradients_index_forward", ())[0])
        self.param_start = int(self.module.run_method("__et_training_parameters_index_forward", ())[0])
        if self.param_start - self.grad_start != len(self.names):
            raise BackendError(
                f"{path}: {self.param_start - self.grad_start} trained tensors, manifest lists {self.names}"
            )
        self.params: list[Any] | None = None  # the runtime's weights, aliased (known after the first run)
        self.grads: list[Any] = []

    def run(self, features: np.ndarray, mask: np.ndarray, labels: np.ndarray, idx: np.ndarray) -> tuple[float, Any]:
        import torch

        m = mask[idx]
        w = max(batch_width(m), 2)
        feeds = (
            torch.from_numpy(np.ascontiguousarray(features[idx, :w], dtype=np.float32)),
            torch.from_numpy(m[:, :w].astype(np.int64)),
            torch.from_numpy(labels[idx].astype(np.int64)),
        )
        outputs = self.module.run_method("forward", feeds, clone_outputs=False)
        if self.params is None:
            self.params = list(outputs[self.param_start :])
        self.grads = list(outputs[self.grad_start : self.param_start])
        return float(outputs[0]), outputs[1].clone()


def personalize(
    package: DevicePackage,
    data: str | Path | TextDataset,
    out: str | Path,
    config: PersonalizeConfig | None = None,
    profile: DeviceProfile | None = None,
    threads: int | None = None,
    callbacks: Sequence[Callable[[int, float], None]] = (),
) -> PersonalizeResult:
    """Personalize ``package`` on ``data`` with the ExecuTorch Python runtime; the personal state goes to ``out``."""
    import torch

    start = time.perf_counter()
    out, settings, threads = begin(out, config, profile, threads)
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        job, candidates, skipped = prepare(package, data, settings, profile, threads, BACKEND)
        program_file = package.file(job.program["train"]["file"])

        def train(cand: Candidate) -> tuple:  # a fresh program: every candidate starts from the package's weights
            return _train(ProgramRunner(program_file, job.program), job, cand, callbacks)

        result = run_candidates(package, out, job, candidates, skipped, train, settings, profile, threads, BACKEND)
    finally:
        torch.set_num_threads(old_threads)
    result.seconds["total"] = time.perf_counter() - start
    return result


def _train(
    runner: ProgramRunner, job: Prepared, cand: Candidate, callbacks: Sequence[Callable[[int, float], None]]
) -> tuple[dict[str, np.ndarray], list[dict[str, Any]], int | None, bool, list[float]]:
    """One candidate's run: AdamW on the runtime's live weights, early stopping on the inner validation split;
    returns ``(best tensors, history, best epoch, stopped early, step losses)``."""
    import torch

    settings = cand.settings
    features, mask = job.train
    y_train = job.y[job.train_idx]
    n = len(y_train)
    groups = param_settings(job.program, settings, cand.head_only)
    warmup, total = schedule(n, settings)
    history: list[dict[str, Any]] = []
    losses: list[float] = []
    best: dict[str, np.ndarray] | None = None
    best_metric, best_epoch, without, stopped = None, None, 0, False
    optimizer = scheduler = None
    step = 0
    for epoch in range(settings.epochs):
        t0, epoch_losses = time.perf_counter(), []
        order = epoch_order(n, settings.seed, epoch)
        for s in range(0, n, settings.batch_size):
            loss, _ = runner.run(features, mask, y_train, order[s : s + settings.batch_size])
            params = runner.params
            assert params is not None
            if optimizer is None:  # the live weights are known after the first run
                by_group: dict[tuple[float, float], list[Any]] = {}
                for p, (_, lr, decay, _shape) in zip(params, groups):
                    by_group.setdefault((lr, decay), []).append(p)
                optimizer = torch.optim.AdamW(
                    [{"params": ps, "lr": lr, "weight_decay": decay} for (lr, decay), ps in by_group.items()]
                )
                scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: lr_factor(k, warmup, total))
            for p, g in zip(params, runner.grads):
                p.grad = g
            if settings.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
            optimizer.step()
            scheduler.step()
            for p in params:
                p.grad = None
            losses.append(loss)
            epoch_losses.append(loss)
            for callback in callbacks:
                callback(step, loss)
            step += 1
        row: dict[str, Any] = {"epoch": epoch + 1, "loss": float(np.mean(epoch_losses))}
        row.update(seconds=time.perf_counter() - t0, steps=len(epoch_losses), resumed=False)
        if job.val is not None:
            scores = _evaluate(runner, job, settings)
            row.update({f"val_{k}": v for k, v in scores.items()})
            value = scores[settings.metric]
            if best_metric is None or value > best_metric:
                best_metric, best_epoch, without = value, epoch + 1, 0
                best = {name: p.detach().numpy().copy() for (name, *_), p in zip(groups, runner.params or [])}
            else:
                without += 1
                stopped = settings.patience is not None and without >= settings.patience
        history.append(row)
        if stopped:
            break
    if best is None:
        best = {name: p.detach().numpy().copy() for (name, *_), p in zip(groups, runner.params or [])}
    return best, history, best_epoch, stopped, losses


def _evaluate(runner: ProgramRunner, job: Prepared, settings: PersonalizeConfig) -> dict[str, float]:
    features, mask = job.val
    y_val = job.y[job.val_idx]
    preds = []
    for s in range(0, len(y_val), settings.batch_size):
        idx = np.arange(s, min(s + settings.batch_size, len(y_val)))
        _, logits = runner.run(features, mask, y_val, idx)
        preds.append(logits.numpy().argmax(axis=1))
    return metrics(y_val, np.concatenate(preds))
