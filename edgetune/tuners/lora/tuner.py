"""``lora``: peft LoRA adapters in the chosen blocks; the base weights of those blocks stay frozen.

The adapters are injected with ``peft.inject_adapter_in_model`` into the top
(whose blocks are named ``blocks.0..``), restricted by ``layers_to_transform``
to the chosen blocks, so the same code adapts a server-side view and a top
rebuilt on a device. ``merge`` folds ``W + (alpha / r) B A`` into the base
weights with peft's own merge and removes the adapter modules.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from edgetune.costs import TunerCost
from edgetune.families import family_for
from edgetune.modeling import TopModel
from edgetune.tuners.base import Tuner
from edgetune.tuners.lora import native
from edgetune.tuners.lora.config import LoraConfig


def default_target_modules(model_type: str) -> list[str]:
    """The default LoRA targets of ``model_type``'s family (peft's, where peft has one; a test compares)."""
    return list(family_for(model_type).lora_targets)


def peft_lora_config(config: LoraConfig, model_type: str, layers_to_transform: list[int], layers_pattern: str) -> Any:
    """The ``peft.LoraConfig`` for ``config`` on blocks ``layers_to_transform`` (0-based, under ``layers_pattern``)."""
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=config.target_modules or default_target_modules(model_type),
        layers_to_transform=layers_to_transform,
        layers_pattern=layers_pattern,
        bias="none",
        fan_in_fan_out=family_for(model_type).conv1d_projections,  # Conv1D stores its weight (in, out)
    )


def is_plain_torch(top: TopModel) -> bool:
    """Whether ``top``'s blocks are :mod:`edgetune.native`'s (a device's top) rather than transformers'."""
    return all(type(block).__module__ == "edgetune.native" for block in top.blocks)


class LoraTuner(Tuner):
    name = "lora"
    Config = LoraConfig

    def relative_layers(self, top: TopModel) -> list[int]:
        """Indices into ``top.blocks`` of the blocks to adapt."""
        chosen = list(range(top.cut + 1, top.num_layers + 1))
        layers = self.config.layers if self.config.layers is not None else chosen
        outside = sorted(set(layers) - set(chosen))
        if outside:
            raise ValueError(f"LoRA layers {outside} are not among the trained blocks {chosen or 'none'}")
        return [layer - top.cut - 1 for layer in layers]

    def _prepare(self, top: TopModel) -> None:
        layers = self.relative_layers(top)
        if not layers:  # head-only plan: nothing to adapt
            return
        if is_plain_torch(top):  # a device's top: peft's layout without peft (edgetune.tuners.lora.native)
            c = self.config
            targets = c.target_modules or default_target_modules(top.config.model_type)
            if not native.inject(top.blocks, targets, layers, c.r, c.alpha, c.dropout):
                raise ValueError(f"no module of the trained blocks matches the LoRA targets {targets}")
            for name, p in top.named_parameters():
                p.requires_grad_("lora_" in name)
            return
        from peft import inject_adapter_in_model

        peft_config = peft_lora_config(self.config, top.config.model_type, layers, "blocks")
        inject_adapter_in_model(peft_config, top)
        for name, p in top.named_parameters():
            p.requires_grad_("lora_" in name)

    def merge(self, top: TopModel) -> TopModel:
        if is_plain_torch(top):
            native.merge_all(top)
            return top
        from peft.tuners.lora import LoraLayer

        wrapped = [(name, m) for name, m in top.named_modules() if isinstance(m, LoraLayer)]
        for name, module in wrapped:
            module.merge(safe_merge=True)
            parent_name, _, child = name.rpartition(".")
            setattr(top.get_submodule(parent_name), child, module.get_base_layer())
        return top

    def cost_profile(self, block: nn.Module, model_type: str) -> TunerCost:
        """Base weights get no weight gradient; each targeted module adds r * (in + out) adapter weights."""
        targets = self.config.target_modules or default_target_modules(model_type)
        adapter = 0
        for name, module in block.named_modules():
            weight = getattr(module, "weight", None)
            if weight is not None and weight.dim() == 2 and any(name == t or name.endswith("." + t) for t in targets):
                adapter += self.config.r * (weight.shape[0] + weight.shape[1])
        return TunerCost(weight_grad_fraction=0.0, adapter_params=adapter)
