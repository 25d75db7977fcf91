"""Timing and machine helpers shared by the benchmarks (run as ``python benchmarks/<name>.py``)."""

from __future__ import annotations

import time

import numpy as np
from harness import cpu_name  # noqa: F401  re-exported: benchmarks/harness.py is the one machine record


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def blocked(fns: dict, repeats: int, rounds: int = 10, warmup: int = 2, pause: float = 0.2) -> dict[str, dict]:
    """Median / min / p25 / p75 seconds per call. Each side runs in short blocks of consecutive calls, the
    blocks of all sides alternating over ``rounds`` (A B C A B C ...), with a pause between blocks, so
    a burst of background load lands on every side alike.

    Not call-by-call interleaving: onnxruntime's and OpenMP's worker threads keep spinning for a while
    after a call, and on a 2-core machine that spinning steals the other runtime's cores (measured: it
    made torch eager look 3x slower at batch 1). A device runs one runtime at a time.
    """
    samples: dict[str, list[float]] = {name: [] for name in fns}
    per_round = max(1, repeats // rounds)
    for _ in range(rounds):
        for name, fn in fns.items():
            time.sleep(pause)
            timed(fn, warmup)
            samples[name] += timed(fn, per_round)
    return {
        name: {
            "median_s": float(np.median(s)),
            "min_s": float(np.min(s)),
            "p25_s": float(np.percentile(s, 25)),
            "p75_s": float(np.percentile(s, 75)),
            "calls": len(s),
        }
        for name, s in samples.items()
    }
