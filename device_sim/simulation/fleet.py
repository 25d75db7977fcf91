"""Backbone replacement across a fleet of simulated users, before doing it for real.

Every user (:mod:`device_sim.simulation.users`) personalizes the old package on their training texts; then the
fleet moves to the new package and each user's state is carried over by every method asked for (:mod:`device_sim.swap`):

* ``none``         the new package's global head, no adaptation;
* ``fala``         FaLA with correlation-clustered curated examples;
* ``fala-random``  FaLA with the same number of randomly chosen examples (``random_draws`` draws);
* ``head-only``    the new head trained on the curated examples;
* ``retrain``      the new package's top layers re-trained on all the user's data.

Per user and method: accuracy on the user's held-out texts before the swap (old package + personal state) and
after it, examples used, backward FLOPs (and the factor below full re-training of the new backbone) and wall
time.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from device_sim.device import Device
from device_sim.personalize import PersonalizeConfig
from device_sim.simulation.users import SimulatedUser
from device_sim.swap import SwapConfig, swap

FLEET_METHODS = ("none", "fala", "fala-random", "head-only", "retrain")


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
    clear a :class:`~device_sim.simulation.memo.MemoTrunk`, so the swaps pay for their own trunk passes)."""
    start = time.perf_counter()
    personal = work / f"{user.user_id}-old"
    job = old.personalize(user.train, personal, config.personalize)
    row: dict[str, Any] = {
        "user": user.user_id,
        "num_train": len(user.train),
        "num_test": len(user.test),
        "preference": user.preference,
        "before": {
            "global": old.evaluate(user.test)["accuracy"],
            "personal": old.evaluate(user.test, personal)["accuracy"],
            "personalize_seconds": time.perf_counter() - start,
            "backward_flops": job.estimate.backward_flops * job.num_train * len(job.history),
        },
        "after": {},
    }
    if before_swaps is not None:
        before_swaps()
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
    if "none" in config.methods:
        row["after"]["none"] = {"accuracy": new.evaluate(user.test)["accuracy"], "examples_used": 0,
                                "backward_flops": 0.0, "seconds": 0.0}  # fmt: skip
    t = time.perf_counter()
    features = new.features(user.train.texts) if runs else None  # the new package's features, once per user
    row["embed_new_seconds"] = embed = time.perf_counter() - t
    for name, swap_config in runs:
        out = work / f"{user.user_id}-{name.replace('/', '-')}"
        result = swap(old, new, personal, user.train, out, swap_config, threads=config.threads, new_features=features)
        row["after"][name] = _swap_row(result, new.evaluate(user.test, out)["accuracy"])
        if swap_config.method != "retrain":  # it would have embedded the texts itself
            row["after"][name]["seconds"] += embed
        shutil.rmtree(out, ignore_errors=True)
    draws = [v for k, v in row["after"].items() if k.startswith("fala-random/")]
    if draws:
        row["after"]["fala-random"] = {
            **draws[0],
            "accuracy": float(np.mean([d["accuracy"] for d in draws])),
            "accuracy_per_draw": [d["accuracy"] for d in draws],
            "seconds": float(np.mean([d["seconds"] for d in draws])),
        }
        for k in [k for k in row["after"] if k.startswith("fala-random/")]:
            del row["after"][k]
    shutil.rmtree(personal, ignore_errors=True)
    return row


def _stats(values: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=float)
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
        if after[0].get("flops_reduction"):
            entry["flops_reduction"] = _stats([a["flops_reduction"] for a in after])
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
    return summary


def simulate_fleet(
    old_package: str | Path,
    new_package: str | Path,
    users: list[SimulatedUser],
    config: FleetConfig | None = None,
    work: str | Path | None = None,
    on_user: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run :func:`simulate_user` for every user; returns ``{"config", "users", "summary"}``."""
    config = config or FleetConfig()
    if not users:
        raise ValueError("no users to simulate")
    with tempfile.TemporaryDirectory(prefix="edgetune-fleet-", dir=work) as tmp:
        with Device(old_package, threads=config.threads) as old, Device(new_package, threads=config.threads) as new:
            if old.labels != new.labels:
                from device_sim.swap import SwapError

                raise SwapError(f"the packages' labels differ: {old.labels} vs {new.labels}")
            rows = []
            for user in users:
                rows.append(simulate_user(old, new, user, Path(tmp), config))
                if on_user is not None:
                    on_user(rows[-1])
            meta = {"old": old.package.manifest["backbone"], "new": new.package.manifest["backbone"],
                    "old_cut": old.package.cut, "new_cut": new.package.cut}  # fmt: skip
    fala = asdict(config.fala)
    fala.pop("personalize")
    return {
        "config": {
            "methods": list(config.methods),
            "fraction": config.fraction,
            "random_draws": config.random_draws,
            "personalize": asdict(config.personalize),
            "fala": fala,
        },
        "packages": meta,
        "users": rows,
        "summary": summarize(rows),
    }


def plot_fleet(results: dict[str, Any], path: str | Path) -> Path:
    """Accuracy per method (bars: fleet mean; dots: users) and accuracy against backward FLOPs (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgetune.io import atomic_write_bytes

    rows, summary = results["users"], results["summary"]
    methods = ["before"] + list(summary["methods"])
    acc = {m: [r["before"]["personal"] if m == "before" else r["after"][m]["accuracy"] for r in rows] for m in methods}
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    x = np.arange(len(methods))
    left.bar(x, [np.mean(acc[m]) for m in methods], color=["#888"] + ["C0"] * (len(methods) - 1), alpha=0.7)
    for i, m in enumerate(methods):
        left.scatter(np.full(len(acc[m]), i) + np.linspace(-0.2, 0.2, len(acc[m])), acc[m], s=12, color="k", zorder=3)
    left.set_xticks(x, ["old + personal\n(before)"] + methods[1:], fontsize=8)
    left.set_ylabel("accuracy on the user's held-out texts")
    left.set_title(f"{len(rows)} users, after the backbone swap")
    left.set_ylim(0, 1.02)
    for m in methods[1:]:
        flops = summary["methods"][m]["backward_flops"]["mean"]
        if flops > 0:
            right.scatter(flops, summary["methods"][m]["accuracy"]["mean"], s=40, label=m)
            right.annotate(m, (flops, summary["methods"][m]["accuracy"]["mean"]), fontsize=8)
    full = [r["after"][m].get("full_retrain_backward_flops") for r in rows for m in r["after"]]
    full = [f for f in full if f]
    if full:
        right.axvline(float(np.mean(full)), color="r", ls="--", lw=1, label="full re-training (cost model)")
    right.set_xscale("log")
    right.set_xlabel("backward FLOPs per user (whole job)")
    right.set_ylabel("mean accuracy")
    right.legend(fontsize=8)
    right.set_title("accuracy vs training compute")
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
