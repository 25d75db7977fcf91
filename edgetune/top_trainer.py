"""The training loop on feature sources, shared by the server and the device.

:class:`TopTrainer` trains a prepared top (:meth:`edgetune.tuners.Tuner.prepare`) on batches of trunk features and
knows nothing of where they came from: the server's :class:`edgetune.train.Trainer` feeds it a torch trunk's cache,
a device job (:mod:`device_sim.backends.torch_backend`) the ONNX trunk's. It lives apart from the server's trainer so
that the device runtime imports the loop alone, not the backbone loading, the trunk and the cache building above it.

The loop runs through HF Accelerate where there is something to distribute or place (several processes, a GPU,
mixed precision); a single CPU process runs it through :class:`SingleProcess`, the few calls of Accelerate's
interface the loop makes, so a device job never imports accelerate. See :mod:`edgetune.train` for the data-parallel
contract (each process draws the same global batch and trains on its share of it) and for checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader

from edgetune.batches import EpochSampler, Source, TrunkBatches, collate_indices
from edgetune.callbacks import Callback, StepEvent, TrainerCallback, as_callbacks, join_state, split_state
from edgetune.checkpoint import Checkpoint, TrainState, identity_mismatch, load_checkpoint, rng_state, set_rng_state
from edgetune.checkpoint import save_checkpoint as write_checkpoint
from edgetune.data import LabelMap
from edgetune.evaluation import METRICS, classification_metrics
from edgetune.features import data_digest
from edgetune.learning_rates import linear_warmup_factor
from edgetune.modeling import TopModel
from edgetune.progress import progress_bar
from edgetune.training_config import TrainConfig, TrainError
from edgetune.tuners import Tuner


@dataclass
class TopFit:
    """What :meth:`TopTrainer.fit_sources` returns: progress, and the trained (best) tensors, unmerged."""

    state: TrainState
    delta: dict[str, torch.Tensor]
    trainable_params: int


def param_groups(params: dict[str, torch.nn.Parameter], lr: float, head_lr: float, weight_decay: float) -> list[dict]:
    """AdamW groups: the head and final norm at ``head_lr``; no weight decay on biases and norm weights."""
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for name, p in params.items():
        rate = head_lr if name.startswith(("head.", "norm.")) else lr
        decay = weight_decay if p.ndim >= 2 else 0.0
        groups.setdefault((rate, decay), []).append(p)
    return [{"params": ps, "lr": rate, "weight_decay": decay} for (rate, decay), ps in groups.items()]


def seed_all(seed: int) -> None:
    """Seed Python's, numpy's and torch's generators (what ``accelerate.utils.set_seed`` does, without it)."""
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def distributed_launch() -> bool:
    import os

    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main_process() -> bool:
    """False in every process of a distributed launch but the first (what writes outputs and prints)."""
    import os

    return int(os.environ.get("RANK", "0")) == 0


def world_and_rank(accelerator: Any) -> tuple[int, int]:
    """``(number of processes, this process's index)`` of an Accelerator or :class:`SingleProcess`."""
    return int(getattr(accelerator, "num_processes", 1)), int(getattr(accelerator, "process_index", 0))


def all_gather_rows(array: np.ndarray, n_per_rank: list[int], device: torch.device) -> list[np.ndarray]:
    """Every process's ``array`` (its first ``n_per_rank[rank]`` rows are real), gathered in rank order. Sent as
    bytes, padded to the longest shard: gloo and NCCL move any dtype that way."""
    import torch.distributed as dist

    rows = max(n_per_rank)
    padded = np.zeros((rows, *array.shape[1:]), dtype=array.dtype)
    padded[: len(array)] = array
    local = torch.from_numpy(padded.reshape(-1).view(np.uint8).copy()).to(device)
    out = [torch.empty_like(local) for _ in n_per_rank]
    dist.all_gather(out, local)
    return [t.cpu().numpy().view(array.dtype).reshape(rows, *array.shape[1:])[:n] for t, n in zip(out, n_per_rank)]


def all_processes(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is true in every process."""
    import torch.distributed as dist

    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def broadcast_from_main(value: Any) -> Any:
    """The main process's ``value`` in every process."""
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def make_accelerator(config: TrainConfig) -> Any:
    """Accelerate where it has work to do (a GPU, mixed precision, more than one process); a single CPU
    process (every device job) runs :class:`SingleProcess` and never imports accelerate."""
    local_device = config.device == "cpu" or (config.device is None and not torch.cuda.is_available())
    if local_device and config.mixed_precision in (None, "no") and not distributed_launch():
        return SingleProcess()
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    # The loop shards each global batch across the processes itself (TopTrainer._step), so the learning-rate
    # schedule steps once per optimizer step, as in one process: Accelerate calls that split_batches.
    accelerator = Accelerator(
        cpu=config.device == "cpu",
        mixed_precision=config.mixed_precision,
        dataloader_config=DataLoaderConfiguration(split_batches=True),
    )
    if config.device is not None and config.device != "cpu" and accelerator.device.type != config.device:
        raise TrainError(f"device {config.device!r} requested but Accelerate found {accelerator.device}")
    return accelerator


class _EpochLoader:
    """A DataLoader whose epoch is set on its sampler (what Accelerate's prepared loader offers)."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader

    def set_epoch(self, epoch: int) -> None:
        self.loader.batch_sampler.sampler.set_epoch(epoch)

    def __iter__(self) -> Any:
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)


class SingleProcess:
    """The part of ``accelerate.Accelerator``'s interface the loop uses, for one CPU process in fp32."""

    device = torch.device("cpu")
    is_main_process = True
    num_processes = 1
    process_index = 0

    def prepare(self, *objects: Any) -> tuple[Any, ...]:
        return tuple(_EpochLoader(o) if isinstance(o, DataLoader) else o for o in objects)

    def autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def clip_grad_norm_(self, params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)

    def wait_for_everyone(self) -> None:
        return None

    def unwrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model


class TopTrainer:
    """Trains a prepared top (see :meth:`Tuner.prepare`) on feature sources; see the module docstring.

    ``model_hash`` and ``cut`` identify what the features are of: a checkpoint
    resumes only under the same ones (with the same data, tuner and settings).
    """

    def __init__(
        self,
        top: TopModel,
        tuner: Tuner,
        label_map: LabelMap,
        config: TrainConfig | None = None,
        checkpoint_dir: str | Path | None = None,
        callbacks: Sequence[Callback] = (),
        model_hash: str = "",
        cut: int | None = None,
        accelerator: Any | None = None,
    ) -> None:
        self.config = config or TrainConfig()  # unset learning rates are resolved when the run's length is known
        self.accelerator = accelerator or make_accelerator(self.config)
        self.top, self.tuner, self.label_map = top, tuner, label_map
        self.cut = top.cut if cut is None else cut
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.callbacks: list[TrainerCallback] = as_callbacks(callbacks)
        self.model_hash = model_hash
        self.cache_dir: Path | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    # -- evaluation ----------------------------------------------------------------
    @torch.no_grad()
    def predict(self, source: Source, batch_size: int | None = None) -> np.ndarray:
        """Logits of the top on every example of ``source``, in order, in batches of ``batch_size`` (default:
        the training batch, so evaluating never needs more memory than a training step)."""
        batch_size = batch_size or self.config.batch_size
        top = self.top
        world, rank = world_and_rank(self.accelerator)
        # several processes: each predicts a contiguous share of the examples; the shares are gathered
        bounds = np.linspace(0, len(source), world + 1).round().astype(int)
        # Restore each submodule's own mode: frozen parts of the top stay in eval mode.
        modes = [(module, module.training) for module in top.modules()]
        top.eval()
        out = [np.zeros((0, len(self.label_map)), dtype=np.float32)]
        try:
            for start in range(bounds[rank], bounds[rank + 1], batch_size):
                hidden, mask = source.batch(np.arange(start, min(start + batch_size, bounds[rank + 1])), self.device)
                with self.accelerator.autocast():
                    out.append(top(hidden, mask).float().cpu().numpy())
        finally:
            for module, training in modes:
                module.training = training
        logits = np.concatenate(out)
        if world > 1:
            logits = np.concatenate(all_gather_rows(logits, np.diff(bounds).tolist(), self.device))
        return logits

    def evaluate(self, source: Source, labels: np.ndarray) -> dict[str, Any]:
        logits = self.predict(source)
        return classification_metrics(labels, logits.argmax(axis=1), list(self.label_map.labels))

    # -- training ------------------------------------------------------------------
    def identity(self, train_source: Source) -> dict[str, Any]:
        ids = train_source.input_ids if isinstance(train_source, TrunkBatches) else None
        data = data_digest(ids, train_source.mask) if ids is not None else train_source.key.get("data")
        current = {
            "cut": self.cut,
            "model_hash": self.model_hash,
            "labels": list(self.label_map.labels),
            "train_data": data,
            "tuner": self.tuner.to_dict(),
            "config": self.config.identity(),
        }
        return json.loads(json.dumps(current))

    def fit_sources(
        self, train: Source, train_labels: np.ndarray, val: Source | None = None, val_labels: np.ndarray | None = None
    ) -> TopFit:
        """Train on feature sources; validate on ``val`` (early stopping, best epoch kept). The top ends with the
        best weights loaded, adapters not merged."""
        y_train = np.asarray(train_labels, dtype=np.int64)
        y_val = None if val_labels is None else np.asarray(val_labels, dtype=np.int64)
        state, best = self._train_loop(train, y_train, val, y_val)
        if best is not None:
            self.tuner.load_delta(self.top, best)
        return TopFit(state, self.tuner.delta_state(self.top), self.tuner.num_trainable(self.top))

    def _train_loop(
        self, train_src: Source, y_train: np.ndarray, val_src: Source | None, y_val: np.ndarray | None
    ) -> tuple[TrainState, dict | None]:
        steps_per_epoch = math.ceil(len(train_src) / self.config.batch_size)
        total = steps_per_epoch * self.config.epochs
        self.config = self.config.with_learning_rates(len(self.top.layers), self.top.num_layers, self.tuner.name, total)
        cfg, acc = self.config, self.accelerator
        identity = self.identity(train_src)

        params = self.tuner.trainable_parameters(self.top)
        groups = param_groups(params, cfg.lr, cfg.head_lr, cfg.weight_decay)
        own = [group for callback in self.callbacks for group in callback.setup(self.device)]
        if own and world_and_rank(acc)[0] > 1:  # DDP all-reduces the gradients of the wrapped top alone
            raise TrainError("a callback that trains parameters of its own runs in a single process only")
        optimizer = torch.optim.AdamW(groups + own)
        warmup = int(cfg.warmup_ratio * total)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: linear_warmup_factor(k, warmup, total))
        sampler = EpochSampler(len(train_src), cfg.seed)
        loader = DataLoader(
            range(len(train_src)),
            batch_sampler=BatchSampler(sampler, cfg.batch_size, drop_last=False),
            collate_fn=collate_indices,
            generator=torch.Generator(),  # DataLoader iterators draw a seed: keep it off the global RNG
        )
        # The loader stays ours in every setting: each process draws the same global batches (see _step).
        model, optimizer, scheduler = acc.prepare(self.top, optimizer, scheduler)
        loader = _EpochLoader(loader)
        labels_t = torch.from_numpy(y_train).to(self.device)

        state, best = self._resume(identity, optimizer, scheduler)
        world, rank = world_and_rank(acc)
        if rank > 0:  # its own dropout masks: not rank 0's (the same seed), the same after a resume
            torch.manual_seed(int(np.random.default_rng([cfg.seed, rank, state.global_step]).integers(2**62)))
        while state.epoch < cfg.epochs and not state.stopped_early:
            epoch = state.epoch
            loader.set_epoch(epoch)
            skip = state.step_in_epoch
            batches = loader if skip == 0 else _skip(loader, skip, epoch)
            model.train()
            t0, losses = time.perf_counter(), []
            with progress_bar(f"epoch {epoch + 1}/{cfg.epochs}", steps_per_epoch - skip, cfg.progress) as advance:
                for idx in batches:
                    for callback in self.callbacks:
                        callback.on_step_begin(state.global_step, total)
                    loss = self._step(model, optimizer, scheduler, params, idx, train_src, labels_t, state, total)
                    losses.append(loss)
                    advance(1)
                    event = StepEvent(epoch, state.step_in_epoch, state.global_step, total, loss)
                    for callback in self.callbacks:
                        callback.on_step_end(event)
                    if cfg.checkpoint_steps and state.global_step % cfg.checkpoint_steps == 0:
                        self.save_checkpoint(identity, state, best, optimizer, scheduler)
            seconds = time.perf_counter() - t0
            row: dict[str, Any] = {"epoch": epoch + 1, "loss": float(np.mean(losses)) if losses else None}
            row.update(seconds=seconds, steps=len(losses), resumed=skip > 0)
            if val_src is not None:
                metrics = self.evaluate(val_src, y_val)
                row.update({f"val_{k}": metrics[k] for k in METRICS})
                best = self._track_best(state, metrics[cfg.metric], epoch + 1, best)
            for callback in self.callbacks:
                callback.on_epoch_end(row)
            state.history.append(row)
            state.epoch, state.step_in_epoch = epoch + 1, 0
            self.save_checkpoint(identity, state, best, optimizer, scheduler)
        return state, best

    def _step(self, model, optimizer, scheduler, params, idx, source, labels, state: TrainState, total: int) -> float:
        cfg, acc = self.config, self.accelerator
        world, rank = world_and_rank(acc)
        if world == 1:
            hidden, mask = source.batch(idx.cpu().numpy(), self.device)
            with acc.autocast():
                logits = model(hidden, mask)
                loss = torch.nn.functional.cross_entropy(logits.float(), labels[idx.to(self.device)])
            acc.backward(loss + self._callback_loss())
        else:
            loss = self._shard_backward(model, idx.cpu().numpy(), source, labels, world, rank)
        self.tuner.before_step(self.top, state.global_step, total)
        if cfg.max_grad_norm:
            acc.clip_grad_norm_(list(params.values()), cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        self.tuner.after_step(self.top, state.global_step, total)
        state.global_step += 1
        state.step_in_epoch += 1
        return float(loss.detach())

    def _callback_loss(self) -> torch.Tensor | float:
        """The callbacks' terms for the batch just run forward (the task loss is what the history records)."""
        terms = [term for callback in self.callbacks if (term := callback.loss()) is not None]
        return sum(terms) if terms else 0.0

    def _shard_backward(self, model, batch: np.ndarray, source: Source, labels, world: int, rank: int) -> torch.Tensor:
        """This process's share of a global batch: examples ``rank::world``, their summed loss scaled by
        ``world / len(batch)``, so that DDP's average of the processes' gradients is the gradient of the whole
        batch's mean loss. A process left without an example (a last batch smaller than ``world``) runs one
        with weight 0, since every process must join each gradient all-reduce. Returns the global batch's mean
        loss (all-reduced)."""
        import torch.distributed as dist

        acc = self.accelerator
        local, weight = batch[rank::world], world / len(batch)
        if len(local) == 0:
            local, weight = batch[:1], 0.0
        hidden, mask = source.batch(local, self.device)
        with acc.autocast():
            logits = model(hidden, mask)
            total = torch.nn.functional.cross_entropy(
                logits.float(), labels[torch.from_numpy(local).to(self.device)], reduction="sum"
            )
        acc.backward(total * weight + self._callback_loss() * (1.0 if weight else 0.0))
        summed = (total.detach() * (1.0 if weight else 0.0)).reshape(1)
        dist.all_reduce(summed)
        return summed[0] / len(batch)

    def _track_best(self, state: TrainState, value: float, epoch: int, best: dict | None) -> dict | None:
        if state.best_metric is None or value > state.best_metric:
            state.best_metric, state.best_epoch, state.epochs_without_improvement = value, epoch, 0
            return self.tuner.delta_state(self.top)
        state.epochs_without_improvement += 1
        if self.config.patience is not None and state.epochs_without_improvement >= self.config.patience:
            state.stopped_early = True
        return best

    # -- checkpoints -----------------------------------------------------------------
    def save_checkpoint(self, identity, state: TrainState, best, optimizer, scheduler) -> None:
        acc = self.accelerator
        if self.checkpoint_dir is None:
            return
        acc.wait_for_everyone()
        if acc.is_main_process:
            ckpt = Checkpoint(
                state=state,
                identity=identity,
                trainable=self.tuner.delta_state(self.top),
                best=best,
                optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(),
                rng=rng_state(),
                tuner_state=join_state(self.tuner.extra_state(self.top), self.callbacks),
            )
            write_checkpoint(self.checkpoint_dir, ckpt)
        acc.wait_for_everyone()

    def _resume(self, identity, optimizer, scheduler) -> tuple[TrainState, dict | None]:
        ckpt = load_checkpoint(self.checkpoint_dir) if self.checkpoint_dir is not None else None
        if ckpt is None:
            return TrainState(), None
        differ = identity_mismatch(ckpt.identity, identity)
        if differ:
            raise TrainError(
                f"{self.checkpoint_dir}: checkpoint of a different run (differs in: {', '.join(differ)}); "
                "use another output directory or overwrite it"
            )
        self.tuner.load_delta(self.top, ckpt.trainable)
        tuner_state, callback_states = split_state(ckpt.tuner_state, self.callbacks)
        self.tuner.load_extra_state(self.top, tuner_state)
        for callback, callback_state in zip(self.callbacks, callback_states):
            callback.load_state_dict(callback_state)
        optimizer.load_state_dict(ckpt.optimizer)
        scheduler.load_state_dict(ckpt.scheduler)
        set_rng_state(ckpt.rng)
        return ckpt.state, ckpt.best

    def _scratch(self) -> Path:
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            return self.cache_dir
        if self._tmp is None:  # named with this process's id: a killed run's cache is swept by the next run
            from edgetune.io import private_tempdir

            self._tmp = private_tempdir("edgetune-cache-")
        return Path(self._tmp.name)

    def cleanup(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def _skip(loader: _EpochLoader, batches: int, epoch: int) -> Any:
    """The loader's batches of ``epoch`` after the first ``batches`` (a resume in the middle of an epoch)."""
    import itertools

    loader.set_epoch(epoch)
    return itertools.islice(iter(loader), batches, None)
