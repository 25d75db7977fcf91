"""Backbone replacement across a fleet of simulated users, before doing it for real.

Every user (:mod:`edgetune_fleet.users`) personalizes the old package on their training texts; then the
fleet moves to the new package and each user's state is carried over by every method asked for (:mod:`device_sim.swap`):

* ``none``         the new package's global head, no adaptation;
* ``fala``         FaLA with correlation-clustered curated examples;
* ``fala-random``  FaLA with the same number of randomly chosen examples (``random_draws`` draws);
* ``head-only``    the new head trained on the curated examples;
* ``retrain``      the new package's top layers re-trained on all the user's data.

Per user and method: accuracy on the user's held-out texts before the swap (old package + personal state) and
after it, examples used, backward FLOPs (and the factor below full re-training of the new backbone) and wall
time; per user, what the simulation cost (``cost``: trunk passes, training, swaps, evaluation; seconds and
backward FLOPs), the input of a fleet-size projection (``benchmarks/fleet_scale.py``).

Users are independent, so a fleet runs one after another in this process (``backend="local"``) or as one Ray
task per user (``backend="ray"``, :mod:`edgetune_fleet.ray_backend`). A user's result depends on its data,
the packages, the settings and the thread count, never on the order or the process that ran it, so both
backends give the same rows (timings aside: :func:`without_timings`). With ``out``, every finished user is
appended to ``out/simulate.jsonl`` (the run log) and ``out/simulate.json`` is rewritten atomically as users
finish; a simulation that was killed resumes from the log without redoing its finished users.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from device_sim.device import Device
from device_sim.personalize import PersonalizeConfig
from device_sim.swap import SwapConfig, swap
from edgetune import strict_json
from edgetune.errors import EdgetuneError
from edgetune_fleet.users import SimulatedUser

FLEET_METHODS = ("none", "fala", "fala-random", "head-only", "retrain")
BACKENDS = ("local", "ray")
LOG_NAME, RESULTS_NAME = "simulate.jsonl", "simulate.json"
LOG_VERSION = 1


class FleetError(EdgetuneError, ValueError):
    """A fleet simulation cannot run as asked (backend, run log, a user's job); the message says what to do."""


@dataclass
class FleetConfig:
    methods: tuple[str, ...] = FLEET_METHODS
    fraction: float = 0.1  # curated examples per user (FaLA, head-only)
    random_draws: int = 3  # fala-random repeats with seeds 0..draws-1
    personalize: PersonalizeConfig = field(default_factory=lambda: PersonalizeConfig.plain(progress=False))
    fala: SwapConfig = field(default_factory=SwapConfig)
    threads: int | None = None

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in FLEET_METHODS]
        if unknown:
            raise ValueError(f"unknown fleet methods {unknown}; known: {', '.join(FLEET_METHODS)}")


def _swap_row(result: Any, accuracy: float) -> dict[str, Any]:
    return {
        "accuracy": accuracy,
        "examples_used": result.examples_used,
        "backward_flops": result.backward_flops,
        "full_retrain_backward_flops": result.full_retrain_backward_flops,
        "flops_reduction": result.flops_reduction,
        "seconds": result.seconds["total"],
    }


def _personalized_row(
    old: Device, user: SimulatedUser, personal: Path, config: FleetConfig
) -> tuple[dict, dict, float]:
    """Personalize ``user`` on the old package: the row's ``before`` part, the job's seconds and evaluation time."""
    start = time.perf_counter()
    job = old.personalize(user.train, personal, config.personalize)
    personalized = time.perf_counter()
    row: dict[str, Any] = {
        "user": user.user_id,
        "num_train": len(user.train),
        "num_test": len(user.test),
        "preference": user.preference,
        "before": {
            "global": old.evaluate(user.test)["accuracy"],
            "personal": old.evaluate(user.test, personal)["accuracy"],
            "personalize_seconds": personalized - start,
            "backward_flops": job.backward_flops,
        },
        "after": {},
    }
    return row, dict(job.seconds), time.perf_counter() - personalized


def _swap_runs(config: FleetConfig) -> list[tuple[str, SwapConfig]]:
    """The swap jobs ``config`` asks for, named as their rows (``fala-random/<seed>`` once per draw)."""
    base = replace(config.fala, fraction=config.fraction, personalize=config.personalize)
    runs: list[tuple[str, SwapConfig]] = []
    for method in config.methods:
        if method == "fala":
            runs.append(("fala", replace(base, method="fala", selection="cluster")))
        elif method == "fala-random":
            runs += [
                (f"fala-random/{s}", replace(base, method="fala", selection="random", seed=s))
                for s in range(config.random_draws)
            ]
        elif method in ("head-only", "retrain"):
            runs.append((method, replace(base, method=method)))
    return runs


def _merge_random_draws(after: dict[str, Any]) -> None:
    """Replace the ``fala-random/<seed>`` rows by one ``fala-random`` row: mean accuracy and seconds, per draw kept."""
    draws = [v for k, v in after.items() if k.startswith("fala-random/")]
    if draws:
        after["fala-random"] = {
            **draws[0],
            "accuracy": float(np.mean([d["accuracy"] for d in draws])),
            "accuracy_per_draw": [d["accuracy"] for d in draws],
            "seconds": float(np.mean([d["seconds"] for d in draws])),
        }
        for k in [k for k in after if k.startswith("fala-random/")]:
            del after[k]


def simulate_user(
    old: Device,
    new: Device,
    user: SimulatedUser,
    work: Path,
    config: FleetConfig,
    before_swaps: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """One user's row: personalize on ``old``, then swap to ``new`` by every method of ``config``.

    ``before_swaps`` is called between the old package's work (personalize, evaluate) and the swaps (e.g. to
    clear a :class:`~edgetune_fleet.memo.MemoTrunk`, so the swaps pay for their own trunk passes).
    ``cost`` splits the user's wall time (and backward FLOPs) into the device's work, trunk passes (the old
    package's over the training texts, the new one's once for every method), training (personalization:
    tokenizing, candidates, guard, writing) and the swaps (each method's job, less the shared trunk pass), and
    the simulator's own ``evaluation`` on the held-out texts."""
    start = time.perf_counter()
    personal = work / f"{user.user_id}-old"
    row, job_seconds, evaluation = _personalized_row(old, user, personal, config)
    if before_swaps is not None:
        before_swaps()
    runs = _swap_runs(config)
    if "none" in config.methods:
        t = time.perf_counter()
        row["after"]["none"] = {"accuracy": new.evaluate(user.test)["accuracy"], "examples_used": 0,
                                "backward_flops": 0.0, "seconds": 0.0}  # fmt: skip
        evaluation += time.perf_counter() - t
    t = time.perf_counter()
    features = new.features(user.train.texts) if runs else None  # the new package's features, once per user
    row["embed_new_seconds"] = embed = time.perf_counter() - t
    swap_seconds = swap_flops = 0.0
    for name, swap_config in runs:
        out = work / f"{user.user_id}-{name.replace('/', '-')}"
        result = swap(old, new, personal, user.train, out, swap_config, threads=config.threads, new_features=features)
        swap_seconds += result.seconds["total"]
        swap_flops += result.backward_flops
        t = time.perf_counter()
        row["after"][name] = _swap_row(result, new.evaluate(user.test, out)["accuracy"])
        evaluation += time.perf_counter() - t
        if swap_config.method != "retrain":  # it would have embedded the texts itself
            row["after"][name]["seconds"] += embed
        shutil.rmtree(out, ignore_errors=True)
    _merge_random_draws(row["after"])
    shutil.rmtree(personal, ignore_errors=True)
    trunk = job_seconds.get("trunk", 0.0)
    row["cost"] = {
        "trunk": {"seconds": trunk + embed, "backward_flops": 0.0},
        "training": {
            "seconds": job_seconds.get("total", 0.0) - trunk,
            "backward_flops": row["before"]["backward_flops"],
        },
        "swap": {"seconds": swap_seconds, "backward_flops": swap_flops},
        "evaluation": {"seconds": evaluation, "backward_flops": 0.0},
        "total_seconds": time.perf_counter() - start,
        "threads": config.threads,
    }
    return row


def without_timings(value: Any) -> Any:
    """``value`` (a row, a list of rows, a summary) without wall times, worker names and thread counts: what two
    runs of the same fleet with the same seed must agree on, whatever backend, order or process ran them."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if "seconds" not in k and k not in _RUN_KEYS}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


_RUN_KEYS = ("worker", "threads")


def _stats(values: Sequence[float | None]) -> dict[str, float | None]:
    """Mean, std, min and max of the values that exist (``None`` or non-finite ones are left out: a ratio over
    nothing); all ``None`` when none does, never NaN."""
    arr = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if not arr.size:
        return {"mean": None, "std": None, "min": None, "max": None}
    return {"mean": float(arr.mean()), "std": float(arr.std()), "min": float(arr.min()), "max": float(arr.max())}


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Fleet averages per method, FaLA's share of re-training's accuracy and its margin over random selection."""
    methods = list(rows[0]["after"])
    summary: dict[str, Any] = {
        "before_personal": _stats([r["before"]["personal"] for r in rows]),
        "before_global": _stats([r["before"]["global"] for r in rows]),
        "methods": {},
    }
    for m in methods:
        after = [r["after"][m] for r in rows]
        entry = {
            "accuracy": _stats([a["accuracy"] for a in after]),
            "examples_used": _stats([a["examples_used"] for a in after]),
            "backward_flops": _stats([a["backward_flops"] for a in after]),
            "seconds": _stats([a["seconds"] for a in after]),
        }
        if any(a.get("flops_reduction") for a in after):
            entry["flops_reduction"] = _stats([a.get("flops_reduction") for a in after])
        summary["methods"][m] = entry
    if "fala" in methods and "retrain" in methods:
        ratio = [r["after"]["fala"]["accuracy"] / r["after"]["retrain"]["accuracy"] for r in rows]
        summary["fala_over_retrain"] = {
            "of_mean_accuracy": summary["methods"]["fala"]["accuracy"]["mean"]
            / summary["methods"]["retrain"]["accuracy"]["mean"],
            "per_user": _stats(ratio),
            "examples_fraction": float(np.mean([r["after"]["fala"]["examples_used"] / r["num_train"] for r in rows])),
        }
    if "fala" in methods and "fala-random" in methods:
        margins = [
            r["after"]["fala"]["accuracy"] - draw
            for r in rows
            for draw in r["after"]["fala-random"]["accuracy_per_draw"]
        ]
        summary["cluster_minus_random"] = {**_stats(margins), "pairs": len(margins)}
    costed = [r["cost"] for r in rows if "cost" in r]
    if costed:
        summary["cost_per_user"] = {
            part: {
                "seconds": _stats([c[part]["seconds"] for c in costed]),
                "backward_flops": _stats([c[part]["backward_flops"] for c in costed]),
            }
            for part in ("trunk", "training", "swap", "evaluation")
        }
        summary["cost_per_user"]["total_seconds"] = _stats([c["total_seconds"] for c in costed])
    return summary


def users_digest(users: Sequence[SimulatedUser]) -> str:
    """sha256 over every user's id, texts and labels (train and test): which fleet a run log belongs to."""
    h = hashlib.sha256()
    for u in users:
        h.update(json.dumps([u.user_id, u.train.texts, u.train.labels, u.test.texts, u.test.labels]).encode())
    return h.hexdigest()


def _config_record(config: FleetConfig) -> dict[str, Any]:
    fala = asdict(config.fala)
    fala.pop("personalize")
    return {
        "methods": list(config.methods),
        "fraction": config.fraction,
        "random_draws": config.random_draws,
        "personalize": asdict(config.personalize),
        "fala": fala,
    }


def fleet_identity(
    old_package: str | Path, new_package: str | Path, users: Sequence[SimulatedUser], config: FleetConfig
) -> dict[str, Any]:
    """What a run log must match to be resumed: both packages (their manifests, which hash every file), the
    users and the settings that change a result (not the backend, the workers or the thread count)."""
    from edgetune.io import sha256_file

    return json.loads(json.dumps({
        "old_package": sha256_file(Path(old_package) / "manifest.json"),
        "new_package": sha256_file(Path(new_package) / "manifest.json"),
        "users": users_digest(users),
        "config": _config_record(config),
    }))  # fmt: skip


class FleetLog:
    """``simulate.jsonl``: a header line (the run's identity) and one line per finished user, appended and synced
    as each finishes. A line cut short by a kill is dropped when the log is opened again; a log of another run
    is an error unless ``overwrite``."""

    def __init__(self, path: str | Path, identity: dict[str, Any], overwrite: bool = False) -> None:
        from edgetune.io import atomic_write_text

        self.path = Path(path)
        header = {"edgetune_fleet_log": LOG_VERSION, "identity": identity}
        self.rows: dict[str, dict[str, Any]] = {}
        lines: list[str] = []
        if self.path.exists() and not overwrite:
            lines = self._read(identity)
        if not lines:
            lines = [strict_json.dumps(header)]
        atomic_write_text(self.path, "".join(line + "\n" for line in lines))  # drops a torn last line
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())

    def _read(self, identity: dict[str, Any]) -> list[str]:
        raw = self.path.read_text(encoding="utf-8").splitlines()
        if not raw:
            return []
        try:
            header = json.loads(raw[0])
        except json.JSONDecodeError:
            header = {}
        if header.get("edgetune_fleet_log") != LOG_VERSION:
            raise FleetError(f"{self.path}: not an edgetune fleet log; use another --out or pass --overwrite")
        saved = header.get("identity", {})
        differ = sorted(k for k in saved.keys() | identity.keys() if saved.get(k) != identity.get(k))
        if differ:
            raise FleetError(
                f"{self.path}: log of another simulation (differs in: {', '.join(differ)}); use another --out or "
                "pass --overwrite to start over"
            )
        kept = [raw[0]]
        for line in raw[1:]:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                break  # the line a kill cut short (only ever the last one)
            self.rows[row["user"]] = row
            kept.append(line)
        return kept

    def append(self, row: dict[str, Any]) -> None:
        self._file.write(strict_json.dumps(row) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.rows[row["user"]] = row

    def close(self) -> None:
        self._file.close()


def _results(
    config: FleetConfig, meta: dict[str, Any], users: Sequence[SimulatedUser], rows: dict[str, Any], run: dict
) -> dict[str, Any]:
    ordered = [rows[u.user_id] for u in users if u.user_id in rows]
    return {
        "config": _config_record(config),
        "packages": meta,
        "complete": len(ordered) == len(users),
        "num_users": len(users),
        "run": run,
        "users": ordered,
        "summary": summarize(ordered) if ordered else {},
    }


class _Snapshots:
    """Rewrites ``simulate.json`` atomically as users finish; at most every ``max(1 s, 20 x the last write)``, so a
    fleet of thousands spends a few percent of its time rewriting its results."""

    def __init__(self, path: Path) -> None:
        self.path, self.last, self.cost = path, 0.0, 0.0

    def write(self, results: Callable[[], dict[str, Any]], force: bool = False) -> None:
        from edgetune.io import atomic_write_json

        now = time.perf_counter()
        if not force and now - self.last < max(1.0, 20 * self.cost):
            return
        atomic_write_json(self.path, results())
        self.last = time.perf_counter()
        self.cost = self.last - now


def _check_request(backend: str, workers: int | None, users: list[SimulatedUser]) -> None:
    """Refuse a fleet that cannot run as asked before any package is opened (a missing Ray extra included)."""
    if backend not in BACKENDS:
        raise FleetError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if workers is not None and workers < 1:
        raise FleetError(f"workers must be >= 1, got {workers}")
    if not users:
        raise ValueError("no users to simulate")
    if len({u.user_id for u in users}) != len(users):
        raise ValueError("user ids must be unique")
    if backend == "ray":
        from edgetune_fleet.ray_backend import require_ray

        require_ray()  # before any work: a missing extra is a one-line error


def _packages_meta(old: Device, new: Device) -> dict[str, Any]:
    """The results' ``packages`` record; packages with other labels cannot be swapped between."""
    if old.labels != new.labels:
        from device_sim.swap import SwapError

        raise SwapError(f"the packages' labels differ: {old.labels} vs {new.labels}")
    return {"old": old.package.manifest["backbone"], "new": new.package.manifest["backbone"],
            "old_cut": old.package.cut, "new_cut": new.package.cut}  # fmt: skip


def _open_outputs(
    out: str | Path | None,
    old_package: str | Path,
    new_package: str | Path,
    users: list[SimulatedUser],
    config: FleetConfig,
    overwrite: bool,
) -> tuple[FleetLog | None, _Snapshots | None, dict[str, dict[str, Any]]]:
    """The run log and results snapshots under ``out`` (none without it) and the rows the log already holds."""
    if out is None:
        return None, None, {}
    out = Path(out)
    log = FleetLog(out / LOG_NAME, fleet_identity(old_package, new_package, users, config), overwrite)
    rows = {u.user_id: log.rows[u.user_id] for u in users if u.user_id in log.rows}  # in the order given
    return log, _Snapshots(out / RESULTS_NAME), rows


def simulate_fleet(
    old_package: str | Path,
    new_package: str | Path,
    users: list[SimulatedUser],
    config: FleetConfig | None = None,
    work: str | Path | None = None,
    on_user: Callable[[dict[str, Any]], None] | None = None,
    *,
    backend: str = "local",
    workers: int | None = None,
    ray_address: str | None = None,
    share: str = "auto",
    out: str | Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run :func:`simulate_user` for every user; returns ``{"config", "packages", "complete", "run", "users",
    "summary"}`` (users in the order given).

    ``backend``: ``local`` (one after another, in this process) or ``ray`` (one task per user on ``workers``
    CPUs of a local Ray instance, or on the cluster at ``ray_address``; see
    :mod:`edgetune_fleet.ray_backend` for ``share``). ``out``: a directory for the run log and
    ``simulate.json``, written as users finish; users already in the log are not run again. ``on_user`` is
    called with every finished row (resumed ones first)."""
    config = config or FleetConfig()
    _check_request(backend, workers, users)
    with Device(old_package, threads=config.threads) as old, Device(new_package, threads=config.threads) as new:
        meta = _packages_meta(old, new)
        log, snapshots, rows = _open_outputs(out, old_package, new_package, users, config, overwrite)
        todo = [u for u in users if u.user_id not in rows]
        run: dict[str, Any] = {"backend": backend, "workers": workers if backend == "ray" else 1,
                               "resumed_users": len(rows), "threads": config.threads}  # fmt: skip
        start = time.perf_counter()

        def results() -> dict[str, Any]:
            return _results(config, meta, users, rows, {**run, "wall_seconds": time.perf_counter() - start})

        for row in rows.values():
            if on_user is not None:
                on_user(row)

        def finished(row: dict[str, Any]) -> None:
            rows[row["user"]] = row
            if log is not None:
                log.append(row)
            if snapshots is not None:
                snapshots.write(results)
            if on_user is not None:
                on_user(row)

        try:
            if backend == "local":
                with tempfile.TemporaryDirectory(prefix="edgetune-fleet-", dir=work) as tmp:
                    for user in todo:
                        finished(simulate_user(old, new, user, Path(tmp), config))
            elif todo:
                from edgetune_fleet.ray_backend import run_on_ray

                run.update(run_on_ray(old_package, new_package, todo, config, finished,
                                      workers=workers, address=ray_address, share=share))  # fmt: skip
        finally:
            if log is not None:
                log.close()
            if snapshots is not None and rows:
                snapshots.write(results, force=True)
    return results()


def fleet_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` without timings, sorted by user: for comparing two runs of one fleet."""
    return sorted((without_timings(r) for r in rows), key=lambda r: r["user"])


def plot_fleet(results: dict[str, Any], path: str | Path) -> Path:
    """Accuracy per method (bars: fleet mean; dots: users) and accuracy against backward FLOPs (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    from edgetune.formatting import accuracy
    from edgetune.io import atomic_write_bytes

    rows, summary = results["users"], results["summary"]
    methods = ["before"] + list(summary["methods"])
    acc = {m: [r["before"]["personal"] if m == "before" else r["after"][m]["accuracy"] for r in rows] for m in methods}
    # One accuracy range for both panels (sharey), from just below the lowest user: a method reads the same height
    # in each, and the differences near the top are not flattened by an axis from 0.
    lowest = min(min(v) for v in acc.values())
    low = max(0.0, float(np.floor((lowest - 0.05) * 10) / 10))
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    x = np.arange(len(methods))
    means = [float(np.mean(acc[m])) for m in methods]
    bars = left.bar(x, means, color=["#888"] + ["C0"] * (len(methods) - 1), alpha=0.7)
    left.bar_label(bars, [accuracy(v) for v in means], fontsize=7, padding=2)
    for i, m in enumerate(methods):
        left.scatter(np.full(len(acc[m]), i) + np.linspace(-0.2, 0.2, len(acc[m])), acc[m], s=12, color="k", zorder=3)
    left.set_xticks(x, ["old + personal\n(before)"] + methods[1:], fontsize=8)
    left.set_ylabel(f"accuracy on the user's held-out texts (axis from {low:.0%})")
    left.set_title(f"{len(rows)} users, after the backbone swap (bars: mean, dots: users)", fontsize=10)
    left.set_ylim(low, 1.04)
    left.yaxis.set_major_formatter(PercentFormatter(1.0))
    for i, m in enumerate(methods[1:]):
        flops = summary["methods"][m]["backward_flops"]["mean"]
        mean = summary["methods"][m]["accuracy"]["mean"]
        if flops and flops > 0:
            right.scatter(flops, mean, s=40, color=f"C{i}", label=m)
            right.annotate(m, (flops, mean), fontsize=8, xytext=(4, 4), textcoords="offset points")
        else:  # no backward FLOPs: no place on a log axis, so a level line instead of a point
            right.axhline(mean, color=f"C{i}", ls=":", lw=1.2, label=f"{m} (0 backward FLOPs)")
    full = [r["after"][m].get("full_retrain_backward_flops") for r in rows for m in r["after"]]
    full = [f for f in full if f]
    if full:
        right.axvline(float(np.mean(full)), color="r", ls="--", lw=1, label="full re-training (cost model)")
    right.set_xscale("log")
    right.set_xlabel("backward FLOPs per user (whole job)")
    right.set_ylabel("mean accuracy")
    right.yaxis.set_tick_params(labelleft=True)
    right.legend(fontsize=8, loc="lower right")
    right.set_title("accuracy vs training compute", fontsize=10)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
