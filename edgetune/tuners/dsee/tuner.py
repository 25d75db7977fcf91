"""``dsee``: Dually Sparsity-Embedded Efficient tuning (Chen et al., ACL 2023), our reading.

Stage 1, parameter-efficient training. Each targeted module W (the LoRA
targets of the chosen blocks) is trained as

    W' = W + s * B A + S (.) M,

with B A a peft LoRA adapter (s = alpha / r) and S (.) M a sparse residual of
``sparse_n`` trainable entries at fixed positions M: the support of the sparse
part of a low-rank + sparse decomposition of the *pretrained* W
(:mod:`edgetune.tuners.dsee.decompose`). The residual starts at zero, so
training starts from the pretrained model. Trainable: A, B, the N values of S
per module, the final norm and the head.

Stage 2, resource-efficient inference, runs in :meth:`DseeTuner.merge`: the
update is folded into the weights, then the final weights of the trained
blocks are pruned by magnitude, structured (whole attention heads) and/or
unstructured (:mod:`edgetune.tuners.dsee.prune`); the pruning report
(sparsity, inference FLOPs before and after) is kept in ``self.report``.

The delta carries the positions of S (``<module>.base_layer.dsee_index``, int32)
next to the trained tensors, so a device loads the server's residual without
recomputing the decomposition.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edgetune.costs import TunerCost
from edgetune.modeling import TopModel
from edgetune.tuners.dsee.config import DseeConfig
from edgetune.tuners.dsee.decompose import sparse_support
from edgetune.tuners.dsee.layout import weight_out_in
from edgetune.tuners.dsee.prune import inference_flops, prune_attention_heads, prune_unstructured, weight_sparsity
from edgetune.tuners.dsee.sparse import SparseResidual
from edgetune.tuners.lora.native import is_lora_layer
from edgetune.tuners.lora.tuner import LoraTuner

INDEX = ".dsee_index"


class DseeTuner(LoraTuner):
    name = "dsee"
    Config = DseeConfig
    config: DseeConfig

    def __init__(self, config: DseeConfig | None = None, **params: Any) -> None:
        super().__init__(config, **params)
        self.report: dict[str, Any] | None = None

    def _prepare(self, top: TopModel) -> None:
        super()._prepare(top)  # peft LoRA in the chosen blocks; only lora_ parameters trainable
        c = self.config
        for module in top.modules():
            if is_lora_layer(module) and not isinstance(module.base_layer, SparseResidual):
                base = module.base_layer
                rows, cols = sparse_support(
                    weight_out_in(base), c.decomposition_rank, c.sparse_n, c.decomposition_iters
                )
                module.base_layer = SparseResidual(base, rows, cols)

    def residuals(self, top: TopModel) -> dict[str, SparseResidual]:
        return {name: m for name, m in top.named_modules() if isinstance(m, SparseResidual)}

    # -- the personal delta ------------------------------------------------------
    def delta_state(self, top: TopModel) -> dict[str, torch.Tensor]:
        """The trained tensors plus the (2, N) int32 positions of every sparse residual."""
        state = super().delta_state(top)
        for name, module in self.residuals(top).items():
            state[name + INDEX] = module.dsee_index.to(torch.int32).cpu().contiguous()
        return state

    def load_delta(self, top: TopModel, state: dict[str, torch.Tensor]) -> None:
        residuals = self.residuals(top)
        positions = {k: v for k, v in state.items() if k.endswith(INDEX)}
        missing = sorted(n + INDEX for n in residuals if n + INDEX not in positions)
        unexpected = sorted(k for k in positions if k[: -len(INDEX)] not in residuals)
        if missing or unexpected:
            raise ValueError(
                f"{self.name} delta does not fit this top: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        for key, index in positions.items():
            module = residuals[key[: -len(INDEX)]]
            if index.shape != (2, module.num_entries):
                raise ValueError(
                    f"{self.name} delta: {key} has shape {tuple(index.shape)}, expected (2, {module.num_entries})"
                )
            module.set_positions(index[0], index[1])
        super().load_delta(top, {k: v for k, v in state.items() if not k.endswith(INDEX)})

    # -- stage 2 -----------------------------------------------------------------
    def merge(self, top: TopModel) -> TopModel:
        """Fold S and B A into the weights, then prune as configured (see the module docstring)."""
        for module in top.modules():
            if is_lora_layer(module) and isinstance(module.base_layer, SparseResidual):
                module.base_layer = module.base_layer.fold()
        super().merge(top)
        c = self.config
        if c.prune_ratio > 0 or c.head_prune_ratio > 0:
            self.report = self.prune(top, c.prune_ratio, c.head_prune_ratio, c.prune_scope)
        return top

    def prune(
        self, top: TopModel, ratio: float, head_ratio: float = 0.0, scope: str = "per_matrix", seq_len: int = 128
    ) -> dict[str, Any]:
        """Stage-2 pruning of a merged top: heads first, then unstructured magnitude; returns the report."""
        before = inference_flops(top, seq_len)
        params_before = sum(p.numel() for p in top.blocks.parameters())
        heads = prune_attention_heads(top, head_ratio) if head_ratio > 0 else {}
        if ratio > 0:
            prune_unstructured(top, ratio, scope)
        after = inference_flops(top, seq_len)
        return {
            "unstructured_ratio": ratio,
            "scope": scope,
            "head_ratio": head_ratio,
            "removed_heads": {str(k): v for k, v in heads.items()},
            "weight_sparsity": weight_sparsity(top),
            "block_params_before": params_before,
            "block_params_after": sum(p.numel() for p in top.blocks.parameters()),
            "flops_before": before["dense"],
            "flops_dense_after": after["dense"],
            "flops_nonzero_after": after["nonzero"],
            "seq_len": seq_len,
        }

    # -- cost model --------------------------------------------------------------
    def cost_profile(self, block: nn.Module, model_type: str) -> TunerCost:
        """As LoRA, plus N residual weights per targeted module (each costs a gather and an add per token)."""
        lora = super().cost_profile(block, model_type)
        residual = self._residual_params(block, model_type)
        return TunerCost(weight_grad_fraction=0.0, adapter_params=lora.adapter_params + residual)

    def _residual_params(self, block: nn.Module, model_type: str) -> int:
        from edgetune.tuners.lora.tuner import default_target_modules

        targets = self.config.target_modules or default_target_modules(model_type)
        count = 0
        for name, module in block.named_modules():
            weight = getattr(module, "weight", None)
            if weight is not None and weight.dim() == 2 and any(name == t or name.endswith("." + t) for t in targets):
                count += min(self.config.sparse_n, weight.numel())
        return count
