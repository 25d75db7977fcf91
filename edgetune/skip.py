"""HadSkip: learnable layer skipping for an inference budget.

HadSkip (Wang et al., Findings of EMNLP 2023, "Homotopic and Adaptive Layer
Skipping of Pre-trained Language Models for Efficient Inference"). Only the
abstract is public; our reading:

* **Gate before each block.** Block l runs as
  h_l = h_{l-1} + g_l (f_l(h_{l-1}) - h_{l-1}), g_l in [0, 1]; g_l = 0 is the
  identity, i.e. the block is skipped. The gate's logit is
  z_l = b_l + u_l . LN(pool(h_{l-1})): a per-layer bias plus (``adaptive``) a
  per-example term read from the block's own input (u_l starts at 0).
* **Budget penalty.** loss = CE + lambda (mean_{examples, layers} g - B)^2 with
  B the target fraction of blocks executed.
* **Fine-grained initialization.** Before training, each block's importance is
  measured on a calibration sample as the change of the pooled final
  representation when that block alone is skipped (1 - cosine). The biases
  start at +s for the round(B L) (half up) most important blocks and -s for the rest,
  scaled by how far each importance is from the keep/skip threshold, so the
  gated model starts close to a sensible B-budget model instead of at 0.5.
* **Homotopic optimization.** g = sigmoid(z / T) with the temperature T
  annealed geometrically from ``temperature_start`` to ``temperature_end``:
  training moves continuously from a smooth relaxation to the discrete
  problem, so at the end the gates are (numerically) binary and the penalty
  acts on the executed fraction itself.
* **Inference.** Hard gates (z > 0). ``adaptive`` gates skip per example; for
  export, a *static* skip set for the whole task keeps the round(B L) blocks
  with the highest mean gate probability over a calibration sample, and the
  skipped blocks are not computed at all.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgetune.backbones import Backbone
from edgetune.callbacks import Callback, TrainerCallback
from edgetune.data import LabelMap, TextDataset, sample
from edgetune.modeling import SequenceClassifier, TopModel
from edgetune.tokenization import TextEncoder
from edgetune.traces import length_sorted_batches
from edgetune.train import Trainer
from edgetune.training_config import HadSkipConfig
from edgetune.tuners import get_tuner


class LayerGates(nn.Module):
    """One gate logit per block: bias + (adaptive) a linear read of the block's pooled input."""

    def __init__(self, num_layers: int, hidden_size: int, adaptive: bool = True) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(num_layers))
        self.adaptive = adaptive
        self.weight = nn.Parameter(torch.zeros(num_layers, hidden_size)) if adaptive else None

    def logits(self, layer: int, pooled: torch.Tensor) -> torch.Tensor:
        z = self.bias[layer].expand(pooled.shape[0])
        if self.weight is not None:
            z = z + nn.functional.layer_norm(pooled, pooled.shape[-1:]) @ self.weight[layer]
        return z


class GateRunner:
    """Runs a top's blocks behind HadSkip gates: set as :attr:`TopModel.block_runner`.

    Soft (training): h <- h + g (f(h) - h) with g = sigmoid(z / T). Hard (inference): an example runs the
    block only where z > 0, and the block is called on those examples alone. The gate of every block of the
    last forward pass is kept in :attr:`values` (the budget penalty reads them).
    """

    def __init__(self, gates: LayerGates, temperature: float = 1.0, hard: bool = False) -> None:
        self.gates, self.temperature, self.hard = gates, temperature, hard
        self.values: list[torch.Tensor] = []

    def __call__(
        self, top: TopModel, position: int, hidden: torch.Tensor, mask: torch.Tensor, kwargs: dict[str, Any]
    ) -> torch.Tensor:
        if position == 0:
            self.values = []
        block = top.blocks[position]
        z = self.gates.logits(top.layers[position], top.pool(hidden, mask))
        if self.hard:
            run = z > 0
            self.values.append(run.to(hidden.dtype))
            if run.any():
                hidden = hidden.clone()
                sub = {k: _rows(v, run) for k, v in kwargs.items()}
                hidden[run] = top.family.run_block(block, hidden[run], sub)
            return hidden
        g = torch.sigmoid(z / self.temperature)
        self.values.append(g)
        out = top.family.run_block(block, hidden, kwargs)
        return hidden + g[:, None, None] * (out - hidden)

    def gate_matrix(self) -> torch.Tensor:
        """(batch, blocks) gates of the last forward pass."""
        return torch.stack(self.values, dim=1)


class SkipClassifier(nn.Module):
    """A SequenceClassifier whose blocks sit behind HadSkip gates."""

    def __init__(self, classifier: SequenceClassifier, adaptive: bool = True) -> None:
        super().__init__()
        self.classifier = classifier
        b = classifier.backbone
        self.gates = LayerGates(b.num_layers, b.hidden_size, adaptive)
        self.temperature = 1.0

    @property
    def num_layers(self) -> int:
        return self.classifier.num_layers

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, hard: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and the (B, L) gate values; ``hard`` skips per example with z > 0 (no blended compute)."""
        top = self.classifier.top(0)
        runner = GateRunner(self.gates, self.temperature, hard)
        top.block_runner = runner
        logits = top(self.classifier.backbone.embed(input_ids, attention_mask), attention_mask)
        return logits, runner.gate_matrix()


def _rows(value: Any, rows: torch.Tensor) -> Any:
    """Select the examples of a block kwarg (masks have a batch dim; rotary tables may not)."""
    if isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[0] == rows.shape[0]:
        return value[rows]
    if isinstance(value, tuple):
        return tuple(_rows(v, rows) for v in value)
    return value


def run_static(
    classifier: SequenceClassifier, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: list[int]
) -> torch.Tensor:
    """Logits with only the blocks in ``keep`` (0-based) executed; the others are never called."""
    b = classifier.backbone
    hidden = b.run_blocks(b.embed(input_ids, attention_mask), attention_mask, sorted(keep))
    return classifier.head(b.pool(b.norm(hidden), attention_mask))


@torch.no_grad()
def block_importance(classifier: SequenceClassifier, encoder: TextEncoder, texts: list[str]) -> np.ndarray:
    """1 - cos(final pooled representation, same with block l skipped), mean over ``texts``."""
    b = classifier.backbone
    device = next(classifier.parameters()).device
    ids, mask = (torch.from_numpy(a).to(device) for a in encoder(texts))
    L = b.num_layers

    def final(keep: list[int]) -> torch.Tensor:
        return b.pool(b.norm(b.run_blocks(b.embed(ids, mask), mask, keep)), mask)

    was_training = classifier.training
    classifier.eval()
    ref = final(list(range(L)))
    scores = []
    for skipped in range(L):
        rep = final([i for i in range(L) if i != skipped])
        scores.append(float((1 - nn.functional.cosine_similarity(ref, rep, dim=-1)).mean()))
    classifier.train(was_training)
    return np.array(scores)


def fine_grained_init(gates: LayerGates, importance: np.ndarray, budget: float, scale: float) -> None:
    """Biases: positive for the round(B L) most important blocks, negative for the rest."""
    L = len(importance)
    keep = max(1, int(budget * L + 0.5))  # round half up: 0.75 of 6 blocks keeps 5
    order = np.sort(importance)[::-1]
    threshold = order[keep - 1] if keep == L else 0.5 * (order[keep - 1] + order[keep])
    spread = max(float(np.std(importance)), 1e-8)
    z = (importance - threshold) / spread
    z = np.sign(z) * np.maximum(np.abs(z), 0.5)  # no gate starts undecided at exactly 0
    with torch.no_grad():
        gates.bias.copy_(torch.as_tensor(np.clip(scale * z, -3 * scale, 3 * scale), dtype=gates.bias.dtype))


@dataclass
class HadSkipResult:
    config: dict[str, Any]
    importance: list[float]
    executed_fraction: float  # mean hard gate at the end of training, on the training data
    mean_gate: list[float]  # per-block mean gate probability on the calibration sample
    keep: list[int]  # static skip set for export: blocks kept (0-based)
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def skipped(self) -> list[int]:
        return [i for i in range(len(self.mean_gate)) if i not in self.keep]


def temperature_at(step: int, total: int, start: float, end: float) -> float:
    """Geometric annealing from ``start`` (step 0) to ``end`` (last step)."""
    if total <= 1:
        return end
    return start * (end / start) ** (step / (total - 1))


def static_keep(mean_gate: np.ndarray, budget: float) -> list[int]:
    """The round(B L) blocks with the highest mean gate probability (ties: lower block first)."""
    keep = max(1, int(budget * len(mean_gate) + 0.5))
    order = sorted(range(len(mean_gate)), key=lambda i: (-mean_gate[i], i))
    return sorted(order[:keep])


class HadSkipSchedule(TrainerCallback):
    """HadSkip inside the shared training loop: the gates train at their own rate, their temperature is
    annealed before every step, and the budget penalty lambda (mean gate - B)^2 joins the task loss."""

    def __init__(self, runner: GateRunner, config: HadSkipConfig) -> None:
        self.runner, self.config = runner, config
        # summed where the gates live and read once an epoch: no device-to-host sync on every step
        self._gate_sum: torch.Tensor | float = 0.0
        self._steps = 0

    def setup(self, device: torch.device) -> list[dict[str, Any]]:
        self.runner.gates.to(device)
        return [{"params": list(self.runner.gates.parameters()), "lr": self.config.gate_lr, "weight_decay": 0.0}]

    def on_step_begin(self, step: int, total_steps: int) -> None:
        cfg = self.config
        self.runner.temperature = temperature_at(step, total_steps, cfg.temperature_start, cfg.temperature_end)

    def loss(self) -> torch.Tensor:
        mean_gate = self.runner.gate_matrix().mean()
        self._gate_sum = self._gate_sum + mean_gate.detach()
        self._steps += 1
        return self.config.penalty * (mean_gate - self.config.budget) ** 2

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        # the mean over the steps this process ran (after a resume mid-epoch: since the resume)
        row.update(temperature=self.runner.temperature, mean_gate=float(self._gate_sum) / max(self._steps, 1))
        self._gate_sum, self._steps = 0.0, 0

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: t.detach().cpu().clone() for name, t in self.runner.gates.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.runner.gates.load_state_dict(state)


def train_hadskip(
    backbone: Backbone,
    encoder: TextEncoder,
    dataset: TextDataset,
    label_map: LabelMap,
    config: HadSkipConfig | None = None,
    checkpoint_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    callbacks: Sequence[Callback] = (),
) -> tuple[SkipClassifier, HadSkipResult]:
    """Fine-tune a new classifier on ``backbone`` jointly with HadSkip gates under ``config.budget``.

    The training itself is the project's trainer (cut 0: every block and the head train, the embeddings stay
    frozen and are cached) with a :class:`HadSkipSchedule`; a ``checkpoint_dir`` makes the run resumable.
    """
    cfg = config or HadSkipConfig()
    trainer = Trainer(backbone, encoder, 0, label_map, get_tuner("full"), cfg, checkpoint_dir, cache_dir, callbacks)
    model = SkipClassifier(trainer.classifier, cfg.adaptive)
    calib = sample(dataset, cfg.calibration_size, seed=cfg.seed)
    importance = block_importance(trainer.classifier, encoder, calib.texts)
    fine_grained_init(model.gates, importance, cfg.budget, cfg.init_scale)
    runner = GateRunner(model.gates)
    trainer.top.block_runner = runner
    trainer.callbacks.append(HadSkipSchedule(runner, cfg))
    try:
        fit = trainer.fit(dataset)
    finally:
        trainer.top.block_runner = None
        trainer.cleanup()
    model.temperature = runner.temperature
    model.eval()
    mean_gate, executed = gate_statistics(model, encoder, calib.texts)
    result = HadSkipResult(
        config=asdict(fit.config),
        importance=importance.tolist(),
        executed_fraction=executed,
        mean_gate=mean_gate.tolist(),
        keep=static_keep(mean_gate, cfg.budget),
        history=fit.history,
    )
    return model, result


@torch.no_grad()
def gate_statistics(model: SkipClassifier, encoder: TextEncoder, texts: list[str]) -> tuple[np.ndarray, float]:
    """Per-block mean gate probability at the final temperature, and the executed fraction of hard gates."""
    probs, hard = [], []
    device = next(model.parameters()).device
    for idx in length_sorted_batches(encoder.lengths(texts), 32):
        ids, mask = (torch.from_numpy(a).to(device) for a in encoder([texts[i] for i in idx]))
        _, g = model(ids, mask)
        _, h = model(ids, mask, hard=True)
        probs.append(g)
        hard.append(h)
    g = torch.cat(probs)
    return g.mean(dim=0).cpu().numpy(), float(torch.cat(hard).mean())


def hadskip_finetune(
    model: str | Path | tuple[Backbone, TextEncoder],
    data: str | Path | TextDataset,
    out: str | Path | None = None,
    config: HadSkipConfig | None = None,
    max_length: int = 128,
    text_column: str = "text",
    label_column: str = "label",
    progress: bool = True,
    overwrite: bool = False,
    callbacks: Sequence[Callback] = (),
) -> tuple[SequenceClassifier, TextEncoder, HadSkipResult]:
    """Fine-tune a model with HadSkip gates and save it as a classifier checkpoint.

    The checkpoint skips the blocks of the static skip set at the trained budget
    and records the gate statistics (``hadskip`` in ``edgetune.json``), so that
    ``edgetune export --skip-budget B`` can choose the blocks for any budget B,
    and ``base_model_hash``, so that plans made for the base model still apply.
    While it trains, ``out/checkpoint`` holds the run's checkpoint: a killed run
    started again with the same settings resumes there (``overwrite`` starts over).
    ``config.max_length``, when set, wins over ``max_length``.
    """
    from edgetune.api import load_model
    from edgetune.data import load_dataset
    from edgetune.finetune import CHECKPOINT, FEATURES, prepare_output
    from edgetune.io import output_lock, recover

    cfg = replace(config or HadSkipConfig(), progress=progress)
    dataset = data if isinstance(data, TextDataset) else load_dataset(data, text_column, label_column)
    label_map = dataset.label_map()
    backbone, encoder = model if isinstance(model, tuple) else load_model(model, cfg.max_length or max_length)
    base_hash = backbone.fingerprint()
    out = Path(out) if out is not None else None
    # one run per output directory; a killed run's half-written files are swept
    with output_lock(out) if out is not None else contextlib.nullcontext():
        if out is not None:
            recover(out.parent, [out.name])
            recover(out, [CHECKPOINT, FEATURES])
            prepare_output(out, overwrite)
        checkpoint, features = (out / CHECKPOINT, out / FEATURES) if out is not None else (None, None)
        skip_model, result = train_hadskip(backbone, encoder, dataset, label_map, cfg, checkpoint, features, callbacks)
        classifier = skip_model.classifier
        classifier.set_skipped_layers(result.skipped)
        classifier.meta.update({"base_model_hash": base_hash, "hadskip": asdict(result)})
        classifier.eval()
        if out is not None:
            classifier.save_pretrained(out, encoder)
    return classifier, encoder, result


def skipped_flops_fraction(keep: list[int], num_layers: int) -> float:
    """Fraction of block FLOPs removed by a static skip set (blocks are equal-sized)."""
    return 1.0 - len(keep) / num_layers if num_layers else 0.0


__all__ = [
    "HadSkipConfig",
    "HadSkipResult",
    "HadSkipSchedule",
    "GateRunner",
    "LayerGates",
    "SkipClassifier",
    "block_importance",
    "fine_grained_init",
    "gate_statistics",
    "run_static",
    "skipped_flops_fraction",
    "static_keep",
    "temperature_at",
    "train_hadskip",
    "hadskip_finetune",
]
