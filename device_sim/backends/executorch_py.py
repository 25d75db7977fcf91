"""Backend ``executorch``: the package's training programs (``top_train.pte``, ``top_train_lora.pte``) run by
ExecuTorch's Python bindings.

Each step runs the program's ``forward`` (loss, logits, gradients, parameters)
with ``clone_outputs=False``: the parameter outputs are the runtime's live
weights, so ``torch.optim.AdamW`` (the torch backend's groups, schedule and
clipping) updating them in place trains the program. The bindings link
libtorch, so this backend imports torch (not transformers, not the server
trainer); the ``executorch-cpp`` backend runs the same program without it.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import numpy as np

from device_sim.backends import register
from device_sim.backends.base import BackendError, Candidate
from device_sim.backends.program import (
    ProgramBackend,
    ProgramRun,
    epoch_order,
    lr_factor,
    metrics,
    param_settings,
    schedule,
)
from device_sim.runtime import torch_threads
from edgetune.arrays import batch_width
from edgetune_format.manifest import training_call_rows


class ProgramRunner:
    """A training program loaded once (``entry``: its manifest entry; ``max_batch``: the rows it takes per call);
    :meth:`run` returns the loss and logits and leaves gradients in ``grads``."""

    def __init__(self, path: Path, entry: dict[str, Any], max_batch: int) -> None:
        from executorch.extension.pybindings.portable_lib import _load_for_executorch

        self.module = _load_for_executorch(str(path))
        self.max_batch = max_batch
        self.names = [p["name"] for p in entry["parameters"]]
        self.grad_start = int(self.module.run_method("__et_training_gradients_index_forward", ())[0])
        self.param_start = int(self.module.run_method("__et_training_parameters_index_forward", ())[0])
        if self.param_start - self.grad_start != len(self.names):
            raise BackendError(
                f"{path}: {self.param_start - self.grad_start} trained tensors, manifest lists {self.names}"
            )
        self.params: list[Any] | None = None  # the runtime's weights, aliased (known after the first run)
        self.grads: list[Any] = []

    def run(self, features: np.ndarray, mask: np.ndarray, labels: np.ndarray, idx: np.ndarray) -> tuple[float, Any]:
        """The mean loss, logits and gradients over the rows ``idx``: in calls of at most ``max_batch`` rows whose
        losses and gradients are averaged weighted by their rows (the gradient of the mean loss over all rows)."""
        import torch

        if len(idx) <= self.max_batch:
            return self._call(features, mask, labels, idx)
        loss, logits, grads = 0.0, [], None
        for s in range(0, len(idx), self.max_batch):
            part = idx[s : s + self.max_batch]
            weight = len(part) / len(idx)
            part_loss, part_logits = self._call(features, mask, labels, part)
            loss += weight * part_loss
            logits.append(part_logits)
            if grads is None:  # the program's outputs are overwritten by its next call: accumulate in copies
                grads = [g * weight for g in self.grads]
            else:
                for acc, g in zip(grads, self.grads):
                    acc.add_(g, alpha=weight)
        self.grads = grads or []
        return loss, torch.cat(logits)

    def logits(self, features: np.ndarray, mask: np.ndarray, labels: np.ndarray, idx: np.ndarray) -> Any:
        """The logits of the rows ``idx`` (gradients are computed by the program but not kept)."""
        import torch

        parts = range(0, len(idx), self.max_batch)
        return torch.cat([self._call(features, mask, labels, idx[s : s + self.max_batch])[1] for s in parts])

    def _call(self, features: np.ndarray, mask: np.ndarray, labels: np.ndarray, idx: np.ndarray) -> tuple[float, Any]:
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


@register
class ExecuTorchPython(ProgramBackend):
    """See the module docstring."""

    name = "executorch"
    cache = "memory"

    def running(self) -> contextlib.AbstractContextManager[Any]:
        return torch_threads(self.threads)

    def run_program(self, candidate: Candidate, work: Path) -> ProgramRun:
        """A fresh program: every candidate starts from the package's weights; AdamW on the runtime's live
        weights, early stopping on the inner validation split."""
        import torch

        entry = self.training_entry(candidate)
        runner = ProgramRunner(self.package.file(entry["file"]), entry, training_call_rows(self.program, entry))
        settings = candidate.config
        features, mask = self.split_features["train"]
        y_train = self.y["train"]
        n = len(y_train)
        groups = param_settings(entry, settings, candidate.head_only)
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
                for callback in self.callbacks:
                    callback(step, loss)
                step += 1
            row: dict[str, Any] = {"epoch": epoch + 1, "loss": float(np.mean(epoch_losses))}
            row.update(seconds=time.perf_counter() - t0, steps=len(epoch_losses), resumed=False)
            if self.split_features["val"] is not None:
                scores = self.evaluate(runner, settings.batch_size)
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
        return ProgramRun(best, history, best_epoch, stopped, losses)

    def evaluate(self, runner: ProgramRunner, batch_size: int) -> dict[str, float]:
        """Accuracy and macro-F1 of the program's current weights on the inner validation split."""
        val = self.split_features["val"]
        assert val is not None
        features, mask = val
        y_val = self.y["val"]
        preds = []
        for s in range(0, len(y_val), batch_size):
            idx = np.arange(s, min(s + batch_size, len(y_val)))
            preds.append(runner.logits(features, mask, y_val, idx).numpy().argmax(axis=1))
        return metrics(y_val, np.concatenate(preds))
