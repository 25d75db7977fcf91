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

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgetune.backbones import Backbone
from edgetune.data import LabelMap, TextDataset, sample
from edgetune.modeling import SequenceClassifier
from edgetune.progress import progress_bar
from edgetune.tokenization import TextEncoder
from edgetune.traces import length_sorted_batches


@dataclass
class HadSkipConfig:
    budget: float = 0.5  # target fraction of blocks executed
    penalty: float = 10.0  # lambda of the budget penalty
    init_scale: float = 3.0  # |logit| scale of the fine-grained initialization
    temperature_start: float = 1.0
    temperature_end: float = 0.05
    adaptive: bool = True
    epochs: int = 2
    lr: float = 5e-5
    head_lr: float = 1e-3
    gate_lr: float = 5e-2
    batch_size: int = 16
    calibration_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.budget <= 1.0:
            raise ValueError(f"budget must be in (0, 1], got {self.budget}")
        if not 0 < self.temperature_end <= self.temperature_start:
            raise ValueError("need 0 < temperature_end <= temperature_start")


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
        b = self.classifier.backbone
        hidden = b.embed(input_ids, attention_mask)
        kwargs = b.block_inputs(hidden, attention_mask)
        gates = []
        for layer in range(b.num_layers):
            z = self.gates.logits(layer, b.pool(hidden, attention_mask))
            if hard:
                run = z > 0
                gates.append(run.to(hidden.dtype))
                if run.any():
                    hidden = hidden.clone()
                    sub = {k: _rows(v, run) for k, v in kwargs.items()}
                    hidden[run] = b.family.run_block(b.blocks[layer], hidden[run], sub)
                continue
            g = torch.sigmoid(z / self.temperature)
            gates.append(g)
            out = b.family.run_block(b.blocks[layer], hidden, kwargs)
            hidden = hidden + g[:, None, None] * (out - hidden)
        logits = self.classifier.head(b.pool(b.norm(hidden), attention_mask))
        return logits, torch.stack(gates, dim=1)


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
    ids, mask = (torch.from_numpy(a) for a in encoder(texts))
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


def train_hadskip(
    classifier: SequenceClassifier,
    encoder: TextEncoder,
    dataset: TextDataset,
    label_map: LabelMap,
    config: HadSkipConfig | None = None,
    progress: bool = True,
) -> tuple[SkipClassifier, HadSkipResult]:
    """Fine-tune ``classifier`` jointly with HadSkip gates under ``config.budget``."""
    cfg = config or HadSkipConfig()
    torch.manual_seed(cfg.seed)
    model = SkipClassifier(classifier, cfg.adaptive)
    calib = sample(dataset, cfg.calibration_size, seed=cfg.seed)
    importance = block_importance(classifier, encoder, calib.texts)
    fine_grained_init(model.gates, importance, cfg.budget, cfg.init_scale)

    labels = torch.from_numpy(dataset.encoded_labels(label_map))
    batches = length_sorted_batches(encoder.lengths(dataset.texts), cfg.batch_size)
    total = cfg.epochs * len(batches)
    head = list(classifier.head.parameters())
    head_ids = {id(p) for p in head}
    body = [p for n, p in model.named_parameters() if not n.startswith("gates.") and id(p) not in head_ids]
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in body if p.requires_grad], "lr": cfg.lr},
            {"params": head, "lr": cfg.head_lr},
            {"params": list(model.gates.parameters()), "lr": cfg.gate_lr, "weight_decay": 0.0},
        ]
    )
    rng = np.random.default_rng(cfg.seed)
    history: list[dict[str, float]] = []
    model.train()
    step = 0
    with progress_bar(f"HadSkip (budget {cfg.budget:.2f})", total=total, enabled=progress) as advance:
        for epoch in range(cfg.epochs):
            for i in rng.permutation(len(batches)):
                idx = batches[i]
                model.temperature = temperature_at(step, total, cfg.temperature_start, cfg.temperature_end)
                ids, mask = encoder([dataset.texts[j] for j in idx])
                logits, gates = model(torch.from_numpy(ids), torch.from_numpy(mask))
                task = nn.functional.cross_entropy(logits, labels[idx])
                budget_loss = (gates.mean() - cfg.budget) ** 2
                loss = task + cfg.penalty * budget_loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                advance(1)
                if step % max(1, total // 20) == 0 or step == total:
                    history.append(
                        {
                            "step": step,
                            "epoch": epoch,
                            "temperature": model.temperature,
                            "loss": float(task.detach()),
                            "mean_gate": float(gates.mean().detach()),
                        }
                    )
    model.eval()
    mean_gate, executed = gate_statistics(model, encoder, calib.texts)
    result = HadSkipResult(
        config=asdict(cfg),
        importance=importance.tolist(),
        executed_fraction=executed,
        mean_gate=mean_gate.tolist(),
        keep=static_keep(mean_gate, cfg.budget),
        history=history,
    )
    return model, result


@torch.no_grad()
def gate_statistics(model: SkipClassifier, encoder: TextEncoder, texts: list[str]) -> tuple[np.ndarray, float]:
    """Per-block mean gate probability at the final temperature, and the executed fraction of hard gates."""
    probs, hard = [], []
    for idx in length_sorted_batches(encoder.lengths(texts), 32):
        ids, mask = (torch.from_numpy(a) for a in encoder([texts[i] for i in idx]))
        _, g = model(ids, mask)
        _, h = model(ids, mask, hard=True)
        probs.append(g)
        hard.append(h)
    g = torch.cat(probs)
    return g.mean(dim=0).numpy(), float(torch.cat(hard).mean())


def hadskip_finetune(
    model: str | Path | tuple[Backbone, TextEncoder],
    data: str | Path | TextDataset,
    out: str | Path | None = None,
    config: HadSkipConfig | None = None,
    max_length: int = 128,
    text_column: str = "text",
    label_column: str = "label",
    progress: bool = True,
) -> tuple[SequenceClassifier, TextEncoder, HadSkipResult]:
    """Fine-tune a model with HadSkip gates and save it as a classifier checkpoint.

    The checkpoint skips the blocks of the static skip set at the trained budget
    and records the gate statistics (``hadskip`` in ``edgetune.json``), so that
    ``edgetune export --skip-budget B`` can choose the blocks for any budget B,
    and ``base_model_hash``, so that plans made for the base model still apply.
    """
    from edgetune.api import load_model
    from edgetune.data import load_dataset

    cfg = config or HadSkipConfig()
    dataset = data if isinstance(data, TextDataset) else load_dataset(data, text_column, label_column)
    label_map = dataset.label_map()
    backbone, encoder = model if isinstance(model, tuple) else load_model(model, max_length)
    base_hash = backbone.fingerprint()
    classifier = SequenceClassifier(backbone, len(label_map), list(label_map.labels))
    _, result = train_hadskip(classifier, encoder, dataset, label_map, cfg, progress)
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
]
