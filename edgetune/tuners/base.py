"""The interface every tuner shares: *how* to train inside the layers a plan chose.

A plan says *where* (train blocks cut+1..L, the final norm and the head); a
tuner says *how* (every weight, a LoRA adapter, a sparse update, ...). Tuners
always act on a :class:`~edgetune.modeling.TopModel`: on the server that is a
view sharing modules with the full :class:`~edgetune.modeling.SequenceClassifier`
(so preparing the view prepares the classifier), on a device it is a top rebuilt
from its JSON spec. Because both have the same parameter names (``blocks.i``,
``norm``, ``head``), a delta extracted on one side loads on the other.

Life cycle: ``prepare`` (freeze, inject adapters) -> training, with the
``before_step`` / ``after_step`` hooks around each optimizer step (methods such
as RoseLoRA prune there) -> ``delta_state`` (the tensors training changed) ->
``merge`` (fold adapters into plain weights for export or inference).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from edgetune.costs import TunerCost
from edgetune.modeling import SequenceClassifier, TopModel


@dataclass
class TunerConfig:
    """Base class of every tuner's config; subclasses are plain dataclasses (JSON-serializable)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def as_top(model: SequenceClassifier | TopModel, cut: int | None = None) -> TopModel:
    """The top a tuner acts on; for a full classifier, the view above ``cut`` with the trunk frozen.

    Freezing the whole classifier first makes the embeddings and blocks 1..cut
    frozen whatever state the caller left them in.
    """
    if isinstance(model, TopModel):
        if cut is not None and cut != model.cut:
            raise ValueError(f"this top starts at cut {model.cut}, not {cut}")
        return model
    if isinstance(model, SequenceClassifier):
        if cut is None:
            raise ValueError("pass the plan's cut to prepare a full SequenceClassifier")
        model.requires_grad_(False)
        return model.top(cut)
    raise TypeError(f"a tuner acts on a SequenceClassifier or a TopModel, not {type(model).__name__}")


class Tuner(ABC):
    """Base class: subclasses set ``name`` and ``Config`` and implement :meth:`_prepare`."""

    name: ClassVar[str]
    Config: ClassVar[type[TunerConfig]]

    def __init__(self, config: TunerConfig | None = None, **params: Any) -> None:
        self.config = config if config is not None else self.Config(**params)

    def to_dict(self) -> dict[str, Any]:
        """``{"name", "params"}``: enough to rebuild this tuner with :func:`edgetune.tuners.get_tuner`."""
        return {"name": self.name, "params": self.config.to_dict()}

    # -- preparing -------------------------------------------------------------
    def prepare(self, model: SequenceClassifier | TopModel, cut: int | None = None) -> TopModel:
        """Freeze everything, then make trainable what this tuner trains; returns the top."""
        top = as_top(model, cut)
        top.requires_grad_(False)
        self._prepare(top)
        for block in top.blocks:  # injected modules start in train mode: align them with their block
            block.train(block.training)
        top.head.requires_grad_(True)
        top.norm.requires_grad_(True)
        return top

    @abstractmethod
    def _prepare(self, top: TopModel) -> None:
        """Make this tuner's parameters inside ``top.blocks`` trainable (adapters are injected here)."""

    # -- what is trained ---------------------------------------------------------
    def trainable_parameters(self, top: TopModel) -> dict[str, nn.Parameter]:
        return {name: p for name, p in top.named_parameters() if p.requires_grad}

    def num_trainable(self, top: TopModel) -> int:
        return sum(p.numel() for p in self.trainable_parameters(top).values())

    def delta_state(self, top: TopModel) -> dict[str, torch.Tensor]:
        """Detached CPU copies of the tensors training changes, keyed by their name in the top."""
        return {name: p.detach().cpu().contiguous().clone() for name, p in self.trainable_parameters(top).items()}

    def load_delta(self, top: TopModel, state: dict[str, torch.Tensor]) -> None:
        """Load a delta from :meth:`delta_state` into a prepared top; names and shapes must match exactly."""
        params = self.trainable_parameters(top)
        missing, unexpected = sorted(params.keys() - state.keys()), sorted(state.keys() - params.keys())
        if missing or unexpected:
            raise ValueError(
                f"{self.name} delta does not fit this top: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        with torch.no_grad():
            for name, p in params.items():
                if p.shape != state[name].shape:
                    raise ValueError(
                        f"{self.name} delta: {name} has shape {tuple(state[name].shape)}, expected {tuple(p.shape)}"
                    )
                p.copy_(state[name].to(p.device, p.dtype))

    def extra_state(self, top: TopModel) -> dict[str, torch.Tensor]:
        """Tensors besides the delta that an exact resume needs (e.g. RoseLoRA's importance averages)."""
        return {}

    def load_extra_state(self, top: TopModel, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`extra_state` (after :meth:`load_delta`)."""
        if state:
            raise ValueError(f"{self.name} keeps no extra state, got {sorted(state)[:5]}")

    def merge(self, top: TopModel) -> TopModel:
        """Fold adapters into the plain weights (no-op for tuners that train the weights themselves)."""
        return top

    # -- hooks around each optimizer step ---------------------------------------
    def before_step(self, top: TopModel, step: int, total_steps: int) -> None:
        """Called after backward, before the optimizer step (gradients are available)."""
        return None

    def after_step(self, top: TopModel, step: int, total_steps: int) -> None:
        """Called after the optimizer step (e.g. to prune or re-mask the update)."""
        return None

    # -- cost model --------------------------------------------------------------
    def cost_profile(self, block: nn.Module, model_type: str) -> TunerCost:
        """How this tuner trains one block, for the cost model (``block``: one backbone block)."""
        return TunerCost()
