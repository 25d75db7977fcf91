"""Hooks into the training loop: what a method adds to :class:`~edgetune.top_trainer.TopTrainer` without a loop
of its own.

The loop (optimizer, warm-up and decay, clipping, device placement, checkpoints and resume, data parallel) is
written once. A method that trains differently plugs in here, the way callbacks plug into the Hugging Face
``Trainer``: HadSkip (:mod:`edgetune.skip`) anneals its gates' temperature before each step, adds its budget
penalty to the task loss and trains its gates at their own learning rate, all through one
:class:`TrainerCallback`. A plain function of a :class:`StepEvent` (progress reporting, a test that stops a run
at a given step) is still a callback: it is called after every optimizer step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class StepEvent:
    """Passed to callbacks after every optimizer step."""

    epoch: int
    step_in_epoch: int
    global_step: int
    total_steps: int
    loss: float


class TrainerCallback:
    """Every hook is optional; the loop calls them in this order.

    ``setup`` once before the optimizer is built; then per step ``on_step_begin`` (before the forward pass),
    ``loss`` (after it: a term added to the batch's cross-entropy), ``on_step_end`` (after the optimizer step);
    ``on_epoch_end`` before the epoch's history row is stored (and checkpointed).
    """

    def setup(self, device: torch.device) -> list[dict[str, Any]]:
        """Place the callback's own modules on ``device``; return optimizer parameter groups for them."""
        return []

    def on_step_begin(self, step: int, total_steps: int) -> None:
        """Before the forward pass of optimizer step ``step`` (0-based) of ``total_steps``."""

    def loss(self) -> torch.Tensor | None:
        """A term added to the task loss of the batch just run forward (None: nothing)."""
        return None

    def on_step_end(self, event: StepEvent) -> None:
        """After the optimizer step."""

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        """Add the callback's own figures to the epoch's history ``row`` (it is checkpointed with the run)."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors an exact resume needs (checkpointed with the trainer's state)."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`state_dict` on a resume."""
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, got {sorted(state)[:5]}")


class StepFunction(TrainerCallback):
    """A plain function of the :class:`StepEvent`, called after every optimizer step."""

    def __init__(self, function: Callable[[StepEvent], None]) -> None:
        self.function = function

    def on_step_end(self, event: StepEvent) -> None:
        self.function(event)


Callback = TrainerCallback | Callable[[StepEvent], None]


def as_callbacks(callbacks: Iterable[Callback]) -> list[TrainerCallback]:
    """Callbacks as objects: a plain function becomes a :class:`StepFunction`."""
    out = []
    for callback in callbacks:
        if isinstance(callback, TrainerCallback):
            out.append(callback)
        elif callable(callback):
            out.append(StepFunction(callback))
        else:
            raise TypeError(f"a callback is a TrainerCallback or a function of a StepEvent, not {callback!r}")
    return out


def split_state(
    state: dict[str, torch.Tensor], callbacks: list[TrainerCallback]
) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Undo :func:`join_state`: the tuner's tensors, and each callback's (by its class name)."""
    names = [type(callback).__name__ for callback in callbacks]
    own: dict[str, torch.Tensor] = {}
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key.startswith(CALLBACK_PREFIX):
            name, _, tensor = key[len(CALLBACK_PREFIX) :].partition(".")
            if name not in names:
                raise ValueError(f"the checkpoint holds the state of a {name} callback, which this run has not")
            parts.setdefault(name, {})[tensor] = value
        else:
            own[key] = value
    return own, [parts.get(name, {}) for name in names]


def join_state(tuner_state: dict[str, torch.Tensor], callbacks: list[TrainerCallback]) -> dict[str, torch.Tensor]:
    """The tuner's extra state and every callback's in one dict of tensors, a callback's keys prefixed with its
    class name (not its position: a run resumed with other stateless callbacks finds its state)."""
    state = dict(tuner_state)
    seen: set[str] = set()
    for callback in callbacks:
        own = callback.state_dict()
        if not own:
            continue
        name = type(callback).__name__
        if name in seen:
            raise ValueError(f"two callbacks of one class keep state: {name}")
        seen.add(name)
        state.update({f"{CALLBACK_PREFIX}{name}.{key}": value for key, value in own.items()})
    return state


CALLBACK_PREFIX = "callback."
