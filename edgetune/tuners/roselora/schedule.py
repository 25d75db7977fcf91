"""The density schedule of RoseLoRA (the cubic budget schedule of AdaLoRA, Zhang et al., ICLR 2023)."""

from __future__ import annotations

import math


def density_at(step: int, total_steps: int, target: float, warmup: float, final: float) -> float:
    """Fraction of each A row / B column kept after optimizer step ``step`` (0-based) of ``total_steps``.

    With t_i = round(warmup * T) and t_f = round(final * T):
    1 for step < t_i; target + (1 - target) * (1 - (step - t_i) / (T - t_i - t_f))^3
    for t_i <= step < T - t_f; the target from step T - t_f on. Pruning starts
    gently (the cube is flat near 1) and the last t_f steps train at the final
    density, so the surviving entries can settle.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    start = round(warmup * total_steps)
    end = total_steps - round(final * total_steps)
    if step < start:
        return 1.0
    if step >= end or end <= start:
        return target
    progress = (step - start) / (end - start)
    return target + (1.0 - target) * (1.0 - progress) ** 3


def keep_count(density: float, n: int) -> int:
    """Entries kept out of ``n`` at ``density``: ceil(density * n), at least 1, at most n.

    The product is rounded to 6 decimals first so that, e.g., 0.3 * 10 keeps 3, not 4.
    """
    return min(n, max(1, math.ceil(round(density * n, 6))))
