"""What every benchmark repeats: the common options, the machine record, peak RSS, exclusive timing, atomic writes.

Run the benchmarks as ``python benchmarks/<name>.py``: the script's directory is on ``sys.path``, so they import
this module as ``harness``. Nothing here imports torch; the versions record names only what is already imported.

- :func:`parser` — an ``ArgumentParser`` with ``--out``, ``--threads``, ``--lock`` and (optionally) ``--seed``.
- :func:`exclusive` — hold an ``flock`` on ``--lock`` around the timed part, or :func:`hold_lock` for the rest of
  the run (the same lock as ``flock /work/bench.lock python ...``, so runs of either kind never overlap).
- :func:`load_average` at the start, then :func:`machine_record` at the end: one dict shape for every result.
- :func:`peak_rss_mb` (this process's VmHWM), :func:`rss_mb`, :func:`tree_rss_mb` and :class:`PeakSampler` (a
  thread sampling any of them).
- :func:`write_json` / :func:`write_figure`: atomic writes (``edgetune.io`` and ``edgetune.report``).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PACKAGES = ("edgetune", "torch", "onnxruntime", "transformers", "executorch", "peft", "ray", "onnx")
"""Packages whose version the machine record names, each only when the benchmark imported it."""


# -- options -----------------------------------------------------------------------------------------------------
def parser(
    doc: str | None,
    *,
    out: Path = Path("benchmarks/results"),
    threads: int = 2,
    seed: int | None = None,
) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` with the options every benchmark has: ``--out``, ``--threads``, ``--lock`` and, when
    ``seed`` is given, ``--seed`` with that default. The script adds its own options after these."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=out, help=f"where the results go (default {out})")
    ap.add_argument("--threads", type=int, default=threads, help=f"torch / onnxruntime threads (default {threads})")
    ap.add_argument("--lock", type=Path, default=None,
                    help="flock this file (e.g. /work/bench.lock) around the timed part")  # fmt: skip
    if seed is not None:
        ap.add_argument("--seed", type=int, default=seed)
    return ap


@contextlib.contextmanager
def exclusive(lock: Path | None) -> Iterator[float]:
    """Hold an exclusive ``flock`` on ``lock`` (waiting for it) for the block; yields the seconds waited.
    ``None``: no lock, yields 0."""
    if lock is None:
        yield 0.0
        return
    start = time.perf_counter()
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield time.perf_counter() - start
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


_held: list[Any] = []


def hold_lock(lock: Path | None) -> float:
    """Like running under ``flock LOCK python ...``: take the exclusive lock now (waiting for it) and keep it until
    the process exits; returns the seconds waited. ``None``: no lock."""
    if lock is None:
        return 0.0
    start = time.perf_counter()
    f = open(lock, "a")  # noqa: SIM115  closed (and the lock released) at exit
    fcntl.flock(f, fcntl.LOCK_EX)
    _held.append(f)
    return time.perf_counter() - start


# -- the machine record ------------------------------------------------------------------------------------------
def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def load_average() -> list[float]:
    """The 1, 5 and 15-minute load averages (other work on this shared machine)."""
    return [float(x) for x in os.getloadavg()]


def versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Python and the version of each of ``packages`` that this process has imported (none is imported here)."""
    from importlib import metadata  # here: a worker that imports this module measures its own RSS

    out = {"python": platform.python_version()}
    for name in packages:
        if name in sys.modules:
            try:
                out[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                out[name] = str(getattr(sys.modules[name], "__version__", "unknown"))
    return out


def installed(packages: tuple[str, ...]) -> dict[str, str]:
    """The installed version of each of ``packages`` (``missing`` when not installed), without importing them."""
    from importlib import metadata

    out = {}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


def git_commit(root: Path = ROOT) -> dict[str, Any]:
    """The checked-out commit and whether the work tree differs from it (``dirty``); ``unknown`` outside git."""

    def git(*cmd: str) -> str:
        return subprocess.run(["git", *cmd], cwd=root, capture_output=True, text=True, check=True).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": "unknown", "dirty": None}


def machine_record(load_start: list[float] | None = None, threads: int | None = None,
                   workers_import: tuple[str, ...] = (), **extra: Any) -> dict[str, Any]:  # fmt: skip
    """One shape for every benchmark: CPU, cores, threads, platform, versions, commit + dirty flag, and the load
    average at the start (``load_start``, taken by the caller with :func:`load_average`) and now. Versions: the
    packages of :data:`PACKAGES` this process imported, and ``workers_import`` (what the benchmark's worker
    processes import) as installed. ``extra`` (e.g. a note) is added as is."""
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "threads": threads,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {**versions(), **installed(workers_import)},
        **git_commit(),
        "load_average_start": load_start,
        "load_average_end": load_average(),
        **extra,
    }


# -- memory ------------------------------------------------------------------------------------------------------
def status_mb(field: str, pid: int | str = "self") -> float:
    """A ``kB`` field of ``/proc/<pid>/status`` (VmRSS, VmHWM, RssAnon, ...) in MB; NaN when absent."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def rss_mb() -> float:
    """This process's resident memory now (VmRSS), MB."""
    return status_mb("VmRSS")


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM), MB. Not ``ru_maxrss``: Linux keeps that across fork + exec, so
    a worker started by the benchmark would report the parent's peak as its own (used only without /proc)."""
    peak = status_mb("VmHWM")
    return peak if peak == peak else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _children(pid: int) -> list[int]:
    out = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            out += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        pass
    return out


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants now, MB (cheap: a sampler must not steal the job's
    CPU)."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        rss = status_mb("VmRSS", p)
        if rss == rss:
            total += rss
            todo += _children(p)
    return total


class PeakSampler:
    """The peak of each value ``probe`` returns, sampled by a thread every ``interval`` seconds while in the
    ``with`` block (for what VmHWM cannot give: another process's tree, RssAnon)::

        with PeakSampler(lambda: {"rss": rss_mb(), "anon": status_mb("RssAnon")}, 0.005) as s:
            work()
        s.peak["rss"]
    """

    def __init__(self, probe: Callable[[], dict[str, float]], interval: float = 0.02) -> None:
        self.probe, self.interval = probe, interval
        self.peak: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        for key, value in self.probe().items():
            if value == value:  # NaN: the process is gone
                self.peak[key] = max(self.peak.get(key, 0.0), value)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


# -- atomic writes -----------------------------------------------------------------------------------------------
def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as JSON atomically (a crash leaves the old file or the new one, never half of one)."""
    from edgetune.io import atomic_write_json

    atomic_write_json(path, obj)
    return Path(path)


def write_figure(fig: Any, path: str | Path, dpi: int = 120) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    from edgetune.report import save_figure

    return save_figure(fig, path, dpi=dpi)
