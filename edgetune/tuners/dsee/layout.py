"""Weights as (out, in) matrices, whatever the layer stores: ``nn.Linear`` keeps (out, in), GPT-2's
``Conv1D`` keeps (in, out). DSEE decomposes, masks and prunes in the (out, in) convention."""

from __future__ import annotations

import torch
from torch import nn


def is_conv1d(module: nn.Module) -> bool:
    """transformers' ``Conv1D`` or the plain-torch top's (:mod:`edgetune.native`): same name, same layout."""
    return type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None


def is_dense_layer(module: nn.Module) -> bool:
    """A plain ``nn.Linear`` or ``Conv1D`` (the layers DSEE adapts and stage 2 prunes)."""
    return isinstance(module, nn.Linear) or is_conv1d(module)


def weight_out_in(module: nn.Module) -> torch.Tensor:
    """The layer's weight as an (out, in) matrix (a view for Conv1D)."""
    if isinstance(module, nn.Linear):
        return module.weight
    if is_conv1d(module):
        return module.weight.t()
    raise TypeError(f"expected nn.Linear or Conv1D, got {type(module).__name__}")


def in_out_features(module: nn.Module) -> tuple[int, int]:
    out, inp = weight_out_in(module).shape
    return inp, out
