"""``roselora``: row/column-sparse LoRA (Wang et al., RoseLoRA, EMNLP 2024), our reading of the abstract.

LoRA adapters (peft, restricted to the chosen blocks as for ``lora``) whose
factors are pruned during training so that each row of A (r x in) and each
column of B (out x r) keeps only its most important entries:

* importance of every adapter weight: I = |w * dL/dw| (a first-order estimate
  of the loss change if w were removed), smoothed by an exponential moving
  average I <- ema * I + (1 - ema) * |w * grad| (ema = 0.8), updated in
  :meth:`before_step`, when the gradients of the step are there;
* after each optimizer step (:meth:`after_step`), every row of A and every
  column of B keeps its top ``keep_count(rho_t, length)`` entries by
  importance; the rest are set to zero. rho_t follows the cubic schedule of
  :func:`~edgetune.tuners.roselora.schedule.density_at`.

The update B A is then a sum of r rank-1 blocks, each supported on
supp(B[:, j]) x supp(A[j, :]): at most r * rho^2 * out * in non-zero entries.
:meth:`delta_state` writes the pruned factors in the compact values + indices
format of :mod:`edgetune.tuners.roselora.delta`; :meth:`load_delta` reads it back exactly.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edgetune.modeling import TopModel
from edgetune.tuners.lora.tuner import LoraTuner
from edgetune.tuners.roselora.config import RoseLoraConfig
from edgetune.tuners.roselora.delta import INDICES, VALUES, compress, expand, mask_of
from edgetune.tuners.roselora.schedule import density_at, keep_count


def sparse_dim(name: str) -> int | None:
    """The dimension along which an adapter factor is pruned: rows of A keep entries along dim 1,
    columns of B along dim 0; ``None`` for parameters that stay dense (head, norm)."""
    if ".lora_A." in name:
        return 1
    if ".lora_B." in name:
        return 0
    return None


class RoseLoraTuner(LoraTuner):
    name = "roselora"
    Config = RoseLoraConfig
    config: RoseLoraConfig

    def __init__(self, config: RoseLoraConfig | None = None, **params: Any) -> None:
        super().__init__(config, **params)
        self.importance: dict[str, torch.Tensor] = {}
        self.masks: dict[str, torch.Tensor] = {}
        self.density = 1.0

    def _prepare(self, top: TopModel) -> None:
        self.importance, self.masks, self.density = {}, {}, 1.0
        super()._prepare(top)

    def factors(self, top: TopModel) -> dict[str, tuple[nn.Parameter, int]]:
        """The adapter factors of ``top`` with the dimension each is pruned along."""
        out = {}
        for name, p in self.trainable_parameters(top).items():
            dim = sparse_dim(name)
            if dim is not None and p.dim() == 2:
                out[name] = (p, dim)
        return out

    def density_at(self, step: int, total_steps: int) -> float:
        c = self.config
        return density_at(step, total_steps, c.target_density, c.warmup, c.final)

    # -- hooks -------------------------------------------------------------------
    @torch.no_grad()
    def before_step(self, top: TopModel, step: int, total_steps: int) -> None:
        """Fold this step's sensitivity |w * grad| into the importance average."""
        ema = self.config.ema
        for name, (p, _) in self.factors(top).items():
            if p.grad is None:
                continue
            score = (p.detach() * p.grad.detach()).abs().float()
            old = self.importance.get(name)
            self.importance[name] = (1.0 - ema) * score if old is None else ema * old + (1.0 - ema) * score

    @torch.no_grad()
    def after_step(self, top: TopModel, step: int, total_steps: int) -> None:
        """Keep the scheduled count of each A row / B column by importance; zero the rest."""
        self.density = self.density_at(step, total_steps)
        if self.density >= 1.0:
            return
        for name, (p, dim) in self.factors(top).items():
            n = p.shape[dim]
            keep = keep_count(self.density, n)
            score = self.importance.get(name)
            if score is None:  # no gradient seen yet: fall back to magnitude
                score = p.detach().abs().float()
            top_idx = torch.topk(score.to(p.device), keep, dim=dim).indices
            mask = torch.zeros(p.shape, dtype=torch.bool, device=p.device).scatter_(dim, top_idx, True)
            p.mul_(mask)
            self.masks[name] = mask

    # -- the personal delta ------------------------------------------------------
    def delta_state(self, top: TopModel) -> dict[str, torch.Tensor]:
        """Dense copies of the head, norm and unpruned factors; values + indices of pruned factors."""
        state: dict[str, torch.Tensor] = {}
        factors = self.factors(top)
        for name, p in self.trainable_parameters(top).items():
            mask = self.masks.get(name)
            if name in factors and mask is not None and not bool(mask.all()):
                values, indices = compress(p, mask, factors[name][1])
                state[name + VALUES], state[name + INDICES] = values, indices
            else:
                state[name] = p.detach().cpu().contiguous().clone()
        return state

    def load_delta(self, top: TopModel, state: dict[str, torch.Tensor]) -> None:
        """Load a delta from :meth:`delta_state` (dense or compact entries); pruned factors keep their masks."""
        factors = self.factors(top)
        dense: dict[str, torch.Tensor] = {}
        masks: dict[str, torch.Tensor] = {}
        for key, tensor in state.items():
            if key.endswith(INDICES):
                continue
            name = key[: -len(VALUES)] if key.endswith(VALUES) and key[: -len(VALUES)] in factors else key
            if name == key:
                dense[name] = tensor
                continue
            if name + INDICES not in state:
                raise ValueError(f"{self.name} delta: {key} has no {name + INDICES}")
            p, dim = factors[name]
            indices = state[name + INDICES]
            dense[name] = expand(tensor, indices, p.shape, dim)
            masks[name] = mask_of(indices, p.shape, dim)
            if not bool((masks[name].sum(dim) == tensor.shape[dim]).all()):
                raise ValueError(f"{self.name} delta: {name + INDICES} repeats an index")
        stray = sorted(k for k in state if k.endswith(INDICES) and k[: -len(INDICES)] not in masks)
        if stray:
            raise ValueError(f"{self.name} delta does not fit this top: indices without values {stray[:5]}")
        super().load_delta(top, dense)
        self.masks = {name: m.to(factors[name][0].device) for name, m in masks.items()}

    # -- state that exact resume needs --------------------------------------------
    def extra_state(self, top: TopModel) -> dict[str, torch.Tensor]:
        """The importance averages (the masks travel with the delta)."""
        return {f"importance.{name}": t.detach().cpu().contiguous() for name, t in self.importance.items()}

    def load_extra_state(self, top: TopModel, state: dict[str, torch.Tensor]) -> None:
        factors = self.factors(top)
        importance = {}
        for key, tensor in state.items():
            name = key.removeprefix("importance.")
            if name not in factors or factors[name][0].shape != tensor.shape:
                raise ValueError(f"{self.name} state does not fit this top: {key}")
            importance[name] = tensor.to(factors[name][0].device)
        self.importance = importance

    # -- what training left ---------------------------------------------------------
    def nonzero_adapter_params(self, top: TopModel) -> int:
        """Non-zero entries of all adapter factors (what the compact delta stores)."""
        return sum(int(torch.count_nonzero(p)) for p, _ in self.factors(top).values())
