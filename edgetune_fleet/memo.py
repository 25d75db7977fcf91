"""A package's trunk with a memory: each text's trunk output computed once, then served from memory.

A fleet simulation asks the same frozen trunk for the same texts many times (personalize, evaluate before,
every swap method's job and evaluation). On a real device each of those jobs runs the trunk itself; in the
simulator that repetition is the bulk of the compute (MPNet: ~0.1-0.2 s per text on one core) and changes no
number but the wall time. :class:`MemoTrunk` wraps a :class:`~device_sim.package.DevicePackage`'s trunk
sessions: rows whose tokens were seen before are served from memory, the rest run in onnxruntime (only those
rows, re-padded to their own width). Outputs are exact: a row's hidden state at the real tokens does not
depend on the other rows of its batch or on padding (every consumer masks padded positions; they come back as
zeros). ``seconds`` and ``misses`` count the real trunk work, so a caller can tell what a job would have cost.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from device_sim.runtime import TRUNK_INPUTS, TRUNK_OUTPUTS


class MemoTrunk:
    """Install on ``package`` (its ``trunk_session`` answers with memoizing sessions) until :meth:`restore`."""

    def __init__(self, package: Any) -> None:
        self.package = package
        self._inner = package.trunk_session  # the bound method of the package's class
        self.cache: dict[tuple[str, bytes], np.ndarray] = {}
        self.hits = 0
        self.misses = 0
        self.seconds = 0.0  # real trunk time spent on misses
        package.trunk_session = self.session  # an instance attribute shadows the method

    def session(self, precision: str = "fp32", threads: int | None = None) -> _MemoSession:
        return _MemoSession(self, precision, self._inner(precision, threads))

    def clear(self) -> None:
        """Forget every output (the next job pays for its trunk again)."""
        self.cache.clear()

    def restore(self) -> None:
        self.package.__dict__.pop("trunk_session", None)
        self.cache.clear()


class _MemoSession:
    def __init__(self, memo: MemoTrunk, precision: str, inner: Any) -> None:
        self.memo, self.precision, self.inner = memo, precision, inner

    def run(self, output_names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        ids = np.asarray(feeds[TRUNK_INPUTS[0]])
        mask = np.asarray(feeds[TRUNK_INPUTS[1]])
        lengths = mask.sum(axis=1).astype(int)
        keys = [(self.precision, ids[b, : lengths[b]].tobytes()) for b in range(len(ids))]
        cache = self.memo.cache
        missing = [b for b, key in enumerate(keys) if key not in cache]
        if missing:
            width = max(1, int(lengths[missing].max()))
            start = time.perf_counter()
            sub = {TRUNK_INPUTS[0]: ids[missing, :width], TRUNK_INPUTS[1]: mask[missing, :width]}
            out = self.inner.run([TRUNK_OUTPUTS[0]], sub)[0]
            self.memo.seconds += time.perf_counter() - start
            for j, b in enumerate(missing):
                cache[keys[b]] = np.array(out[j, : lengths[b]], dtype=np.float32)
        self.memo.misses += len(missing)
        self.memo.hits += len(ids) - len(missing)
        first = cache[keys[0]]
        hidden = np.zeros((ids.shape[0], ids.shape[1], first.shape[-1]), dtype=np.float32)
        for b, key in enumerate(keys):
            hidden[b, : lengths[b]] = cache[key]
        results = {TRUNK_OUTPUTS[0]: hidden, TRUNK_OUTPUTS[1]: mask}
        return [results[name] for name in output_names]
