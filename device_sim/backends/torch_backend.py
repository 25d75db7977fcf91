"""Backend ``torch``: the package's top as a plain-torch module, trained by the server's training loop.

The trunk runs once in onnxruntime (plus, when the job trains above a higher
cut than the package's, the frozen top blocks below it in torch) into a
:class:`~edgetune.features.FeatureCache`, in memory or memory-mapped in the
work directory. Each candidate trains on the cache at its own cut (the cache
lifted through the frozen blocks in between, once per cut) with
:class:`~edgetune.top_trainer.TopTrainer` (AdamW, warm-up, early stopping on the inner
validation split, the best epoch kept, atomic checkpoints that an interrupted
job resumes from); every tuner, every cut.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from device_sim.backends import register
from device_sim.backends.base import Backend, Candidate, StaleWorkError
from device_sim.runtime import torch_threads
from device_sim.selection import Trained
from device_sim.settings import PersonalizeConfig
from edgetune.costs import TunerCost
from edgetune.data import LabelMap
from edgetune.features import FeatureCache, data_digest
from edgetune.modeling import TopModel
from edgetune.top_trainer import TopTrainer, seed_all
from edgetune.training_config import TrainError
from edgetune.tuners import Tuner, get_tuner

if TYPE_CHECKING:
    from device_sim.personalize import Job
    from edgetune.package_plan import PackagePlan

Caches = dict[str, FeatureCache | None]


def resolve_tuner(plan: PackagePlan, config: PersonalizeConfig) -> Tuner:
    """The plan's tuner (with its parameters), unless the job names another one or other parameters."""
    name = config.tuner or plan.tuner
    if config.tuner_params is not None:
        params = config.tuner_params
    else:
        params = dict(plan.tuner_params) if name == plan.tuner else {}
    try:
        return get_tuner(name, **params)
    except ValueError as err:
        raise TrainError(str(err)) from None


@torch.inference_mode()
def lift(cache: FeatureCache, top: TopModel, from_cut: int, to_cut: int, batch_size: int = 16) -> FeatureCache:
    """The cache of h_{to_cut} from one of h_{from_cut}: the (frozen, global) blocks in between, in memory."""
    if to_cut == from_cut:
        return cache
    top = top.above(from_cut)
    out = np.zeros(cache.features.shape, dtype=np.float32)
    for start in range(0, len(cache), batch_size):
        idx = np.arange(start, min(start + batch_size, len(cache)))
        hidden, mask = cache.batch(idx)
        out[idx, : hidden.shape[1]] = top.hidden_at(hidden, mask, to_cut).float().numpy()
    return FeatureCache(out, np.asarray(cache.mask), {**cache.key, "cut": to_cut})


@torch.inference_mode()
def top_logits(top: TopModel, cache: FeatureCache | None, batch_size: int = 16) -> np.ndarray:
    """Logits of ``top`` (eval mode) on every example of ``cache``, in order; in batches of a training batch's
    size, so scoring never needs more memory than training (attention over 128 tokens: 64 texts at once held
    ~170 MB more than training did on MiniLM)."""
    if cache is None:
        return np.zeros((0, top.head.out_features), dtype=np.float32)
    modes = [(m, m.training) for m in top.modules()]
    top.eval()
    try:
        out = [top(*cache.batch(np.arange(s, min(s + batch_size, len(cache))))).float().numpy()
               for s in range(0, len(cache), batch_size)]  # fmt: skip
    finally:
        for m, training in modes:
            m.training = training
    return np.concatenate(out)


@register
class TorchBackend(Backend):
    """See the module docstring."""

    name = "torch"
    resumes = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._global_top: TopModel | None = None
        self.caches: dict[int, Caches] = {}  # per cut: the train, validation and guard caches of h_cut
        self.cut = self.package.cut
        self.trained_tops: dict[str, TopModel] = {}  # per candidate: its trained top (adapters unmerged)

    @property
    def global_top(self) -> TopModel:
        """The package's top, frozen: it runs the blocks below a candidate's cut and scores the global model."""
        if self._global_top is None:
            self._global_top = self.package.top_model().eval()
        return self._global_top

    def running(self) -> contextlib.AbstractContextManager[Any]:
        return torch_threads(self.threads)

    def tuner(self, candidate: Candidate) -> Tuner:
        return resolve_tuner(self.package.plan, candidate.config)

    def price_basis(self, candidate: Candidate) -> tuple[int, TunerCost]:
        if candidate.kind != "train":
            return self.package.num_layers, TunerCost()
        blocks = self.global_top.above(candidate.cut).blocks
        model_type = self.package.manifest["backbone"]["model_type"]
        return candidate.cut, self.tuner(candidate).cost_profile(blocks[0], model_type) if len(blocks) else TunerCost()

    def validate(self, candidate: Candidate) -> None:
        """Impossible settings (LoRA layers below the cut) are refused here, before any work."""
        tuner = self.tuner(candidate)
        try:
            get_tuner(tuner.name, **tuner.to_dict()["params"]).prepare(self.package.top_model().above(candidate.cut))
        except ValueError as err:
            raise TrainError(f"tuner {tuner.name}: {err}") from None

    def features(self, job: Job, work: Path) -> dict[str, float]:
        """The trunk once over the splits (onnxruntime, then the frozen top blocks below the job's cut in torch);
        memory-mapped caches in ``work`` are reused by a resumed job."""
        package, config = self.package, self.config

        def trunk(ids_t: torch.Tensor, mask_t: torch.Tensor) -> torch.Tensor:
            hidden = package.run_trunk(ids_t.numpy(), mask_t.numpy(), config.precision, self.threads)
            return self.global_top.hidden_at(torch.from_numpy(hidden), mask_t, job.cut)

        caches: Caches = {}
        seconds: dict[str, float] = {}
        for name in ("train", "val", "guard"):
            t0 = time.perf_counter()
            idx = job.split(name)
            if len(idx) == 0:
                caches[name] = None
                continue
            ids, mask = job.ids[idx], job.mask[idx]
            key = {"package": job.package_digest, "cut": job.cut, "precision": config.precision}
            caches[name] = FeatureCache.reuse_or_build(
                trunk,
                ids,
                mask,
                key={**key, "data": data_digest(ids, mask)},
                path=work / f"features-{name}" if job.cache == "mmap" else None,
                batch_size=config.cache_batch_size,
                dtype=config.cache_dtype,
                progress=config.progress,
            )
            seconds[name] = time.perf_counter() - t0
        package.release_sessions()  # training needs only the cache
        self.cut, self.caches = job.cut, {job.cut: caches}
        return seconds

    def at(self, cut: int) -> Caches:
        """The caches lifted to a higher cut, once per cut."""
        if cut not in self.caches:
            base = self.caches[self.cut]
            self.caches[cut] = {
                k: None if c is None else lift(c, self.global_top, self.cut, cut) for k, c in base.items()
            }
        return self.caches[cut]

    def train(self, candidate: Candidate, job: Job, work: Path) -> Trained:
        """Train one candidate on the cache at its cut; keeps the trained top (adapters unmerged) for scoring."""
        t0 = time.perf_counter()
        trained = self.package.top_model().eval().above(candidate.cut)
        seed_all(candidate.config.seed)  # adapters are initialized from the seed
        tuner = self.tuner(candidate)
        try:
            tuner.prepare(trained)
        except ValueError as err:  # e.g. LoRA layers below the device's cut
            raise TrainError(f"tuner {tuner.name}: {err}") from None
        caches = self.at(candidate.cut)
        train, val = caches["train"], caches["val"]
        assert train is not None
        trainer = TopTrainer(
            trained,
            tuner,
            LabelMap(tuple(self.package.labels)),
            candidate.config.train_config(validating=val is not None),
            checkpoint_dir=work / candidate.checkpoint,
            callbacks=self.callbacks,
            model_hash=job.package_digest,
            cut=candidate.cut,
        )
        val_labels = job.y[job.val_idx] if val is not None else None
        try:
            fit = trainer.fit_sources(train, job.y[job.train_idx], val, val_labels)
        except TrainError as err:
            # a checkpoint in the job's own work directory that no run of this job wrote (an older version's, or
            # one written without the lock): it cannot be resumed; the job starts over without it
            if "checkpoint of a different run" in str(err):
                raise StaleWorkError(str(err)) from None
            raise
        state = fit.state
        best = next((h for h in state.history if h["epoch"] == state.best_epoch), None)
        self.trained_tops[candidate.name] = trained
        return Trained(
            name=candidate.name,
            tensors=fit.delta,
            train_cut=candidate.cut,
            tuner=tuner.to_dict(),
            history=state.history,
            best_epoch=state.best_epoch,
            stopped_early=state.stopped_early,
            trainable_params=fit.trainable_params,
            val_accuracy=float(best["val_accuracy"]) if best is not None else None,
            estimate=candidate.estimate,
            seconds=time.perf_counter() - t0,
        )

    def logits(self, split: str, trained: Trained | None = None) -> np.ndarray:
        if trained is not None and "prior_shift" not in trained.tuner:
            return top_logits(self.trained_tops[trained.name], self.at(trained.train_cut)[split])
        global_logits = top_logits(self.global_top.above(self.cut), self.caches[self.cut][split])
        if trained is None:
            return global_logits
        return global_logits + np.asarray(trained.tuner["prior_shift"])

    def prior_tensors(self, shift: np.ndarray) -> dict[str, Any]:
        head_only = self.package.top_model().eval().above(self.package.num_layers)
        tuner = get_tuner("full")
        tuner.prepare(head_only)
        with torch.no_grad():
            head_only.head.bias += torch.from_numpy(shift).to(head_only.head.bias.dtype)
        return tuner.delta_state(head_only)
