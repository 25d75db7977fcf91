"""Measure what the cost model predicts: FLOPs and memory of one training step above a cut.

* FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` around the forward and
  around the backward of one step (it counts matrix products: linear layers,
  attention's batched products, fused attention kernels), divided by the batch.
* Activations: every tensor autograd saves for backward during the forward,
  recorded with ``torch.autograd.graph.saved_tensors_hooks``; each storage is
  counted once (views share it) and parameters are left out.
* Training state: bytes of the trainable parameters, their gradients and the
  optimizer's state tensors after a real optimizer step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class StepMeasurement:
    forward_flops: float  # per example
    backward_flops: float  # per example
    activation_bytes: int  # saved for backward, whole batch
    trainable_bytes: int
    gradient_bytes: int
    optimizer_bytes: int


def register_cpu_attention_flops() -> None:
    """FlopCounterMode counts the GPU fused attention kernels but not the CPU one; count it the same way."""
    from torch.utils.flop_counter import flop_registry, register_flop_formula, sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten
    if aten._scaled_dot_product_flash_attention_for_cpu in flop_registry:
        return

    @register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu)
    def _forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    @register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward)
    def _backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def saved_activation_bytes(fn: Callable[[], Any], exclude: nn.Module | None = None) -> tuple[Any, int]:
    """Run ``fn`` and return (its result, bytes of the distinct storages autograd saved, parameters excluded)."""
    skip = {p.untyped_storage().data_ptr() for p in exclude.parameters()} if exclude is not None else set()
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in skip and ptr not in seen:
            seen[ptr] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn()
    return result, sum(seen.values())


def _tensor_bytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def measure_step(
    top: nn.Module,
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    owner: nn.Module | None = None,
) -> StepMeasurement:
    """One real training step of ``top`` on a batch of trunk output; ``owner`` holds every parameter."""
    from torch.utils.flop_counter import FlopCounterMode

    register_cpu_attention_flops()
    params = [p for p in top.parameters() if p.requires_grad]
    batch = hidden.shape[0]
    top.train()
    with FlopCounterMode(display=False) as forward_counter:
        logits, activations = saved_activation_bytes(lambda: top(hidden, attention_mask), owner or top)
        loss = torch.nn.functional.cross_entropy(logits, labels)
    with FlopCounterMode(display=False) as backward_counter:
        loss.backward()
    gradients = sum(_tensor_bytes(p.grad) for p in params if p.grad is not None)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepMeasurement(
        forward_flops=forward_counter.get_total_flops() / batch,
        backward_flops=backward_counter.get_total_flops() / batch,
        activation_bytes=activations,
        trainable_bytes=sum(_tensor_bytes(p) for p in params),
        gradient_bytes=gradients,
        optimizer_bytes=_tensor_bytes(list(optimizer.state.values())),
    )


def trunk_forward_flops(trunk: Callable[[], Any], batch: int) -> float:
    """FLOPs per example of a forward pass without autograd (the trunk in naive mode)."""
    from torch.utils.flop_counter import FlopCounterMode

    register_cpu_attention_flops()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        trunk()
    return counter.get_total_flops() / batch
