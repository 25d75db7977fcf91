"""Quickstart: the whole edgetune story on the real all-MiniLM-L6-v2 and BBC news, in a few minutes on a CPU.

    python examples/quickstart.py [--out runs/quickstart] [--users 3] [--threads 2]

1. Server: SALF plans where to fine-tune on a 25% server split (report plan.png), then exports the device
   package (ONNX trunk verified against torch, top layers + a probe head as safetensors, tokenizer, manifest).
2. Device: three simulated users (non-IID topic mixes; some file two topics the other way round) personalize
   the package on their own 200 texts: the trunk runs once in onnxruntime, only the top layers train.
3. Backbone swap, **simulated**: the vendor ships a new backbone (here MiniLM without its top block: other
   features, other package, ready in seconds). Each user moves to it with FaLA (a personal matrix fitted on 10%
   of their texts, chosen by correlation clustering) and, for comparison, by re-training the new top layers on
   all their texts. The **real** swap, all-MiniLM-L6-v2 -> all-mpnet-base-v2 (another family, 384 -> 768 wide),
   is ``benchmarks/backbone_swap.py --new mpnet`` (``pip install -e ".[swap]"``; docs/results.md, "Backbone swap").
4. Prints one summary table (accuracy on each user's held-out texts, backward FLOPs, wall time, package size)
   and writes summary.json + summary.png next to plan.png.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgetune.formatting import accuracy


def package_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def plot_summary(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    columns = [
        ("global", "global package"),
        ("personal", "personalized"),
        ("new_global", "new backbone (simulated), no adaptation"),
        ("fala", "new + FaLA"),
        ("retrain", "new + re-trained top"),
    ]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(columns)
    values = [[r[key]["accuracy"] for r in rows] for key, _ in columns]
    for i, (_, label) in enumerate(columns):
        xs = np.arange(len(rows)) + i * width
        bars = ax.bar(xs, values[i], width, label=label)
        ax.bar_label(bars, [accuracy(v) for v in values[i]], fontsize=6, padding=1)
    ax.set_xticks(np.arange(len(rows)) + 0.4 - width / 2, [r["user"] for r in rows])
    # Not from 0: the stages differ by a few points near the top, which a 0-based axis flattens into equal bars.
    low = max(0.0, np.floor((min(min(v) for v in values) - 0.05) * 10) / 10)
    ax.set_ylim(low, 1.04)
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.set_ylabel(f"accuracy on the user's held-out texts\n(the axis starts at {low:.0%})")
    ax.legend(fontsize=8, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.1))
    ax.set_title("all-MiniLM-L6-v2 + BBC news: personalization and a backbone swap")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def trained_what(plan) -> str:
    """'blocks [6] + head', or 'the head only' for a plan that trains no block."""
    return f"blocks {plan.trainable_layers} + head" if plan.trainable_layers else "the head only"


def parse_args() -> argparse.Namespace:
    """The quickstart's three knobs; everything else is fixed so that its numbers are comparable run to run."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/quickstart"))
    ap.add_argument("--users", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    return ap.parse_args()


def plan_and_export(out: Path, threads: int, console) -> tuple[Any, Any, Any, Path, float, float]:
    """Step 1, the server: plan on a 25% split and export the package; the other 75% is the users' pool."""
    from edgetune.api import plan
    from edgetune.data import stratified_split
    from edgetune.datasets import bbc_news, minilm_path
    from edgetune.report import plot_plan
    from edgetune.tables import plan_table
    from exporters.export import ExportOptions, export_package

    server, pool = stratified_split(bbc_news(), test_size=0.75, seed=0)
    server.to_csv(out / "server.csv")
    t = time.perf_counter()
    planned = plan(str(minilm_path()), server, planner="salf", max_length=128)
    planned.save(out / "plan.json")
    plot_plan(planned, out / "plan.png")
    console.print(plan_table(planned))
    plan_seconds = time.perf_counter() - t
    console.print(
        f"[1/4] plan: train {trained_what(planned)} "
        f"({planned.chosen.backward_frac:.0%} of full fine-tuning's backward FLOPs), planned in {plan_seconds:.0f}s"
    )
    t = time.perf_counter()
    pkg = out / "package"
    export_package(minilm_path(), planned, pkg, data=server, options=ExportOptions(threads=threads),
                   progress=True)  # fmt: skip
    export_seconds = time.perf_counter() - t
    console.print(f"      package: {pkg} ({package_mb(pkg):.1f} MB, exported and verified in {export_seconds:.0f}s)")
    return server, pool, planned, pkg, plan_seconds, export_seconds


def personalize_users(users: list, pkg: Path, out: Path, threads: int, console) -> list[dict[str, Any]]:
    """Step 2, the devices: each user personalizes the package; one row per user, global vs personal accuracy."""
    from device_sim.device import Device
    from device_sim.swap import full_retrain_flops

    rows: list[dict[str, Any]] = []
    with Device(pkg, threads=threads) as device:
        for user in users:
            t = time.perf_counter()
            result = device.personalize(user.train, out / "users" / user.user_id / "personal")
            job_seconds = time.perf_counter() - t
            width = device.package.encode(user.train.texts)[0].shape[1]
            row = {
                "user": user.user_id,
                "preference": user.preference,
                "global": device.evaluate(user.test),
                "personal": device.evaluate(user.test, result.path),
                "personalize": {
                    "seconds": job_seconds,
                    "backward_flops": result.backward_flops,
                    # every block + head of this backbone on all the user's texts, the same epochs (cost model)
                    "full_backward_flops": full_retrain_flops(device, width, len(user.train), 8),
                },
            }
            rows.append(row)
            pref = f", prefers {user.preference}" if user.preference else ""
            console.print(
                f"[2/4] {user.user_id}{pref}: accuracy {accuracy(row['global']['accuracy'])} -> "
                f"{accuracy(row['personal']['accuracy'])} after {job_seconds:.1f}s of on-device training"
            )
    return rows


def export_new_backbone(server, out: Path, threads: int, console) -> tuple[Any, Path]:
    """Step 3a, the vendor: derive the simulated new backbone, plan it and export its package."""
    from edgetune.api import plan
    from edgetune.datasets import minilm_path
    from edgetune_fleet.derived import derive_backbone
    from exporters.export import ExportOptions, export_package

    t = time.perf_counter()
    new_model = derive_backbone(minilm_path(), out / "backbone-new", drop_top=1)
    new_plan = plan(str(new_model), server, planner="salf", max_length=128, progress=False)
    new_pkg = out / "package-new"
    export_package(new_model, new_plan, new_pkg, data=server, options=ExportOptions(threads=threads))
    console.print(
        f"[3/4] new backbone package: {new_pkg} ({package_mb(new_pkg):.1f} MB, {time.perf_counter() - t:.0f}s)"
    )
    return new_plan, new_pkg


def swap_users(users: list, rows: list[dict[str, Any]], pkg: Path, new_pkg: Path, out: Path, threads: int, console):
    """Step 3b, the devices again: each user moves to the new backbone by FaLA and, to compare, by re-training."""
    from device_sim.device import Device
    from device_sim.swap import SwapConfig, swap

    with Device(pkg, threads=threads) as old, Device(new_pkg, threads=threads) as new:
        for user, row in zip(users, rows):
            personal = out / "users" / user.user_id / "personal"
            row["new_global"] = new.evaluate(user.test)
            for method in ("fala", "retrain"):
                target = out / "users" / user.user_id / f"personal-new-{method}"
                result = swap(old, new, personal, user.train, target, SwapConfig(method=method), threads=threads)
                row[method] = {
                    **new.evaluate(user.test, target),
                    "examples_used": result.examples_used,
                    "backward_flops": result.backward_flops,
                    "full_retrain_backward_flops": result.full_retrain_backward_flops,
                    "seconds": result.seconds["total"],
                }
            console.print(
                f"      {user.user_id}: new backbone {accuracy(row['new_global']['accuracy'])}, FaLA "
                f"{accuracy(row['fala']['accuracy'])} ({row['fala']['examples_used']} examples, "
                f"{row['fala']['seconds']:.1f}s), re-trained {accuracy(row['retrain']['accuracy'])} "
                f"({row['retrain']['examples_used']} examples, {row['retrain']['seconds']:.1f}s)"
            )


def mean_over(rows: list[dict[str, Any]], key: str, field: str = "accuracy") -> float:
    """The users' mean of one number of one stage: the summary reports means."""
    return float(np.mean([r[key][field] for r in rows]))


def summary_table(rows: list[dict[str, Any]], planned):
    """Step 4's table: each stage's mean accuracy and cost, costs against full re-training."""
    from rich.table import Table

    def mean(key: str, field: str = "accuracy") -> float:
        return mean_over(rows, key, field)

    full = mean("fala", "full_retrain_backward_flops")
    table = Table(title=f"edgetune quickstart: all-MiniLM-L6-v2 + BBC news, {len(rows)} users (means)")
    for column in ("stage", "accuracy", "backward FLOPs / user", "vs full re-training", "wall time / user"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    table.add_row("global package (no personalization)", f"{accuracy(mean('global'))}", "0", "", "")
    table.add_row(
        f"personalized on device ({trained_what(planned)})",
        f"{accuracy(mean('personal'))}",
        f"{mean('personalize', 'backward_flops'):.3g}",
        f"{mean('personalize', 'full_backward_flops') / mean('personalize', 'backward_flops'):,.0f}x less",
        f"{mean('personalize', 'seconds'):.1f}s",
    )
    table.add_row("new backbone (simulated), no adaptation", f"{accuracy(mean('new_global'))}", "0", "", "")
    for key, label in (("fala", "new backbone (simulated) + FaLA (10% of texts)"),
                       ("retrain", "new backbone (simulated) + re-trained top")):  # fmt: skip
        table.add_row(
            label,
            f"{accuracy(mean(key))}",
            f"{mean(key, 'backward_flops'):.3g}",
            f"{full / mean(key, 'backward_flops'):,.0f}x less",
            f"{mean(key, 'seconds'):.1f}s",
        )
    return table


def main() -> None:
    """The README's quickstart: the four steps in order, then the summary table, summary.json and summary.png."""
    args = parse_args()
    torch.set_num_threads(args.threads)

    from rich.console import Console

    from edgetune.io import atomic_write_json
    from edgetune_fleet.users import UserConfig, simulate_users

    console = Console(width=130)
    start = time.perf_counter()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)

    server, pool, planned, pkg, plan_seconds, export_seconds = plan_and_export(out, args.threads, console)
    users = simulate_users(pool, UserConfig(num_users=args.users, examples_per_user=260, test_fraction=60 / 260))
    rows = personalize_users(users, pkg, out, args.threads, console)
    new_plan, new_pkg = export_new_backbone(server, out, args.threads, console)
    swap_users(users, rows, pkg, new_pkg, out, args.threads, console)

    # 4. summary
    full = mean_over(rows, "fala", "full_retrain_backward_flops")
    console.print(summary_table(rows, planned))
    console.print(
        f"package: {package_mb(pkg):.1f} MB (trunk ONNX + top + tokenizer). 'vs full re-training': backward FLOPs of "
        f"training every block + head of that backbone on all the user's texts for 8 epochs (cost model; "
        f"{full:.3g} for the new backbone)"
    )
    summary = {"users": rows, "plan_cut": planned.cut, "new_plan_cut": new_plan.cut, "package_mb": package_mb(pkg),
               "new_package_mb": package_mb(new_pkg), "plan_seconds": plan_seconds, "export_seconds": export_seconds,
               "total_seconds": time.perf_counter() - start}  # fmt: skip
    atomic_write_json(out / "summary.json", summary)
    plot_summary(rows, out / "summary.png")
    console.print(
        f"[4/4] done in {time.perf_counter() - start:.0f}s; plots: {out / 'plan.png'}, {out / 'summary.png'}; "
        f"numbers: {out / 'summary.json'}"
    )


if __name__ == "__main__":
    main()
