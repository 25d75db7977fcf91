"""Backbones: a Hugging Face model seen through its family.

edgetune cuts a transformer into a frozen *trunk* (embeddings + blocks 1..l*)
and a trainable *top* (blocks l*+1..L, final norm, pooling, task head). What
that takes per architecture (where the embeddings, blocks, norm and readout
are, how to call one block on its own, how to rebuild blocks from the config
alone) is the family's to say: :mod:`edgetune.families`, one module per
family. This module holds :class:`Backbone`, which asks the family, and
re-exports the family registry under its older names.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgetune.families import FAMILIES, Family, UnsupportedModelError, family_for, supported_model_types
from edgetune.families.masks import last_token_pool, mean_pool

SUPPORTED_MODEL_TYPES = supported_model_types()  # the built-in families' model types

__all__ = [
    "FAMILIES",
    "SUPPORTED_MODEL_TYPES",
    "Backbone",
    "Family",
    "UnsupportedModelError",
    "default_attn_implementation",
    "family_for",
]


def default_attn_implementation(model_type: str) -> str:
    return family_for(model_type).attn_implementation


def _class_path(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


class Backbone:
    """A Hugging Face model seen through its family adapter.

    ``Backbone`` does not copy weights: it holds the loaded model and exposes the
    pieces edgetune needs (embed, run any range of blocks, norm, pool, readout).
    """

    def __init__(self, model: nn.Module, model_id: str | None = None) -> None:
        config = model.config
        self.family = family_for(config.model_type)
        self.model = model
        self.config = config
        self.model_id = model_id or getattr(config, "_name_or_path", "") or config.model_type
        self.blocks = self.family.blocks(model)
        self.embeddings = self.family.embeddings(model)
        self.final_norm = self.family.final_norm(model)
        self.rotary = self.family.rotary(model)

    # -- construction ------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> Backbone:
        """Load a local directory or hub id; decoders keep their LM head as readout."""
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

        try:
            config = AutoConfig.from_pretrained(path)
        except (OSError, ValueError) as err:
            raise FileNotFoundError(f"{path}: cannot load a model config ({err})") from None
        family = family_for(config.model_type)
        auto = AutoModelForCausalLM if family.is_decoder else AutoModel
        kwargs.setdefault("attn_implementation", family.attn_implementation)
        model = auto.from_pretrained(path, **kwargs)
        model.eval()
        return cls(model, model_id=str(path))

    # -- properties --------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    @property
    def hidden_size(self) -> int:
        cfg = self.config
        return getattr(cfg, "hidden_size", None) or getattr(cfg, "dim", None) or cfg.n_embd

    @property
    def is_decoder(self) -> bool:
        return self.family.is_decoder

    @property
    def pooling(self) -> str:
        return self.family.pooling

    def block_param_counts(self) -> list[int]:
        return [sum(p.numel() for p in b.parameters()) for b in self.blocks]

    def embedding_param_count(self) -> int:
        return sum(p.numel() for m in self.family.embedding_modules(self.model) for p in m.parameters())

    def fingerprint(self) -> str:
        """sha256 over parameter names, shapes, dtypes and bytes: identifies the weights,
        whatever file format they were loaded from."""
        h = hashlib.sha256(self.config.model_type.encode())
        for name, tensor in sorted(self.model.state_dict().items()):
            t = tensor.detach().cpu().contiguous()
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()

    def readout_weight(self) -> torch.Tensor | None:
        head = self.family.readout(self.model)
        return None if head is None else head.weight

    # -- forward pieces ----------------------------------------------------
    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.family.embed(self.model, input_ids, attention_mask)

    def block_inputs(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, Any]:
        return self.family.block_inputs(self.config, hidden, attention_mask, self.rotary)

    def run_layers(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        start: int = 0,
        stop: int | None = None,
        block_inputs: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        """Run blocks ``start..stop-1`` (0-based) on ``hidden``."""
        stop = self.num_layers if stop is None else stop
        return self.run_blocks(hidden, attention_mask, range(start, stop), block_inputs)

    def run_blocks(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        indices: Iterable[int],
        block_inputs: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        """Run the blocks at ``indices`` (0-based, in order) on ``hidden``; the others are never called."""
        kwargs = block_inputs if block_inputs is not None else self.block_inputs(hidden, attention_mask)
        for i in indices:
            hidden = self.family.run_block(self.blocks[i], hidden, kwargs)
        return hidden

    def norm(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden if self.final_norm is None else self.final_norm(hidden)

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "last":
            return last_token_pool(hidden, attention_mask)
        return mean_pool(hidden, attention_mask)

    # -- description for rebuilding the top on a device --------------------
    def top_spec(self) -> dict[str, Any]:
        """Class paths that rebuild blocks / norm / rotary from the config alone."""
        return {
            "family": self.family.name,
            "block_class": _class_path(self.blocks[0]),
            "norm_class": None if self.final_norm is None else _class_path(self.final_norm),
            "rotary_class": None if self.rotary is None else _class_path(self.rotary),
        }
