"""A sequence classifier that can be cut anywhere between its blocks.

``SequenceClassifier`` = HF backbone + pooling + linear head. Its forward is
literally ``top(cut)(trunk(cut)(input_ids, mask), mask)`` for any cut, which
is what makes frozen-trunk feature caching exact: the cached trunk output fed
to the top model gives the same logits as the whole model.

``TopModel`` (blocks cut+1..L, final norm, pooling, head) can be built either
as a view sharing modules with a full classifier (server side) or from a JSON
spec alone (device side: it never needs the trunk's weights).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from edgetune import strict_json
from edgetune.backbones import Backbone
from edgetune.families import Family, family_for
from edgetune.families.masks import last_token_pool, mean_pool
from edgetune.io import atomic_directory

# (top, position of the block in the top, its input, attention mask, the family's block inputs) -> its output
BlockRunner = Callable[["TopModel", int, torch.Tensor, torch.Tensor, dict[str, Any]], torch.Tensor]


def _config_from_dict(model_type: str, values: dict[str, Any]) -> Any:
    from transformers import CONFIG_MAPPING

    config = CONFIG_MAPPING[model_type].from_dict(values)
    config._attn_implementation = values.get("_attn_implementation_internal") or "sdpa"
    return config


class TopModel(nn.Module):
    """Blocks ``cut..L-1`` (0-based) + final norm + pooling + linear head."""

    def __init__(
        self,
        family: Family,
        config: Any,
        blocks: nn.ModuleList,
        norm: nn.Module | None,
        rotary: nn.Module | None,
        head: nn.Linear,
        cut: int,
        spec: dict[str, Any],
    ) -> None:
        super().__init__()
        self.family = family
        self.config = config
        self.blocks = blocks
        self.norm = norm if norm is not None else nn.Identity()
        self.rotary = rotary
        self.head = head
        self.cut = cut
        self.spec = spec
        # How each block's output enters the residual stream; None: it replaces it. HadSkip's gates set one
        # (edgetune.skip.GateRunner) while they train, so the gated model trains on the shared loop.
        self.block_runner: BlockRunner | None = None

    @property
    def num_layers(self) -> int:
        return self.spec["num_layers"]

    @property
    def layers(self) -> list[int]:
        """0-based model indices of this top's blocks (a skip-exported top leaves some out)."""
        return list(self.spec.get("layers", range(self.cut, self.num_layers)))

    def _position(self, cut: int) -> int:
        """How many of this top's blocks lie at or below block ``cut`` (1-based cut, 0-based layer indices)."""
        if not self.cut <= cut <= self.num_layers:
            raise ValueError(f"cut must be in {self.cut}..{self.num_layers} for a top that starts at {self.cut}")
        return sum(1 for layer in self.layers if layer < cut)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(hidden, attention_mask))

    def features(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled, normed representation that the head reads (the 'embedding' of a text)."""
        if len(self.blocks):
            kwargs = self.family.block_inputs(self.config, hidden, attention_mask, self.rotary)
            for position, block in enumerate(self.blocks):
                if self.block_runner is None:
                    hidden = self.family.run_block(block, hidden, kwargs)
                else:
                    hidden = self.block_runner(self, position, hidden, attention_mask, kwargs)
        return self.pool(self.norm(hidden), attention_mask)

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """One vector per example: the family's pooling (mean over tokens, or the last token)."""
        if self.family.pooling == "last":
            return last_token_pool(hidden, attention_mask)
        return mean_pool(hidden, attention_mask)

    # -- a higher cut inside the top ------------------------------------------
    def above(self, cut: int) -> TopModel:
        """The part of this top above ``cut`` (blocks cut+1..L, norm, head) as a view sharing its modules.

        Training or adapting the view changes this top; a device uses it to train
        fewer blocks than its package ships (see :meth:`hidden_at`).
        """
        position = self._position(cut)
        if cut == self.cut:
            return self
        blocks = nn.ModuleList(list(self.blocks)[position:])
        spec = {**self.spec, "cut": int(cut), "layers": self.layers[position:]}
        return TopModel(self.family, self.config, blocks, self.norm, self.rotary, self.head, cut, spec)

    def hidden_at(self, hidden: torch.Tensor, attention_mask: torch.Tensor, cut: int) -> torch.Tensor:
        """h_cut from this top's input h_{self.cut}: runs blocks self.cut+1..cut (none when ``cut == self.cut``)."""
        position = self._position(cut)
        if position == 0:
            return hidden
        kwargs = self.family.block_inputs(self.config, hidden, attention_mask, self.rotary)
        for block in list(self.blocks)[:position]:
            hidden = self.family.run_block(block, hidden, kwargs)
        return hidden

    # -- persistence (device side) -----------------------------------------
    @classmethod
    def from_spec(cls, spec: dict[str, Any], native: bool | None = None) -> TopModel:
        """Build an untrained top (random init) from a spec written by :meth:`spec`.

        ``native``: rebuild the blocks in plain torch (:mod:`edgetune.native`: same parameter names, no
        transformers import) instead of transformers' classes. ``None``: plain torch when it covers the spec
        and the spec does not ask for eager attention (the ExecuTorch exporter does, with transformers' blocks).
        """
        from edgetune import native as plain

        if native is None:
            eager = spec["hf_config"].get("_attn_implementation_internal") == "eager"
            native = not eager and plain.native_support(spec) is None
        elif native and (why := plain.native_support(spec)) is not None:
            raise ValueError(why)
        spec = internal_spec(spec)
        family = family_for(spec["model_type"])
        layers = spec["layers"]
        if native:
            config = plain.config_namespace(spec["hf_config"])
            blocks = nn.ModuleList(plain.build_block(spec, i) for i in layers)
            norm, rotary = plain.build_norm(spec), plain.build_rotary(spec)
        else:
            config = _config_from_dict(spec["model_type"], spec["hf_config"])
            blocks = nn.ModuleList(family.build_block(spec["block_class"], config, layer_idx=i) for i in layers)
            norm = family.build_norm(spec["norm_class"], config)
            rotary = family.build_rotary(spec["rotary_class"], config)
        head = nn.Linear(spec["hidden_size"], spec["num_labels"])
        return cls(family, config, blocks, norm, rotary, head, spec["cut"], spec)

    def save(self, directory: str | Path, name: str = "top") -> list[Path]:
        """``<name>.safetensors`` (weights) + ``<name>.json`` (spec) in ``directory``."""
        directory = Path(directory)
        weights = directory / f"{name}.safetensors"
        spec_path = directory / f"{name}.json"
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        from edgetune.io import atomic_write_bytes, atomic_write_json

        atomic_write_bytes(weights, _safetensors_bytes(tensors))
        atomic_write_json(spec_path, file_spec(self.spec))
        return [weights, spec_path]

    @classmethod
    def load(cls, directory: str | Path, name: str = "top", native: bool | None = None) -> TopModel:
        directory = Path(directory)
        spec = json.loads((directory / f"{name}.json").read_text())
        top = cls.from_spec(spec, native=native)
        state = load_file(str(directory / f"{name}.safetensors"))
        missing, unexpected = top.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("rotary.")]
        if missing or unexpected:
            raise ValueError(f"{directory}/{name}.safetensors: missing {missing}, unexpected {unexpected}")
        return top


def internal_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """A top spec with ``layers``, the 0-based model indices of its blocks (what :class:`TopModel` uses).

    ``top.json`` (package schema version 2) lists 1-based block numbers as ``blocks``; version 1 wrote 0-based
    ``layers``; a spec with neither holds blocks ``cut+1..num_layers``."""
    spec = dict(spec)
    blocks = spec.pop("blocks", None)
    if blocks is not None:
        spec["layers"] = [int(b) - 1 for b in blocks]
    elif "layers" not in spec:
        spec["layers"] = list(range(spec["cut"], spec["num_layers"]))
    return spec


def file_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec as ``top.json`` stores it: 1-based block numbers under ``blocks`` (no 0-based ``layers``)."""
    spec = internal_spec(spec)
    layers = spec.pop("layers")
    return {**spec, "blocks": [int(i) + 1 for i in layers]}


def _safetensors_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save(tensors)


class SequenceClassifier(nn.Module):
    """A backbone with a linear head on pooled features, splittable at any cut."""

    def __init__(self, backbone: Backbone, num_labels: int, labels: list[str] | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.model = backbone.model  # registered so .parameters()/.to() see it
        self.head = nn.Linear(backbone.hidden_size, num_labels)
        self.labels = list(labels) if labels is not None else [str(i) for i in range(num_labels)]
        # Blocks never executed (0-based), e.g. removed by HadSkip for an inference budget.
        self.skipped_layers: tuple[int, ...] = ()
        # Extra entries persisted in edgetune.json (e.g. base_model_hash, hadskip statistics).
        self.meta: dict[str, Any] = {}

    def kept_layers(self, start: int = 0, stop: int | None = None) -> list[int]:
        """0-based indices of the blocks in ``start..stop-1`` that run (all but the skipped ones)."""
        stop = self.num_layers if stop is None else stop
        return [i for i in range(start, stop) if i not in self.skipped_layers]

    def set_skipped_layers(self, skipped: list[int] | tuple[int, ...]) -> None:
        bad = [i for i in skipped if not 0 <= i < self.num_layers]
        if bad:
            raise ValueError(f"skipped layers {bad} outside 0..{self.num_layers - 1}")
        self.skipped_layers = tuple(sorted(set(int(i) for i in skipped)))

    @property
    def num_layers(self) -> int:
        return self.backbone.num_layers

    @property
    def num_labels(self) -> int:
        return self.head.out_features

    def trunk_forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, cut: int) -> torch.Tensor:
        """h_cut: embeddings followed by blocks 1..cut."""
        hidden = self.backbone.embed(input_ids, attention_mask)
        return self.backbone.run_blocks(hidden, attention_mask, self.kept_layers(0, cut))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone.embed(input_ids, attention_mask)
        hidden = self.backbone.run_blocks(hidden, attention_mask, self.kept_layers())
        return self.head(self.backbone.pool(self.backbone.norm(hidden), attention_mask))

    def top_spec(self, cut: int) -> dict[str, Any]:
        b = self.backbone
        return {
            "model_type": b.config.model_type,
            **b.top_spec(),
            # where the model was read from is not part of what it computes: with it, re-exporting the same model
            # from another directory changed top.json's hash and so every personal state's identity
            "hf_config": {k: v for k, v in b.config.to_dict().items() if k != "_name_or_path"},
            "cut": int(cut),
            "num_layers": b.num_layers,
            "hidden_size": b.hidden_size,
            "num_labels": self.num_labels,
            "labels": self.labels,
            "pooling": b.pooling,
            "layers": self.kept_layers(cut),
        }

    def top(self, cut: int) -> TopModel:
        """A TopModel view sharing this classifier's modules (training it trains them)."""
        if not 0 <= cut <= self.num_layers:
            raise ValueError(f"cut must be in 0..{self.num_layers}, got {cut}")
        b = self.backbone
        blocks = nn.ModuleList(b.blocks[i] for i in self.kept_layers(cut))
        return TopModel(b.family, b.config, blocks, b.final_norm, b.rotary, self.head, cut, self.top_spec(cut))

    def detached_top(self, cut: int) -> TopModel:
        """An independent deep copy of the top (for export or per-user training)."""
        return copy.deepcopy(self.top(cut))

    # -- persistence (server side) -----------------------------------------
    def save_pretrained(self, directory: str | Path, encoder: Any | None = None) -> Path:
        """HF backbone + ``head.safetensors`` + ``edgetune.json``, written atomically."""
        with atomic_directory(directory) as tmp:
            self.write_files(tmp, encoder)
        return Path(directory)

    def write_files(self, directory: str | Path, encoder: Any | None = None) -> None:
        """The files of :meth:`save_pretrained` into an existing directory, not atomically: for callers
        that add their own files and swap the whole directory in with ``atomic_directory``."""
        directory = Path(directory)
        self.model.save_pretrained(directory / "backbone", safe_serialization=True)
        head = {k: v.detach().contiguous().cpu() for k, v in self.head.state_dict().items()}
        save_file(head, str(directory / "head.safetensors"))
        meta = {
            **self.meta,
            "labels": self.labels,
            "num_labels": self.num_labels,
            "model_type": self.backbone.config.model_type,
        }
        if self.skipped_layers:
            meta["skipped_layers"] = list(self.skipped_layers)
        (directory / "edgetune.json").write_text(strict_json.dumps(meta, indent=2))
        if encoder is not None:
            encoder.save(directory / "backbone")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> SequenceClassifier:
        """Load a classifier written by :meth:`save_pretrained`, or wrap a plain HF model directory
        with a freshly initialized head (``labels`` must then be set by the caller)."""
        directory = Path(directory)
        meta_path = directory / "edgetune.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{directory}: not an edgetune classifier (no edgetune.json)")
        meta = json.loads(meta_path.read_text())
        backbone = Backbone.from_pretrained(directory / "backbone")
        clf = cls(backbone, meta["num_labels"], meta["labels"])
        clf.head.load_state_dict(load_file(str(directory / "head.safetensors")))
        clf.set_skipped_layers(meta.get("skipped_layers", ()))
        reserved = {"labels", "num_labels", "model_type", "skipped_layers"}
        clf.meta = {k: v for k, v in meta.items() if k not in reserved}
        return clf
