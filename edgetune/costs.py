"""Cost model: FLOPs and memory of training above each cut.

A *cut* k freezes the embeddings and blocks 1..k and trains blocks k+1..L,
the final norm and the head (k = 0: everything but the embeddings; k = L: the
head only). Per example of sequence length n:

* block forward FLOPs  F_l = 2 * P_l * n + 4 * n^2 * d
  (2 FLOPs per multiply-add of every weight, plus the QK^T and AV products);
* head forward FLOPs   F_head = 2 * d * C  (pooling is negligible); its backward
  is F_head (weight gradient) when nothing below it trains, else 2 F_head;
* backward = 2 x forward for every trained module and 0 below the cut, less
  the input gradient of the lowest trained block, which nothing needs (the
  trunk below it is frozen): its input projections (Q, K, V: P_in weights)
  skip 2 * P_in * n FLOPs, unless a trained pre-norm (GPT-2, Llama) sits in
  front of them and needs them for its weight gradient.
  B(k) = 2 * (sum_{l>k} F_l + F_head) - 2 * P_in * n; fraction B(k) / B(0).
  A tuner that freezes the base weights of the trained blocks (LoRA) skips
  their weight gradients: a trained block's backward is
  2 P_l n (1 + w) + 8 n^2 d + 4 A n, with w the share of its weights that get
  a weight gradient (1: full, 0: LoRA) and A its adapter parameters (forward
  2 A n). The fraction is always relative to full fine-tuning at cut 0.

Training memory for cut k (bytes):

* trainable parameters P_top(k): weights + gradients + 2 Adam states, all fp32
  -> 16 bytes per parameter;
* frozen weights: 4 bytes per parameter in *naive* mode (the trunk runs every
  step); 0 in *cached* mode (the trunk ran once, only its output is kept),
  plus the frozen base weights inside the trained blocks (LoRA) in both modes;
* activations kept for backward by each trained block, per token,
  ``a_h * d + a_i * I + a_p * heads * n`` fp32 values, times batch x n
  (plus the final norm's input and output, 2 x batch x n x d, in decoders,
  and the head's pooled input, batch x d);
  The constants were measured by recording every tensor autograd saves
  (``torch.autograd.graph.saved_tensors_hooks``) in training mode on CPU with
  the sdpa attention edgetune loads models with (:func:`activation_profile`):
  a_h = 8 for BERT-style blocks, 10 for GPT-2, 12 for Llama-style blocks
  (norm inputs and statistics, Q/K/V, attention output, residual inputs),
  plus one fp32 mask per hidden dropout (2 for BERT/RoBERTa/GPT-2, 1 for
  DistilBERT); a_i = 2 for an erf-GELU MLP, 5 for GPT-2's tanh GELU, 4 for a
  gated MLP; a_p = 3 when attention dropout is on (sdpa falls back to the math
  kernel and keeps the probabilities, their dropout mask and the dropped
  probabilities), 1 for eager attention without dropout, 0 for fused kernels.
  Each family holds its a_h and a_i (``Family.activation_counts``,
  :mod:`edgetune.families`).
  Measured with as many K/V heads as query heads and full tuning; models that
  share K/V heads (GQA) and LoRA (frozen layers need not keep their inputs)
  keep less, so for them the numbers are an upper bound;
* cached trunk features (cached mode, in memory): N_examples * n * d * bytes.

``benchmarks/where_to_finetune.py`` checks these numbers against measurements
on all-MiniLM-L6-v2 (torch.utils.flop_counter.FlopCounterMode for FLOPs).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from edgetune.families import Family

MB = 1024.0 * 1024.0


@dataclass(frozen=True)
class ArchSummary:
    """What the cost model needs to know about a backbone (no weights)."""

    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    block_params: tuple[int, ...]
    embedding_params: int
    norm_params: int
    num_labels: int
    gated_mlp: bool = False
    act_hidden: float = 8.0  # a_h: fp32 values of width d saved per token by a trained block
    act_intermediate: float | None = None  # a_i; None: 4 for a gated MLP, else 2
    act_probs: float = 0.0  # a_p: attention probabilities kept per token, in units of heads * n
    input_proj_params: int = 0  # P_in: weights of the Q, K, V projections of one block
    pre_norm: bool = False  # blocks normalize their input before Q/K/V (GPT-2, Llama) rather than after

    @property
    def head_params(self) -> int:
        return self.hidden_size * self.num_labels + self.num_labels

    @classmethod
    def from_backbone(cls, backbone: Any, num_labels: int) -> ArchSummary:
        cfg = backbone.config
        d = backbone.hidden_size
        inter = (
            getattr(cfg, "intermediate_size", None)
            or getattr(cfg, "hidden_dim", None)
            or getattr(cfg, "n_inner", None)
            or 4 * d
        )
        heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_heads", None) or cfg.n_head
        norm = 0 if backbone.final_norm is None else sum(p.numel() for p in backbone.final_norm.parameters())
        kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
        a_h, a_i, a_p = activation_profile(backbone.family, cfg)
        return cls(
            num_layers=backbone.num_layers,
            hidden_size=d,
            intermediate_size=int(inter),
            num_heads=int(heads),
            block_params=tuple(backbone.block_param_counts()),
            embedding_params=backbone.embedding_param_count(),
            norm_params=norm,
            num_labels=num_labels,
            gated_mlp=backbone.family.gated_mlp,
            act_hidden=a_h,
            act_intermediate=a_i,
            act_probs=a_p,
            input_proj_params=int(d * (d + 2 * d * kv_heads // heads)),
            pre_norm=backbone.is_decoder,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["block_params"] = list(self.block_params)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ArchSummary:
        return cls(**{**d, "block_params": tuple(d["block_params"])})


@dataclass(frozen=True)
class CostConfig:
    """The training job the costs describe."""

    seq_len: int = 128
    batch_size: int = 16
    num_examples: int = 1000
    epochs: int = 3
    cached: bool = True
    cache_in_memory: bool = True
    feature_bytes: int = 4
    # None: as the architecture keeps them in CPU training (see activation_profile);
    # False: a fused attention kernel (e.g. flash attention on a GPU) keeps none.
    attention_probs_stored: bool | None = None
    device_gflops: float = 20.0  # sustained fp32 GFLOP/s of the target device

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TunerCost:
    """How a tuner trains each block above the cut (the default is full fine-tuning).

    ``weight_grad_fraction``: share of a block's weights that get a weight
    gradient and optimizer state (1 for ``full``, 0 for LoRA, whose base weights
    stay frozen). ``adapter_params``: extra trainable parameters per trained
    block (LoRA: r (in + out) per targeted module). Built by a tuner's
    ``cost_profile``.
    """

    weight_grad_fraction: float = 1.0
    adapter_params: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.weight_grad_fraction <= 1.0:
            raise ValueError(f"weight_grad_fraction must be in [0, 1], got {self.weight_grad_fraction}")


@dataclass
class CutCost:
    cut: int
    trainable_params: int
    forward_flops: float  # per example, whole model
    backward_flops: float  # per example
    backward_frac: float
    train_step_flops: float  # per example, one training step (mode-dependent)
    memory_bytes: dict[str, float] = field(default_factory=dict)
    device_seconds: float = 0.0

    @property
    def train_memory_mb(self) -> float:
        return sum(self.memory_bytes.values()) / MB

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["train_memory_mb"] = self.train_memory_mb
        return d


def block_forward_flops(params: int, seq_len: int, hidden: int) -> float:
    return 2.0 * params * seq_len + 4.0 * seq_len * seq_len * hidden


def _config_value(config: Any, *names: str) -> float:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return float(value)
    return 0.0


def activation_profile(family: Family, config: Any) -> tuple[float, float, float]:
    """(a_h, a_i, a_p) of one trained block of ``family`` under ``config``, as measured in training mode."""
    base, per_dropout, a_i = family.activation_counts
    hidden_dropout = _config_value(config, "hidden_dropout_prob", "resid_pdrop", "dropout", "hidden_dropout")
    attention_dropout = _config_value(config, "attention_probs_dropout_prob", "attn_pdrop", "attention_dropout")
    a_h = base + (per_dropout if hidden_dropout > 0 else 0.0)
    if attention_dropout > 0:
        a_p = 3.0
    else:
        a_p = 1.0 if getattr(config, "_attn_implementation", "sdpa") == "eager" else 0.0
    return a_h, a_i, a_p


def top_extra_activations(arch: ArchSummary, cfg: CostConfig) -> float:
    """Bytes the top keeps besides its blocks: the final norm's input and output (2 x batch x n x d values,
    measured; decoders only) and the head's pooled input (batch x d)."""
    norm = 2.0 * cfg.batch_size * cfg.seq_len * arch.hidden_size if arch.norm_params > 0 else 0.0
    return 4.0 * (norm + cfg.batch_size * arch.hidden_size)


def activation_bytes_per_block(arch: ArchSummary, cfg: CostConfig) -> float:
    a_i = arch.act_intermediate if arch.act_intermediate is not None else (4.0 if arch.gated_mlp else 2.0)
    a_p = arch.act_probs if cfg.attention_probs_stored is None else (3.0 if cfg.attention_probs_stored else 0.0)
    per_token = arch.act_hidden * arch.hidden_size + a_i * arch.intermediate_size + a_p * arch.num_heads * cfg.seq_len
    return 4.0 * per_token * cfg.seq_len * cfg.batch_size


def block_backward_flops(params: int, seq_len: int, hidden: int, tuner: TunerCost) -> float:
    """Input gradients through every weight, weight gradients for the trained share, attention, adapters."""
    n = seq_len
    weights = 2.0 * params * n * (1.0 + tuner.weight_grad_fraction)
    return weights + 8.0 * n * n * hidden + 4.0 * tuner.adapter_params * n


def skipped_input_grad(arch: ArchSummary, seq_len: int, tuner: TunerCost) -> float:
    """FLOPs the lowest trained block saves because its input needs no gradient (the trunk is frozen).

    A post-norm block feeds its input straight into Q/K/V, so their input
    gradients are skipped. A pre-norm block feeds Q/K/V from its input norm;
    when the norm is trained (full tuning) its weight gradient needs them anyway.
    """
    if arch.pre_norm and tuner.weight_grad_fraction > 0:
        return 0.0
    return 2.0 * arch.input_proj_params * seq_len


def estimate_cut(arch: ArchSummary, cfg: CostConfig, cut: int, tuner: TunerCost | None = None) -> CutCost:
    tuner = tuner or TunerCost()
    L, n, d = arch.num_layers, cfg.seq_len, arch.hidden_size
    if not 0 <= cut <= L:
        raise ValueError(f"cut must be in 0..{L}, got {cut}")
    fwd = [block_forward_flops(p, n, d) for p in arch.block_params]
    adapter_fwd = 2.0 * tuner.adapter_params * n
    head_fwd = 2.0 * d * arch.num_labels
    top_forward = sum(fwd[cut:]) + adapter_fwd * (L - cut) + head_fwd
    forward = sum(fwd[:cut]) + top_forward
    # the head's input gradient is needed only when something below it trains (a block or the final norm)
    head_bwd = 2.0 * head_fwd if cut < L or arch.norm_params > 0 else head_fwd
    backward = sum(block_backward_flops(p, n, d, tuner) for p in arch.block_params[cut:]) + head_bwd
    backward -= skipped_input_grad(arch, n, tuner) if cut < L else 0.0
    full_backward = 2.0 * (sum(fwd) + head_fwd) - (skipped_input_grad(arch, n, TunerCost()) if L > 0 else 0.0)
    step = (top_forward if cfg.cached else forward) + backward

    top_params = sum(arch.block_params[cut:])
    adapters = tuner.adapter_params * (L - cut)
    trainable = tuner.weight_grad_fraction * top_params + adapters + arch.norm_params + arch.head_params
    frozen_in_top = (1.0 - tuner.weight_grad_fraction) * top_params
    frozen_below = sum(arch.block_params[:cut]) + arch.embedding_params
    memory = {
        "trainable_weights": 4.0 * trainable,
        "gradients": 4.0 * trainable,
        "adam_states": 8.0 * trainable,
        "frozen_weights": 4.0 * (frozen_in_top + (0.0 if cfg.cached else frozen_below)),
        "activations": activation_bytes_per_block(arch, cfg) * (L - cut) + top_extra_activations(arch, cfg),
        "cached_features": (
            float(cfg.num_examples * n * d * cfg.feature_bytes) if cfg.cached and cfg.cache_in_memory else 0.0
        ),
    }
    trunk_once = (sum(fwd[:cut])) * cfg.num_examples if cfg.cached else 0.0
    job_flops = trunk_once + step * cfg.num_examples * cfg.epochs
    return CutCost(
        cut=cut,
        trainable_params=int(round(trainable)),
        forward_flops=forward,
        backward_flops=backward,
        backward_frac=backward / full_backward,
        train_step_flops=step,
        memory_bytes=memory,
        device_seconds=job_flops / (cfg.device_gflops * 1e9),
    )


def estimate_all(arch: ArchSummary, cfg: CostConfig, tuner: TunerCost | None = None) -> list[CutCost]:
    """Costs of every cut 0..L."""
    return [estimate_cut(arch, cfg, k, tuner) for k in range(arch.num_layers + 1)]


@dataclass(frozen=True)
class Budget:
    """Limits a cut must respect; ``None`` means unlimited."""

    max_backward_frac: float | None = None
    max_train_memory_mb: float | None = None
    max_device_seconds: float | None = None

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value is not None and value <= 0:
                raise ValueError(f"budget {name} must be positive, got {value}")

    def violations(self, cost: CutCost) -> list[str]:
        out = []
        if self.max_backward_frac is not None and cost.backward_frac > self.max_backward_frac + 1e-12:
            out.append(f"backward FLOPs {cost.backward_frac:.1%} > {self.max_backward_frac:.1%}")
        if self.max_train_memory_mb is not None and cost.train_memory_mb > self.max_train_memory_mb:
            out.append(f"train memory {cost.train_memory_mb:.0f} MB > {self.max_train_memory_mb:.0f} MB")
        if self.max_device_seconds is not None and cost.device_seconds > self.max_device_seconds:
            out.append(f"device time {cost.device_seconds:.0f} s > {self.max_device_seconds:.0f} s")
        return out

    def fits(self, cost: CutCost) -> bool:
        return not self.violations(cost)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
