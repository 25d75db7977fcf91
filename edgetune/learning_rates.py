"""Learning rates that depend on what is trained.

One learning rate for every cut under-trains the cheap ones: a head trained
from scratch alone needs ~1e-3, a few top blocks ~3e-4, every block of a
pretrained encoder ~5e-5 (at lr 5e-5 and head lr = lr, training only block 6 of
MiniLM on 2,000 tweets lost 7 points against the same cut at 3e-4). The rule:

* the head (and the final norm) trains at ``HEAD_LR`` = 1e-3 beside trained
  blocks, at ``HEAD_ALONE_LR`` = 9e-3 when it is all that trains (a linear
  head on frozen features: on the calibration tasks' validation splits the
  head alone kept improving up to the largest rate tried, 9x the block cuts'
  head rate);
* blocks trained with the ``full`` tuner: ``FEW_BLOCKS_LR`` = 3e-4 while at most
  half of the model's blocks are trained, then log-linearly down to
  ``ALL_BLOCKS_LR`` = 5e-5 when all of them are (more trained depth -> more
  pretrained knowledge to lose, so smaller steps);
* adapter tuners (LoRA, RoseLoRA, DSEE) train fresh low-rank factors:
  ``ADAPTER_LR`` = 5e-4 whatever the depth;
* short runs take larger steps: every rate is multiplied by
  ``sqrt(REFERENCE_STEPS / steps)``, clipped to [1, 3] (``step_factor``). The
  base rates were tuned for ~250 optimizer steps (2,000 tweets, 2 epochs,
  batch 16); with 240 examples and 2 epochs (30 steps) the same rates left a
  head-only cut 20 points short on TREC questions, and x3 won at every cut on
  the calibration tasks' validation splits.

The constants come from the calibration tasks (tweets, TREC) of
``benchmarks/planner_study.py``, on their validation splits;
``lr_candidates`` gives the small grid that ``edgetune train --lr auto`` and
the benchmark's per-cut oracle search.
"""

from __future__ import annotations

import math

HEAD_LR = 1e-3
HEAD_ALONE_LR = 9e-3
FEW_BLOCKS_LR = 3e-4
ALL_BLOCKS_LR = 5e-5
ADAPTER_LR = 5e-4
ADAPTER_TUNERS = ("lora", "roselora", "dsee")
REFERENCE_STEPS = 250
MAX_STEP_FACTOR = 3.0


def step_factor(steps: int | None) -> float:
    """How much larger the rates are for a run of ``steps`` optimizer steps (1 when unknown or long)."""
    if steps is None or steps >= REFERENCE_STEPS:
        return 1.0
    return float(min(MAX_STEP_FACTOR, math.sqrt(REFERENCE_STEPS / max(steps, 1))))


def block_learning_rate(trained_blocks: int, num_layers: int, tuner: str = "full", steps: int | None = None) -> float:
    """Learning rate for the trained blocks of a model with ``num_layers`` blocks (see the module docstring)."""
    if num_layers < 1 or not 0 <= trained_blocks <= num_layers:
        raise ValueError(f"trained_blocks must be in 0..{num_layers}, got {trained_blocks}")
    if tuner in ADAPTER_TUNERS:
        return ADAPTER_LR * step_factor(steps)
    fraction = trained_blocks / num_layers
    if fraction <= 0.5:
        return FEW_BLOCKS_LR * step_factor(steps)
    t = (fraction - 0.5) / 0.5
    return float(math.exp((1 - t) * math.log(FEW_BLOCKS_LR) + t * math.log(ALL_BLOCKS_LR))) * step_factor(steps)


def default_learning_rates(
    trained_blocks: int, num_layers: int, tuner: str = "full", steps: int | None = None
) -> tuple[float, float]:
    """``(block lr, head lr)`` for training ``trained_blocks`` top blocks (0: the head alone) for ``steps``."""
    head = HEAD_ALONE_LR if trained_blocks == 0 else HEAD_LR
    return block_learning_rate(trained_blocks, num_layers, tuner, steps), head * step_factor(steps)


def lr_candidates(
    trained_blocks: int, num_layers: int, tuner: str = "full", steps: int | None = None
) -> list[tuple[float, float]]:
    """The grid a learning-rate search tries: the rule's rates, and the rule x 1/3 and x 3.

    Head-only training scales the head's rate (it is the only one that acts); otherwise the
    block rate moves and the head stays at the rule's rate.
    """
    block, head = default_learning_rates(trained_blocks, num_layers, tuner, steps)
    if trained_blocks == 0:
        return [(block, head * f) for f in (1 / 3, 1.0, 3.0)]
    return [(block * f, head) for f in (1 / 3, 1.0, 3.0)]


def linear_warmup_factor(step: int, warmup: int, total: int) -> float:
    """The learning-rate multiplier at ``step``: linear warm-up over ``warmup`` steps, then linear decay to 0
    at ``total`` (transformers' ``get_linear_schedule_with_warmup``; every backend trains with this one)."""
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))
