"""Reference trainer: fine-tune a model the way a plan says, optionally on cached trunk features.

The plan's cut k freezes the embeddings and blocks 1..k (the *trunk*); blocks
k+1..L, the final norm and the head (the *top*) are trained by a tuner
(:mod:`edgetune.tuners`). Two modes give the same result for the same seed:

* ``naive``  — the frozen trunk (eval mode) runs on every batch under ``no_grad``;
* ``cached`` — the trunk runs once over the data (:class:`~edgetune.features.FeatureCache`,
  in memory or memory-mapped) and training runs only the top.

Both draw the same batches (an epoch-seeded permutation), the same batch widths
and the same dropout masks (the trunk draws no random numbers in eval mode), so
they differ only by float rounding in the trunk. The loop runs through HF
Accelerate where there is something to distribute or place (``accelerate
launch`` runs the same code on several GPUs, DDP/FSDP; a GPU; mixed
precision); a single CPU process runs it through :class:`~edgetune.top_trainer.SingleProcess`, the
few calls of Accelerate's interface the loop makes, so a device job never
imports accelerate.
Checkpoints (:mod:`edgetune.checkpoint`) are atomic; a run that finds a
checkpoint of the same identity in its output directory resumes from it.

Data parallel (``torchrun --nproc_per_node N -m edgetune_cli train ...`` or
``accelerate launch --multi_gpu --num_processes N -m edgetune_cli train ...``;
gloo on CPUs, NCCL on GPUs): every process draws the same global batch (the
epoch permutation depends on the seed alone) and trains on its share of it
(examples ``rank::world``), the loss weighted so that DDP's gradient average
is the gradient of the global batch's mean loss, so N processes train the
model one process would, up to float rounding (and dropout masks: each
process draws its own). The feature cache is built once: each process runs
the trunk over its shard of the examples and the shards are gathered; the main
process writes it (``--cache mmap``) and the others map the file. Validation
and test predictions are sharded and gathered; checkpoints are written by the
main process only, and every process resumes from them.

:class:`TopTrainer` is the loop itself: it trains an already prepared top on
feature sources and knows nothing of where the features came from.
:class:`Trainer` adds the server side (the whole classifier, its torch trunk,
the cache). A device builds its feature cache with onnxruntime and drives a
:class:`TopTrainer` directly (:mod:`device_sim.personalize`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgetune.backbones import Backbone
from edgetune.batches import Source, TrunkBatches, trunk_released
from edgetune.callbacks import Callback
from edgetune.data import LabelMap, TextDataset
from edgetune.features import FeatureCache, data_digest
from edgetune.modeling import SequenceClassifier
from edgetune.tokenization import TextEncoder
from edgetune.top_trainer import (  # noqa: F401 (TopTrainer, is_main_process: re-exported, used by callers)
    TopTrainer,
    all_gather_rows,
    all_processes,
    broadcast_from_main,
    is_main_process,
    make_accelerator,
    seed_all,
    world_and_rank,
)

# TrainConfig's fields are declared in training_config.py (shared with the device's PersonalizeConfig).
from edgetune.training_config import CACHE_PLACES, MODES, TrainConfig, TrainError, TrainingConfig  # noqa: F401
from edgetune.tuners import Tuner


@dataclass
class TrainResult:
    classifier: SequenceClassifier
    encoder: TextEncoder
    tuner: Tuner
    cut: int
    history: list[dict[str, Any]]
    best_epoch: int | None
    stopped_early: bool
    trainable_params: int
    cache_seconds: float
    cache_bytes: int
    config: TrainConfig = field(default_factory=TrainConfig)
    delta: dict[str, torch.Tensor] = field(default_factory=dict)
    metrics: dict[str, Any] | None = None
    lr_search: list[dict[str, Any]] | None = None  # finetune(search_lr=True): every candidate's validation score
    processes: int = 1  # data-parallel processes that trained it

    @property
    def epoch_seconds(self) -> list[float]:
        return [h["seconds"] for h in self.history]

    def summary(self) -> dict[str, Any]:
        """JSON-ready description of the run (written as ``train.json``)."""
        return {
            "cut": self.cut,
            "config": asdict(self.config),
            "tuner": self.tuner.to_dict(),
            "trainable_params": self.trainable_params,
            "history": self.history,
            "best_epoch": self.best_epoch,
            "stopped_early": self.stopped_early,
            "cache_seconds": self.cache_seconds,
            "cache_bytes": self.cache_bytes,
            "metrics": self.metrics,
            "lr_search": self.lr_search,
            "processes": self.processes,
            "tuner_report": getattr(self.tuner, "report", None),  # e.g. DSEE's pruning: sparsity and FLOPs
        }


class Trainer(TopTrainer):
    """The server side: a whole classifier whose top is trained above ``cut``, its trunk run by torch."""

    def __init__(
        self,
        backbone: Backbone,
        encoder: TextEncoder,
        cut: int,
        label_map: LabelMap,
        tuner: Tuner,
        config: TrainConfig | None = None,
        checkpoint_dir: str | Path | None = None,
        cache_dir: str | Path | None = None,
        callbacks: Sequence[Callback] = (),
        model_hash: str | None = None,
    ) -> None:
        config = config or TrainConfig()
        accelerator = make_accelerator(config)
        model_hash = model_hash or backbone.fingerprint()
        seed_all(config.seed)
        self.encoder = encoder
        self.classifier = SequenceClassifier(backbone, len(label_map), list(label_map.labels))
        top = tuner.prepare(self.classifier, cut)
        self.classifier.to(accelerator.device).eval()
        super().__init__(top, tuner, label_map, config, checkpoint_dir, callbacks, model_hash, cut, accelerator)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None

    def trunk(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.classifier.trunk_forward(input_ids, attention_mask, self.cut)

    # -- data ----------------------------------------------------------------------
    def source(self, dataset: TextDataset, name: str = "train") -> Source:
        """Batches of h_cut for ``dataset``: a feature cache (cached mode) or the live trunk (naive)."""
        ids, mask = self.encoder(dataset.texts)
        if self.config.mode == "naive":
            return TrunkBatches(self.trunk, ids, mask)
        return self.build_cache(ids, mask, name)

    def build_cache(self, input_ids: np.ndarray, attention_mask: np.ndarray, name: str = "train") -> FeatureCache:
        cfg = self.config
        key = {"model_hash": self.model_hash, "cut": self.cut, "data": data_digest(input_ids, attention_mask)}
        key["dtype"] = cfg.cache_dtype
        if world_and_rank(self.accelerator)[0] > 1:
            return self._build_sharded_cache(input_ids, attention_mask, key, name)
        return FeatureCache.reuse_or_build(
            self.trunk,
            input_ids,
            attention_mask,
            key=key,
            path=self._cache_path(input_ids.shape, name),
            batch_size=cfg.cache_batch_size,
            dtype=cfg.cache_dtype,
            device=self.device,
            progress=cfg.progress,
        )

    def _build_sharded_cache(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, key: dict[str, Any], name: str
    ) -> FeatureCache:
        """The cache built once by all processes together: each runs the trunk over examples ``rank::world``; the
        shards are gathered into every process; the main process writes the file (memory-mapped cache) and the
        others map it. A cache already on disk with the same key is reused by all."""
        cfg, acc = self.config, self.accelerator
        world, rank = world_and_rank(acc)
        path = broadcast_from_main(self._cache_path(input_ids.shape, name))  # one decision: the main process's
        found = FeatureCache.open(path, expect=key) if path is not None else None
        if all_processes(found is not None, self.device) and found is not None:  # every process sees it
            return found
        n, width = input_ids.shape
        shards = [np.arange(r, n, world) for r in range(world)]
        mine = shards[rank]
        part = FeatureCache.build(
            self.trunk,
            input_ids[mine],
            attention_mask[mine],
            batch_size=cfg.cache_batch_size,
            dtype=cfg.cache_dtype,
            device=self.device,
            progress=cfg.progress and acc.is_main_process,
        ) if len(mine) else None  # fmt: skip
        hidden = self.classifier.backbone.hidden_size
        local = part.features if part is not None else np.zeros((0, width, hidden), dtype=cfg.cache_dtype)
        gathered = all_gather_rows(np.asarray(local), [len(s) for s in shards], self.device)
        features = np.zeros((n, width, local.shape[-1]), dtype=cfg.cache_dtype)
        for idx, rows in zip(shards, gathered):
            features[idx] = rows
        full_key = {**key, "num_examples": int(n), "width": int(width)}
        cache = FeatureCache(features, attention_mask.astype(np.uint8), full_key)
        if path is None:
            return cache
        if acc.is_main_process:
            cache.save(path)
        acc.wait_for_everyone()
        mapped = FeatureCache.open(path, expect=key)
        return mapped if mapped is not None else cache  # a path only the main process's node sees: in memory

    def _cache_path(self, shape: tuple[int, ...], name: str) -> Path | None:
        cfg = self.config
        place = cfg.cache
        if place == "auto":
            import psutil

            nbytes = shape[0] * shape[1] * self.classifier.backbone.hidden_size * np.dtype(cfg.cache_dtype).itemsize
            place = "memory" if nbytes <= 0.25 * psutil.virtual_memory().available else "mmap"
        if place == "memory":
            return None
        return self._scratch() / name

    def fit(
        self,
        train: TextDataset | Source,
        train_labels: np.ndarray | None = None,
        val: TextDataset | Source | None = None,
        val_labels: np.ndarray | None = None,
    ) -> TrainResult:
        """Train on ``train`` (texts, or a prebuilt source with ``train_labels``); validate on ``val``."""
        cfg = self.config
        start = time.perf_counter()
        train_src, y_train = self._as_source(train, train_labels, "train")
        val_src, y_val = (None, None) if val is None else self._as_source(val, val_labels, "val")
        cache_seconds = time.perf_counter() - start
        release = cfg.release_trunk and self.cut > 0
        with trunk_released(self.classifier, self.cut, self._scratch()) if release else contextlib.nullcontext():
            fit = self.fit_sources(train_src, y_train, val_src, y_val)
        self.tuner.merge(self.top)
        self.classifier.eval()
        return TrainResult(
            classifier=self.classifier,
            encoder=self.encoder,
            tuner=self.tuner,
            cut=self.cut,
            history=fit.state.history,
            best_epoch=fit.state.best_epoch,
            stopped_early=fit.state.stopped_early,
            trainable_params=fit.trainable_params,
            cache_seconds=cache_seconds,
            cache_bytes=train_src.nbytes if isinstance(train_src, FeatureCache) else 0,
            config=self.config,  # with the learning rates the run resolved
            delta=fit.delta,
            processes=world_and_rank(self.accelerator)[0],
        )

    def _as_source(self, data: TextDataset | Source, labels: np.ndarray | None, name: str) -> tuple[Source, np.ndarray]:
        if isinstance(data, TextDataset):
            return self.source(data, name), data.encoded_labels(self.label_map)
        if labels is None:
            raise ValueError("pass the labels of a prebuilt feature source")
        return data, np.asarray(labels, dtype=np.int64)
