"""LoRA layers in plain torch for the device's plain-torch top (:mod:`edgetune.native`).

peft is the LoRA implementation of the server side; it cannot run on a device
that has no transformers (importing peft imports transformers). A top rebuilt
in plain torch gets these layers instead, shaped and named as peft's, so a
LoRA delta is the same tensors under the same names on both sides (a test
loads peft's delta into these layers and compares outputs and gradients):

* the adapted layer becomes a :class:`LoraLinear` holding the original as
  ``base_layer`` and ``lora_A.default`` (in -> r), ``lora_B.default``
  (r -> out), ``lora_dropout.default`` (peft's attribute names);
* ``y = base(x) + B(A(dropout(x))) * alpha / r``; A starts Kaiming-uniform
  (a = sqrt(5)) and B at zero, as peft's default initialization;
* merging adds ``alpha / r * B A`` (transposed for GPT-2's ``Conv1D``,
  which stores its weight as (in, out)) to the base weight and puts the base
  layer back.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from edgetune.families import FAMILIES

ADAPTER = "default"

# The default targets (peft.utils.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING's) of the families the
# plain-torch top covers, as the families hold them (Family.lora_targets); a test keeps them equal to peft's.
DEFAULT_TARGETS = {
    model_type: list(family.lora_targets) for model_type, family in FAMILIES.items() if family.native_blocks
}


def _in_out(base: nn.Module) -> tuple[int, int, bool]:
    """``(in, out, stored transposed)`` of an ``nn.Linear`` or a ``Conv1D`` (weight (in, out))."""
    if isinstance(base, nn.Linear):
        return base.in_features, base.out_features, False
    if type(base).__name__ == "Conv1D":
        inp, out = base.weight.shape
        return inp, out, True
    raise TypeError(f"LoRA adapts nn.Linear or Conv1D layers, not {type(base).__name__}")


class LoraLinear(nn.Module):
    """A base projection plus a rank-``r`` update; see the module docstring."""

    def __init__(self, base_layer: nn.Module, r: int, alpha: float, dropout: float) -> None:
        super().__init__()
        inp, out, self.fan_in_fan_out = _in_out(base_layer)
        self.base_layer = base_layer
        self.lora_A = nn.ModuleDict({ADAPTER: nn.Linear(inp, r, bias=False)})
        self.lora_B = nn.ModuleDict({ADAPTER: nn.Linear(r, out, bias=False)})
        self.lora_dropout = nn.ModuleDict({ADAPTER: nn.Dropout(dropout) if dropout > 0 else nn.Identity()})
        self.scaling = alpha / r
        nn.init.kaiming_uniform_(self.lora_A[ADAPTER].weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B[ADAPTER].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = self.lora_B[ADAPTER](self.lora_A[ADAPTER](self.lora_dropout[ADAPTER](x)))
        return self.base_layer(x) + update * self.scaling

    def get_base_layer(self) -> nn.Module:
        return self.base_layer

    @torch.no_grad()
    def merged(self) -> nn.Module:
        """The base layer with the update folded into its weight."""
        delta = (self.lora_B[ADAPTER].weight @ self.lora_A[ADAPTER].weight) * self.scaling  # (out, in)
        base = self.base_layer
        base.weight += delta.t() if self.fan_in_fan_out else delta
        return base


def is_lora_layer(module: nn.Module) -> bool:
    """A LoRA-wrapped layer, peft's or this module's (both hold ``base_layer`` and ``lora_A``)."""
    return hasattr(module, "base_layer") and isinstance(getattr(module, "lora_A", None), nn.ModuleDict)


def inject(blocks: nn.ModuleList, targets: list[str], layers: list[int], r: int, alpha: float, dropout: float) -> int:
    """Wrap every module named (or ending in) one of ``targets`` in ``blocks[i]`` for ``i`` in ``layers``;
    returns how many were wrapped."""
    pattern = re.compile(r"(^|\.)(" + "|".join(map(re.escape, targets)) + r")$")
    wrapped = 0
    for i in layers:
        for name, module in list(blocks[i].named_modules()):
            if name and pattern.search(name) and not is_lora_layer(module) and "base_layer" not in name:
                parent_name, _, child = name.rpartition(".")
                parent = blocks[i].get_submodule(parent_name) if parent_name else blocks[i]
                setattr(parent, child, LoraLinear(module, r, alpha, dropout))
                wrapped += 1
    return wrapped


def merge_all(root: nn.Module) -> None:
    """Fold every :class:`LoraLinear` under ``root`` into its base layer."""
    for name, module in list(root.named_modules()):
        if isinstance(module, LoraLinear):
            parent_name, _, child = name.rpartition(".")
            setattr(root.get_submodule(parent_name) if parent_name else root, child, module.merged())
