"""Config of the ``dsee`` tuner."""

from __future__ import annotations

from dataclasses import dataclass

from edgetune.tuners.dsee.prune import SCOPES
from edgetune.tuners.lora.config import LoraConfig


@dataclass
class DseeConfig(LoraConfig):
    """DSEE: low-rank + sparse update of the targeted modules, then magnitude pruning on merge.

    Stage 1 (training) inherits the LoRA settings (rank ``r``, ``alpha``,
    ``dropout``, ``target_modules``, ``layers``) and adds ``sparse_n`` trainable
    residual entries per targeted module, placed at the support of the sparse
    part of a rank-``decomposition_rank`` + ``sparse_n`` decomposition of the
    pretrained weight (``decomposition_iters`` alternating rounds).

    Stage 2 (on :meth:`~edgetune.tuners.dsee.tuner.DseeTuner.merge`) prunes the
    final weights of the trained blocks: ``head_prune_ratio`` of the attention
    heads of every trained block (structured), then ``prune_ratio`` of the
    remaining weights by magnitude (unstructured, ``prune_scope`` per_matrix or
    global). Both default to 0 (no pruning).
    """

    sparse_n: int = 64
    decomposition_rank: int = 8
    decomposition_iters: int = 3
    prune_ratio: float = 0.0
    prune_scope: str = "per_matrix"
    head_prune_ratio: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sparse_n < 1:
            raise ValueError(f"DSEE sparse_n must be >= 1, got {self.sparse_n}")
        if self.decomposition_rank < 1:
            raise ValueError(f"DSEE decomposition_rank must be >= 1, got {self.decomposition_rank}")
        if self.decomposition_iters < 1:
            raise ValueError(f"DSEE decomposition_iters must be >= 1, got {self.decomposition_iters}")
        if not 0.0 <= self.prune_ratio < 1.0:
            raise ValueError(f"DSEE prune_ratio must be in [0, 1), got {self.prune_ratio}")
        if not 0.0 <= self.head_prune_ratio < 1.0:
            raise ValueError(f"DSEE head_prune_ratio must be in [0, 1), got {self.head_prune_ratio}")
        if self.prune_scope not in SCOPES:
            raise ValueError(f"DSEE prune_scope must be one of {SCOPES}, got {self.prune_scope!r}")
