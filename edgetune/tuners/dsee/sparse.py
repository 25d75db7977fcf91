"""The sparse residual of DSEE: a layer plus N trainable weights at fixed positions.

``SparseResidual(base)`` computes ``base(x) + x S^T`` with S (out x in) zero
except at N positions (rows, cols), whose values are the only trainable
parameters. S is never materialized: the product gathers the N input features
it needs and adds them into their output features,

    y[..., rows[k]] += values[k] * x[..., cols[k]]      (k = 1..N),

so forward and backward cost O(tokens x N) instead of a dense matmul, and
autograd computes exactly the N weight gradients. The module works the same
for ``nn.Linear`` and GPT-2's ``Conv1D`` because positions are kept in the
(out, in) convention of :mod:`edgetune.tuners.dsee.layout`.

It exposes the wrapped layer as ``base_layer``, so it can sit inside a peft
LoRA layer (peft's ``get_base_layer`` then reaches the original layer for
merging the low-rank part).
"""

from __future__ import annotations

import torch
from torch import nn

from edgetune.tuners.dsee.layout import in_out_features, weight_out_in


class SparseResidual(nn.Module):
    def __init__(self, base_layer: nn.Module, rows: torch.Tensor, cols: torch.Tensor) -> None:
        super().__init__()
        self.base_layer = base_layer
        w = weight_out_in(base_layer)
        self.register_buffer("dsee_index", torch.zeros(2, 0, dtype=torch.long, device=w.device))
        self.dsee_values = nn.Parameter(torch.zeros(0, dtype=w.dtype, device=w.device))
        self.set_positions(rows, cols)

    @property
    def shape(self) -> tuple[int, int]:
        """(out, in) of the wrapped layer."""
        inp, out = in_out_features(self.base_layer)
        return out, inp

    def set_positions(self, rows: torch.Tensor, cols: torch.Tensor) -> None:
        """Move the residual to new positions (values reset to zero); checks they are distinct and in range."""
        out, inp = self.shape
        rows, cols = rows.long().flatten(), cols.long().flatten()
        if rows.shape != cols.shape:
            raise ValueError("rows and cols of the sparse residual differ in length")
        if rows.numel() and (
            int(rows.min()) < 0 or int(rows.max()) >= out or int(cols.min()) < 0 or int(cols.max()) >= inp
        ):
            raise ValueError(f"sparse residual positions out of range for a ({out}, {inp}) weight")
        if torch.unique(rows * inp + cols).numel() != rows.numel():
            raise ValueError("sparse residual positions repeat")
        device = self.dsee_values.device
        self.dsee_index = torch.stack([rows, cols]).to(device)
        with torch.no_grad():
            self.dsee_values.data = torch.zeros(rows.numel(), dtype=self.dsee_values.dtype, device=device)

    @property
    def num_entries(self) -> int:
        return self.dsee_values.numel()

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        y = self.base_layer(x, *args, **kwargs)
        rows, cols = self.dsee_index[0], self.dsee_index[1]
        contribution = x[..., cols].to(self.dsee_values.dtype) * self.dsee_values
        return y.index_add(-1, rows, contribution.to(y.dtype))

    def dense_residual(self) -> torch.Tensor:
        """S as a dense (out, in) matrix (for merging and checks)."""
        out, inp = self.shape
        s = torch.zeros(out, inp, dtype=self.dsee_values.dtype, device=self.dsee_values.device)
        s[self.dsee_index[0], self.dsee_index[1]] = self.dsee_values.detach()
        return s

    @torch.no_grad()
    def fold(self) -> nn.Module:
        """Add S into the wrapped layer's weight and return that layer (this wrapper is then spent)."""
        w = weight_out_in(self.base_layer)
        w.index_put_((self.dsee_index[0], self.dsee_index[1]), self.dsee_values.to(w.dtype), accumulate=True)
        return self.base_layer
