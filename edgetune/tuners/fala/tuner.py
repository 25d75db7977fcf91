"""``fala``: the personal state a FaLA backbone swap writes, behind the interface of every other tuner.

A swap trains no block; it replaces the head above the new backbone's features by the personal matrix and the
user's old personal head (:class:`edgetune.fala.FalaHead`). So for this kind ``prepare`` only freezes the top,
``load_delta`` puts the state's head in place of the package's, and ``merge`` folds the whole affine head into
one linear layer, after which the top is an ordinary top with its own head. Fitting a FaLA head is the swap's
job (:mod:`device_sim.swap`), not a training loop's: this tuner is for reading states, and the trainer does
not offer it.
"""

from __future__ import annotations

from typing import Any

import torch

from edgetune.fala import FalaHead, as_linear
from edgetune.modeling import TopModel
from edgetune.tuners.base import Tuner
from edgetune.tuners.fala.config import FalaConfig

REQUIRED = ("matrix.linear.weight", "matrix.linear.bias", "head.weight", "head.bias")


class FalaTuner(Tuner):
    name = "fala"
    Config = FalaConfig

    def __init__(self, config: FalaConfig | None = None, **params: Any) -> None:
        if config is None:  # a state's flat params: the form, and the swap's settings beside it
            settings = dict(params.pop("settings", {}) or {})
            form = params.pop("form", "plain")
            config = FalaConfig(form=form, settings={**settings, **params})
        super().__init__(config)

    def _prepare(self, top: TopModel) -> None:
        return None  # no block trains: the state replaces the head

    def delta_state(self, top: TopModel) -> dict[str, torch.Tensor]:
        return {name: t.detach().cpu().contiguous().clone() for name, t in top.head.state_dict().items()}

    def load_delta(self, top: TopModel, state: dict[str, torch.Tensor]) -> None:
        """Replace ``top``'s head by the state's FaLA head; it must read the features this top gives."""
        missing = [name for name in REQUIRED if name not in state]
        if missing:
            raise ValueError(f"not a FaLA personal head: missing {missing}")
        residual = "base.weight" in state or "reference.weight" in state
        if residual != (self.config.form == "residual"):
            raise ValueError(f"the tensors are a {'residual' if residual else 'plain'} FaLA head, the state says "
                             f"{self.config.form!r}")  # fmt: skip
        width = top.head.in_features if isinstance(top.head, torch.nn.Linear) else top.head.matrix.linear.in_features
        d_new = state["matrix.linear.weight"].shape[1]
        if d_new != width:
            raise ValueError(f"the personal matrix reads {d_new} features, this top gives {width}")
        try:
            head = FalaHead.from_state(state)
        except (KeyError, RuntimeError) as err:
            raise ValueError(f"not a FaLA personal head ({err})") from None
        top.head = head.to(next(top.head.parameters()).device)
        top.head.requires_grad_(True)

    def merge(self, top: TopModel) -> TopModel:
        """The FaLA head folded into one ``nn.Linear`` (exact: every form is affine in the features)."""
        if isinstance(top.head, FalaHead):
            top.head = as_linear(top.head, top.head.matrix.linear.in_features)
        return top
