"""Fleet simulation throughput on Ray: users/hour at 1 and 2 workers, per-user cost, projection to 10,000 users.

    python benchmarks/fleet_scale.py [--users 12] [--rounds 2] [--lock /work/bench.lock] [--out benchmarks/results]

Setting (tiny but real): all-MiniLM-L6-v2 (package A, SALF plan on a 25% server split of BBC news, probe head)
and A without its top block (package B, its own plan and probe head), 64 tokens; ``--users`` non-IID users of
``--train-examples`` + ``--test-examples`` BBC texts from the other 75% (Dirichlet 0.5, half with a label swap).
Per user (one Ray task, 1 CPU, 1 thread): personalize A with the device's plain defaults, then move to B by
``none``, ``fala`` and ``retrain`` (:func:`edgetune_fleet.fleet.simulate_user`), each user's accuracy
evaluated on its held-out texts.

Timed part (under ``--lock``, an exclusive ``flock``, so another benchmark does not run alongside): ``--rounds``
rounds of the same fleet at 1 and at 2 workers (order 1, 2 then 2, 1: drift lands on both), each on a fresh
local Ray instance of that many CPUs. Users/hour = users / the wall time from the first task submitted to the
last row back, on warm workers: before it, one small user per worker starts each worker process (imports,
opening both packages), timed apart as the worker's start (Ray's own start is excluded). Parallel efficiency =
(users/hour at 2) / (2 x users/hour at 1). The machine's load average is recorded before and after each run:
the machine is shared, and with 2 cores every other busy process takes a worker's core.

Projection for N users on W workers (one core each):
    wall = t_start + N x t_user / (W x e)      core-hours = W x wall / 3600
with t_user the median per-user task time at 1 worker, t_start a worker's start (the warm-up's wall time minus
its task time) and e the parallel efficiency measured at 2 workers, assumed to hold at W (users are
independent: no communication but one row per user back to the driver).

Results: ``fleet_scale.json`` and ``fleet_scale.png`` in ``--out``.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from harness import exclusive, load_average, machine_record, parser, write_figure, write_json

TARGET_SPEEDUP = 1.7


def build_packages(work: Path, max_length: int) -> dict[str, Any]:
    """Plan and export package A (MiniLM) and B (A without its top block) on the server split; the rest is the
    users' pool."""
    from edgetune.api import plan
    from edgetune.data import stratified_split
    from edgetune.datasets import bbc_news, minilm_path
    from edgetune_fleet.derived import derive_backbone
    from exporters.export import ExportOptions, export_package

    server, pool = stratified_split(bbc_news(), test_size=0.75, seed=0)
    derived = derive_backbone(minilm_path(), work / "backbone-b", drop_top=1)
    plans, seconds = {}, {}
    for name, model in (("a", minilm_path()), ("b", derived)):
        start = time.perf_counter()
        plans[name] = plan(str(model), server, planner="salf", max_length=max_length, progress=False)
        export_package(model, plans[name], work / f"pkg-{name}", data=server, options=ExportOptions(threads=2))
        seconds[name] = time.perf_counter() - start
    return {"pool": pool, "plans": plans, "seconds": seconds}


def one_run(old: Path, new: Path, users: list, warm: list, workers: int, methods: tuple[str, ...]) -> dict[str, Any]:
    """The fleet on a fresh local Ray instance of ``workers`` CPUs. First ``warm`` (one small user per worker):
    each worker process starts, imports and opens both packages (its start, timed apart); then the fleet on
    the warm workers, timed from submission to the last row."""
    import ray

    from edgetune_fleet.fleet import FleetConfig, simulate_fleet

    load_before = load_average()
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    try:
        config = FleetConfig(methods=methods, threads=1)
        t0 = time.perf_counter()
        warmup = simulate_fleet(old, new, warm[:workers], config, backend="ray", workers=workers)
        warm_seconds = time.perf_counter() - t0 - warmup["run"]["ray_start_seconds"]
        warm_task = max(r["cost"]["total_seconds"] for r in warmup["users"])
        start = time.perf_counter()
        results = simulate_fleet(old, new, users, config, backend="ray", workers=workers)
        wall = time.perf_counter() - start - results["run"]["ray_start_seconds"]
    finally:
        ray.shutdown()
    rows = results["users"]
    task = [r["cost"]["total_seconds"] for r in rows]
    return {
        "workers": workers,
        "users": len(rows),
        "wall_seconds": wall,
        "users_per_hour": len(rows) / wall * 3600,
        "end_to_end_users_per_hour": len(rows) / (wall + warm_seconds) * 3600,  # the workers' start included
        "task_seconds": {"median": float(np.median(task)), "sum": float(np.sum(task))},
        "busy_fraction": float(np.sum(task) / (wall * workers)),  # share of the worker-seconds spent in user tasks
        "worker_start_seconds": warm_seconds - warm_task,  # start a worker, import, open both packages
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "worker_pids": sorted({r["worker"]["pid"] for r in rows}),
        "results": results,
    }


def cost_table(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-user seconds and backward FLOPs of each part of a user's task: where a user's time goes."""
    out = {}
    for part in ("trunk", "training", "swap", "evaluation"):
        out[part] = {
            "seconds_median": float(np.median([r["cost"][part]["seconds"] for r in rows])),
            "seconds_mean": float(np.mean([r["cost"][part]["seconds"] for r in rows])),
            "backward_flops_mean": float(np.mean([r["cost"][part]["backward_flops"] for r in rows])),
        }
    out["total_seconds_median"] = float(np.median([r["cost"]["total_seconds"] for r in rows]))
    return out


def projection(t_user: float, t_start: float, efficiency: float, users: int = 10_000, workers: int = 100) -> dict:
    """Wall time and core-hours for ``users`` on ``workers`` from the measured per-user and start times."""
    wall = t_start + users * t_user / (workers * efficiency)
    return {
        "users": users,
        "workers": workers,
        "formula": "wall = t_start + N * t_user / (W * e); core_hours = W * wall / 3600",
        "t_user_seconds": t_user,
        "t_start_seconds": t_start,
        "efficiency": efficiency,
        "wall_seconds": wall,
        "wall_hours": wall / 3600,
        "core_hours": workers * wall / 3600,
        "compute_core_hours": users * t_user / 3600,  # the tasks alone, at perfect efficiency
    }


def plot(result: dict[str, Any], path: Path) -> None:
    """Throughput per worker count against the ideal and the target, and the per-user cost broken down."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    runs = result["runs"]
    for w, color in ((1, "C0"), (2, "C1")):
        rates = [r["users_per_hour"] for r in runs if r["workers"] == w]
        left.scatter([w] * len(rates), rates, color=color, zorder=3)
        left.bar(w, float(np.median(rates)), color=color, alpha=0.5, width=0.6)
    base = result["users_per_hour"]["1"]
    left.plot([1, 2], [base, 2 * base], "k--", lw=1, label="ideal (linear)")
    left.plot([1, 2], [base, TARGET_SPEEDUP * base], "r:", lw=1, label=f"target {TARGET_SPEEDUP}x")
    left.set_xticks([1, 2])
    left.set_xlabel("Ray workers (1 CPU each)")
    left.set_ylabel("users / hour")
    left.set_title(
        f"speed-up {result['speedup']:.2f}x, efficiency {result['efficiency']:.0%}\n"
        f"(load average {result['load_average_median']:.1f} on {os.cpu_count()} cores)"
    )
    left.legend(fontsize=8)
    cost = result["cost_per_user"]
    parts = ["trunk", "training", "swap", "evaluation"]
    bottom = 0.0
    for i, part in enumerate(parts):
        value = cost[part]["seconds_mean"]
        right.bar(0, value, bottom=bottom, color=f"C{i}", label=f"{part} {value:.1f}s")
        bottom += value
    proj = result["projection"]
    right.set_xticks([0], ["per user (1 thread)"])
    right.set_ylabel("seconds")
    right.set_title(
        f"10,000 users on 100 workers: {proj['wall_hours']:.1f} h wall, {proj['core_hours']:.0f} core-hours",
        fontsize=10,
    )
    right.legend(fontsize=8)
    fig.tight_layout()
    write_figure(fig, path, dpi=110)


def parse_args():
    """The common benchmark options plus the fleet's size and the rounds of timing."""
    ap = parser(__doc__, threads=2)
    ap.add_argument("--users", type=int, default=12)
    ap.add_argument("--train-examples", type=int, default=60)
    ap.add_argument("--test-examples", type=int, default=20)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    return ap.parse_args()


def make_users(pool, args) -> tuple[list, list]:
    """The fleet's users, and two small warm-up users (their own ids) that start each worker before the timing."""
    from edgetune_fleet.users import UserConfig, simulate_users

    total = args.train_examples + args.test_examples
    users = simulate_users(
        pool, UserConfig(num_users=args.users, examples_per_user=total, test_fraction=args.test_examples / total)
    )
    warm = simulate_users(pool, UserConfig(num_users=2, examples_per_user=40, test_fraction=0.25, seed=99))
    for u in warm:
        u.user_id = f"warmup-{u.user_id}"
    return users, warm


def timed_runs(work: Path, users: list, warm: list, args, methods: tuple[str, ...]) -> list[dict[str, Any]]:
    """Every round at 1 and 2 workers under the lock, alternating the order so drift in the load lands on both."""
    runs = []
    order = [w for r in range(args.rounds) for w in ((1, 2) if r % 2 == 0 else (2, 1))]
    with exclusive(args.lock) as waited:
        print(f"lock held after {waited:.0f}s of waiting", flush=True)
        for workers in order:
            run = one_run(work / "pkg-a", work / "pkg-b", users, warm, workers, methods)
            print(
                f"{workers} worker(s): {run['users_per_hour']:.0f} users/h (wall {run['wall_seconds']:.1f}s, "
                f"busy {run['busy_fraction']:.0%}, load {run['load_average_before'][0]:.1f} -> "
                f"{run['load_average_after'][0]:.1f})",
                flush=True,
            )
            runs.append(run)
    return runs


def throughput(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median users/hour per worker count, the speed-up, and the 1-worker per-user and worker-start times that the
    projection needs."""
    rate = {str(w): float(np.median([r["users_per_hour"] for r in runs if r["workers"] == w])) for w in (1, 2)}
    rows_one = [row for r in runs if r["workers"] == 1 for row in r["results"]["users"]]
    return {
        "rate": rate,
        "speedup": rate["2"] / rate["1"],
        "rows_one": rows_one,
        "t_user": float(np.median([row["cost"]["total_seconds"] for row in rows_one])),
        "t_start": float(np.median([r["worker_start_seconds"] for r in runs])),
        "loads": [x for r in runs for x in (r["load_average_before"][0], r["load_average_after"][0])],
    }


def result_record(args, setup: dict, runs: list, methods: tuple[str, ...], load_start: list, start: float) -> dict:
    """The JSON record: setting, per-run measurements (without the per-user rows), throughput, cost, projection."""
    from edgetune_fleet.fleet import fleet_rows

    tp = throughput(runs)
    speedup = tp["speedup"]
    reference = fleet_rows(runs[0]["results"]["users"])
    summary = runs[0]["results"]["summary"]
    return {
        "benchmark": "fleet_scale",
        "machine": machine_record(
            load_start, args.threads, note="shared with other engineers' jobs; load averages per run below"
        ),  # fmt: skip
        "setting": {
            "model": "all-MiniLM-L6-v2 (A) -> A without its top block (B), SALF plans, probe heads",
            "data": "BBC news, users from the 75% not used by the server",
            "users": args.users,
            "train_examples": args.train_examples,
            "test_examples": args.test_examples,
            "max_length": args.max_length,
            "methods": list(methods),
            "cuts": {k: p.cut for k, p in setup["plans"].items()},
            "threads_per_task": 1,
        },
        "setup_seconds": setup["seconds"],
        "runs": [{k: v for k, v in r.items() if k != "results"} for r in runs],
        "users_per_hour": tp["rate"],
        "speedup": speedup,
        "efficiency": speedup / 2,
        "target": {"speedup": TARGET_SPEEDUP, "met": speedup >= TARGET_SPEEDUP},
        "load_average_median": float(np.median(tp["loads"])),
        "rows_identical_across_runs": all(fleet_rows(r["results"]["users"]) == reference for r in runs),
        "cost_per_user": cost_table(tp["rows_one"]),
        "projection": projection(tp["t_user"], tp["t_start"], min(1.0, speedup / 2)),
        "accuracy": {"before": summary["before_personal"], **summary["methods"]},
        "total_seconds": time.perf_counter() - start,
    }


def main() -> None:
    """Build both packages, time the fleet at 1 and 2 workers, then write the record and the figure."""
    args = parse_args()

    import torch

    torch.set_num_threads(args.threads)
    load_start = load_average()
    methods = ("none", "fala", "retrain")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fleet-scale-") as tmp:
        work = Path(tmp)
        setup = build_packages(work, args.max_length)
        users, warm = make_users(setup["pool"], args)
        print(f"packages ready ({setup['seconds']}); {len(users)} users", flush=True)
        runs = timed_runs(work, users, warm, args, methods)
    result = result_record(args, setup, runs, methods, load_start, start)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "fleet_scale.json", result)
    plot(result, args.out / "fleet_scale.png")
    keys = ("users_per_hour", "speedup", "efficiency", "target", "load_average_median", "projection")
    print(json.dumps({k: result[k] for k in keys}, indent=1))


if __name__ == "__main__":
    main()
