"""Backbone adapters: where the pieces of a Hugging Face model are.

edgetune cuts a transformer into a frozen *trunk* (embeddings + blocks 1..l*)
and a trainable *top* (blocks l*+1..L, final norm, pooling, task head). To do
that for any supported model it must know, per architecture family:

* the embedding map (token ids -> h_0),
* the list of blocks and how to call one block on its own (the attention-mask
  format it expects, rotary position embeddings for Llama-style decoders),
* the final norm (decoders) and the readout (the LM head, when there is one),
* the pooling that turns a sequence into one vector (mean over tokens for
  encoders, last token for decoders),
* how to rebuild blocks and norm from the config alone, so a device can train
  the top layers without ever holding the trunk's weights in torch.

Masks are built here with plain tensor ops (no data-dependent branches), so the
same code path runs eagerly, under autograd and inside an ONNX export.
Sequences are right-padded everywhere; with a causal mask, padding at the end
never changes the real tokens, so position ids are simply ``0..S-1``.

MPNet keeps one table of relative-position biases (``encoder.relative_attention_bias``,
``buckets x heads``) in its encoder, not in its blocks: the encoder computes the
bias once per forward and hands it to every block. The adapter treats that table
the way it treats a decoder's rotary embedding: a module beside the blocks
(``Family.rotary_attr``) from which :meth:`Family.block_inputs` builds each block's
``position_bias``. The trunk bakes its copy into the ONNX graph; the top carries
its own copy (``rotary.weight`` in ``top.safetensors``), so blocks above the cut
see the same bias without the encoder.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgetune.errors import EdgetuneError

ENCODER_TYPES = ("bert", "roberta", "distilbert", "mpnet")
DECODER_TYPES = ("gpt2", "llama", "mistral", "qwen2", "qwen3")
SUPPORTED_MODEL_TYPES = ENCODER_TYPES + DECODER_TYPES
# Architectures whose transformers classes have no SDPA attention: loaded with the eager one.
EAGER_ONLY_TYPES = ("mpnet",)


def default_attn_implementation(model_type: str) -> str:
    return "eager" if model_type in EAGER_ONLY_TYPES else "sdpa"


class UnsupportedModelError(EdgetuneError, ValueError):
    """The model's architecture has no adapter."""


def _unsupported(model_type: str) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"unsupported architecture {model_type!r}; edgetune supports model_type in: "
        f"{', '.join(SUPPORTED_MODEL_TYPES)} (BERT incl. MiniLM, RoBERTa, DistilBERT, GPT-2, "
        "Llama / Mistral / Qwen2 / Qwen3 decoders)"
    )


def padding_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, S) 0/1 mask -> additive (B, 1, 1, S) mask for bidirectional attention."""
    keep = attention_mask[:, None, None, :].to(dtype)
    return (1.0 - keep) * torch.finfo(dtype).min


def causal_padding_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, S) 0/1 mask -> additive (B, 1, S, S) causal + padding mask."""
    ones = torch.ones_like(attention_mask[0], dtype=dtype)
    causal = torch.tril(ones[:, None] * ones[None, :])  # (S, S) lower triangle of ones
    keep = causal[None, None, :, :] * attention_mask[:, None, None, :].to(dtype)
    return (1.0 - keep) * torch.finfo(dtype).min


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


def last_token_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    last = (attention_mask.long().sum(dim=1) - 1).clamp_min(0)
    idx = last[:, None, None].expand(-1, 1, hidden.shape[-1])
    return hidden.gather(1, idx).squeeze(1)


def mpnet_position_bias(table: nn.Embedding, hidden: torch.Tensor) -> torch.Tensor:
    """MPNet's relative position bias ``(1, heads, S, S)`` for a sequence of ``hidden``'s length, as
    ``MPNetEncoder.compute_position_bias`` computes it (32 buckets, max distance 128; positions ``0..S-1``,
    whatever the padding), broadcast over the batch instead of copied per example."""
    from transformers.models.mpnet.modeling_mpnet import MPNetEncoder

    positions = torch.arange(hidden.shape[1], dtype=torch.long, device=hidden.device)
    relative = positions[None, :] - positions[:, None]  # memory - context
    buckets = MPNetEncoder.relative_position_bucket(relative, num_buckets=32)
    return table(buckets).permute(2, 0, 1).unsqueeze(0).to(hidden.dtype)


def _import_class(path: str) -> type:
    module, _, name = path.rpartition(".")
    if not module.startswith("transformers.") and not module.startswith("torch.nn"):
        raise ValueError(f"refusing to import {path!r}: only transformers / torch.nn classes are rebuilt")
    return getattr(importlib.import_module(module), name)


def _class_path(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


@dataclass(frozen=True)
class Family:
    """How one architecture family lays out its modules (see module docstring)."""

    name: str
    model_types: tuple[str, ...]
    is_decoder: bool
    base_attr: str | None  # attribute of the loaded model holding the headless base
    embeddings_attr: str
    blocks_attr: str
    norm_attr: str | None
    readout_attr: str | None
    rotary_attr: str | None = None

    @property
    def pooling(self) -> str:
        return "last" if self.is_decoder else "mean"

    # -- locating modules --------------------------------------------------
    def base(self, model: nn.Module) -> nn.Module:
        if self.base_attr and hasattr(model, self.base_attr):
            return getattr(model, self.base_attr)
        return model

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return _get(self.base(model), self.blocks_attr)

    def embeddings(self, model: nn.Module) -> nn.Module:
        return _get(self.base(model), self.embeddings_attr)

    def final_norm(self, model: nn.Module) -> nn.Module | None:
        return _get(self.base(model), self.norm_attr) if self.norm_attr else None

    def readout(self, model: nn.Module) -> nn.Linear | None:
        if self.readout_attr and hasattr(model, self.readout_attr):
            return getattr(model, self.readout_attr)
        return None

    def rotary(self, model: nn.Module) -> nn.Module | None:
        return _get(self.base(model), self.rotary_attr) if self.rotary_attr else None

    # -- running pieces ----------------------------------------------------
    def embed(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        emb = self.embeddings(model)
        if self.name == "gpt2":
            base = self.base(model)
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :]
            return base.drop(base.wte(input_ids) + base.wpe(positions))
        if self.name in ("bert", "roberta", "mpnet"):
            return emb(input_ids=input_ids)
        return emb(input_ids)

    def block_inputs(
        self, config: Any, hidden: torch.Tensor, attention_mask: torch.Tensor, rotary: nn.Module | None
    ) -> dict[str, Any]:
        """Keyword arguments every block of this family needs, built once per forward."""
        if self.is_decoder:
            kwargs: dict[str, Any] = {"attention_mask": causal_padding_mask(attention_mask, hidden.dtype)}
            if rotary is not None:
                positions = torch.arange(hidden.shape[1], device=hidden.device)[None, :]
                kwargs["position_ids"] = positions
                kwargs["position_embeddings"] = rotary(hidden, positions)
            return kwargs
        if self.name == "mpnet":
            if rotary is None:
                raise ValueError("an MPNet block needs the encoder's relative_attention_bias table")
            return {
                "attention_mask": padding_mask(attention_mask, hidden.dtype),
                "position_bias": mpnet_position_bias(rotary, hidden),
            }
        if self.name == "distilbert":
            if getattr(config, "_attn_implementation", "eager") == "eager":
                return {"attn_mask": attention_mask}
            return {"attn_mask": padding_mask(attention_mask, hidden.dtype)}
        return {"attention_mask": padding_mask(attention_mask, hidden.dtype)}

    def run_block(self, block: nn.Module, hidden: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        out = block(hidden, **kwargs)
        return out[0] if isinstance(out, (tuple, list)) else out

    # -- rebuilding from config (device side) ------------------------------
    def build_block(self, block_class: str, config: Any, layer_idx: int) -> nn.Module:
        cls = _import_class(block_class)
        params = inspect.signature(cls.__init__).parameters
        if "layer_idx" in params:
            return cls(config, layer_idx=layer_idx)
        return cls(config)

    def build_norm(self, norm_class: str | None, config: Any) -> nn.Module | None:
        if norm_class is None:
            return None
        cls = _import_class(norm_class)
        if self.name == "gpt2":
            return cls(config.n_embd, eps=config.layer_norm_epsilon)
        return cls(config.hidden_size, eps=config.rms_norm_eps)

    def build_rotary(self, rotary_class: str | None, config: Any) -> nn.Module | None:
        if rotary_class is None:
            return None
        if self.name == "mpnet":  # the relative-position bias table (see the module docstring)
            return _import_class(rotary_class)(config.relative_attention_num_buckets, config.num_attention_heads)
        return _import_class(rotary_class)(config=config)


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


FAMILIES: dict[str, Family] = {}
for _family in (
    Family("bert", ("bert",), False, "bert", "embeddings", "encoder.layer", None, None),
    Family("roberta", ("roberta",), False, "roberta", "embeddings", "encoder.layer", None, None),
    Family("distilbert", ("distilbert",), False, "distilbert", "embeddings", "transformer.layer", None, None),
    Family(
        "mpnet",
        ("mpnet",),
        False,
        "mpnet",
        "embeddings",
        "encoder.layer",
        None,
        None,
        rotary_attr="encoder.relative_attention_bias",
    ),
    Family("gpt2", ("gpt2",), True, "transformer", "wte", "h", "ln_f", "lm_head"),
    Family(
        "llama",
        ("llama", "mistral", "qwen2", "qwen3"),
        True,
        "model",
        "embed_tokens",
        "layers",
        "norm",
        "lm_head",
        rotary_attr="rotary_emb",
    ),
):
    for _t in _family.model_types:
        FAMILIES[_t] = _family


def family_for(model_type: str) -> Family:
    try:
        return FAMILIES[model_type]
    except KeyError:
        raise _unsupported(model_type) from None


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
        kwargs.setdefault("attn_implementation", default_attn_implementation(config.model_type))
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
        if self.family.name == "gpt2":
            base = self.family.base(self.model)
            return base.wte.weight.numel() + base.wpe.weight.numel()
        return sum(p.numel() for p in self.embeddings.parameters())

    def fingerprint(self) -> str:
        """sha256 over parameter names, shapes, dtypes and bytes: identifies the weights,
        whatever file format they were loaded from."""
        import hashlib

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
