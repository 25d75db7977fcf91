"""What edgetune needs to know about one architecture family, and the defaults most families share.

A :class:`Family` answers every question the rest of edgetune asks about an architecture:

* layout: where the headless base, the embeddings, the blocks, the final norm, the readout and the rotary
  (or relative-position) module sit in a loaded Hugging Face model;
* running pieces: how to embed token ids, which keyword arguments a block needs, how to rebuild blocks, norm
  and rotary from the config alone (a device trains the top without the trunk's weights);
* loading: the attention implementation transformers should use;
* adapters: LoRA's default target projections, whether projections are stored as ``Conv1D`` (in, out), where
  each attention head's weights are (DSEE's head pruning);
* costs: the activation values a trained block keeps, whether the MLP is gated;
* export: onnxruntime's fusion patterns for the family, whether token positions are a learned table;
* the plain-torch top (:mod:`edgetune.native`): whether it has blocks for the family and how to build them.

The defaults below are a BERT-like encoder's; each family module overrides what differs. This module and
every family module import neither torch nor transformers at module level: the device's numpy apply and the
package checks read the registry on a device that has neither. Methods that run torch import it when called.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgetune.errors import EdgetuneError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from edgetune.tuners.dsee.heads import HeadSlices


class UnsupportedModelError(EdgetuneError, ValueError):
    """The model's architecture has no family."""


def import_class(path: str) -> type:
    """The class at ``path``; only transformers' and torch.nn's classes are rebuilt from a spec."""
    module, _, name = path.rpartition(".")
    if not module.startswith("transformers.") and not module.startswith("torch.nn"):
        raise ValueError(f"refusing to import {path!r}: only transformers / torch.nn classes are rebuilt")
    return getattr(importlib.import_module(module), name)


def get_dotted(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class Family:
    """One architecture family (see the module docstring); one instance per family, registered by model type."""

    name: str
    model_types: tuple[str, ...]
    description: str  # for error messages: which models this family covers
    is_decoder: bool
    base_attr: str | None  # attribute of the loaded model holding the headless base
    embeddings_attr: str
    blocks_attr: str
    norm_attr: str | None = None
    readout_attr: str | None = None
    rotary_attr: str | None = None
    # transformers' attention implementation to load the model with ("eager" where there is no SDPA one)
    attn_implementation: str = "sdpa"
    # LoRA's default targets (peft's table where it has the architecture: the query and value projections)
    lora_targets: tuple[str, ...] = ("query", "value")
    # projections stored as GPT-2's Conv1D, weight (in, out): LoRA's fan_in_fan_out, the numpy merge's transpose
    conv1d_projections: bool = False
    # (a_h without dropout, extra a_h with hidden dropout, a_i) of a trained block: see edgetune.costs
    activation_counts: tuple[float, float, float] = (8.0, 2.0, 2.0)
    gated_mlp: bool = False
    # onnxruntime's transformer optimizer model type whose fusion patterns fit; None: not fused
    ort_optimizer_type: str | None = "bert"
    # token positions are a learned table of max_position_embeddings rows (not rotary)
    learned_positions: bool = True
    # the position table reserves padding_idx + 1 rows before the first position (RoBERTa, MPNet)
    positions_after_padding: bool = False
    # the config key naming the MLP's activation (what the plain-torch top must reproduce)
    activation_key: str = "hidden_act"
    # edgetune.native rebuilds this family's blocks in plain torch
    native_blocks: bool = False

    @property
    def pooling(self) -> str:
        return "last" if self.is_decoder else "mean"

    # -- locating modules --------------------------------------------------
    def base(self, model: nn.Module) -> nn.Module:
        if self.base_attr and hasattr(model, self.base_attr):
            return getattr(model, self.base_attr)
        return model

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return get_dotted(self.base(model), self.blocks_attr)

    def embeddings(self, model: nn.Module) -> nn.Module:
        return get_dotted(self.base(model), self.embeddings_attr)

    def embedding_modules(self, model: nn.Module) -> list[nn.Module]:
        """Every module of the embedding map (what freezing the trunk freezes, what the cost model counts)."""
        return [self.embeddings(model)]

    def final_norm(self, model: nn.Module) -> nn.Module | None:
        return get_dotted(self.base(model), self.norm_attr) if self.norm_attr else None

    def readout(self, model: nn.Module) -> nn.Linear | None:
        if self.readout_attr and hasattr(model, self.readout_attr):
            return getattr(model, self.readout_attr)
        return None

    def rotary(self, model: nn.Module) -> nn.Module | None:
        return get_dotted(self.base(model), self.rotary_attr) if self.rotary_attr else None

    # -- running pieces ----------------------------------------------------
    def embed(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.embeddings(model)(input_ids)

    def block_inputs(
        self, config: Any, hidden: torch.Tensor, attention_mask: torch.Tensor, rotary: nn.Module | None
    ) -> dict[str, Any]:
        """Keyword arguments every block of this family needs, built once per forward."""
        from edgetune.families.masks import padding_mask

        return {"attention_mask": padding_mask(attention_mask, hidden.dtype)}

    def run_block(self, block: nn.Module, hidden: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        out = block(hidden, **kwargs)
        return out[0] if isinstance(out, (tuple, list)) else out

    # -- rebuilding from config with transformers' classes -----------------
    def build_block(self, block_class: str, config: Any, layer_idx: int) -> nn.Module:
        cls = import_class(block_class)
        if "layer_idx" in inspect.signature(cls.__init__).parameters:
            return cls(config, layer_idx=layer_idx)
        return cls(config)

    def build_norm(self, norm_class: str | None, config: Any) -> nn.Module | None:
        if norm_class is None:
            return None
        raise ValueError(f"the {self.name} family has no final norm, yet the spec names {norm_class!r}")

    def build_rotary(self, rotary_class: str | None, config: Any) -> nn.Module | None:
        if rotary_class is None:
            return None
        return import_class(rotary_class)(config=config)

    # -- adapters ------------------------------------------------------------
    def attention_heads(self, block: nn.Module) -> HeadSlices:
        """Where each attention head's weights are in ``block`` (transformers' or :mod:`edgetune.native`'s)."""
        raise ValueError(f"no attention-head layout for family {self.name!r}")

    # -- the plain-torch top (edgetune.native) ------------------------------
    def native_problem(self, cfg: dict[str, Any]) -> str | None:
        """Why :mod:`edgetune.native`'s blocks would not equal transformers' for ``cfg`` (None: they would),
        beyond the activation, which :func:`edgetune.native.native_support` checks for every family."""
        return None

    def build_native_block(self, cfg: dict[str, Any], layer_idx: int, model_type: str) -> nn.Module:
        raise ValueError(f"no plain-torch blocks for the {self.name} family")

    def build_native_norm(self, cfg: dict[str, Any]) -> nn.Module:
        raise ValueError(f"the {self.name} family has no final norm")
