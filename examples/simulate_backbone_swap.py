"""Simulate a backbone replacement across a fleet of users before doing it: FaLA vs re-training vs nothing.

    python examples/simulate_backbone_swap.py [--out runs/swap] [--users 4] [--threads 2]

The fleet runs a MiniLM package; the vendor's new backbone is MiniLM without its top block (its own plan and
package): a **simulated** swap, ready in seconds. A real second backbone works the same way: pass its packages
to `edgetune simulate`; the real swap MiniLM -> all-mpnet-base-v2 is `benchmarks/backbone_swap.py --new mpnet`.
Every simulated user personalizes the old package, then moves to the new one by each method: no adaptation,
FaLA (personal matrix from 10% of the user's texts, correlation-clustered), FaLA with randomly chosen texts,
head-only on the curated texts, and re-training the new top layers on all texts. Writes simulate.json + simulate.png.
Command-line equivalent, given the two packages:

    edgetune simulate --old pkg/ --new pkg-new/ --data data/bbc/test.csv --users 4 --out runs/swap
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/swap"))
    ap.add_argument("--users", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch
    from rich.console import Console

    torch.set_num_threads(args.threads)
    from edgetune.api import plan
    from edgetune.data import stratified_split
    from edgetune.datasets import bbc_news, minilm_path
    from edgetune.io import atomic_write_json
    from edgetune.tables import fleet_summary
    from edgetune_fleet.derived import derive_backbone
    from edgetune_fleet.fleet import FleetConfig, plot_fleet, simulate_fleet
    from edgetune_fleet.users import UserConfig, simulate_users
    from exporters.export import ExportOptions, export_package

    server, pool = stratified_split(bbc_news(), test_size=0.75, seed=0)
    models = {"old": minilm_path(), "new": derive_backbone(minilm_path(), args.out / "backbone-new", drop_top=1)}
    for name, model in models.items():
        planned = plan(str(model), server, planner="salf", max_length=128, progress=False)
        export_package(model, planned, args.out / f"package-{name}", data=server,
                       options=ExportOptions(threads=args.threads))  # fmt: skip
        print(f"{name} package: {model.name if name == 'new' else 'all-MiniLM-L6-v2'}, cut {planned.cut}")
    users = simulate_users(pool, UserConfig(num_users=args.users, examples_per_user=260, test_fraction=60 / 260))
    results = simulate_fleet(
        args.out / "package-old", args.out / "package-new", users, FleetConfig(threads=args.threads),
        on_user=lambda row: print(f"  {row['user']} done"),
    )  # fmt: skip
    atomic_write_json(args.out / "simulate.json", results)  # strict JSON: a ratio over nothing is null
    plot_fleet(results, args.out / "simulate.png")
    Console(width=120).print(*fleet_summary(results), highlight=False)
    print(f"wrote {args.out / 'simulate.json'} and {args.out / 'simulate.png'}")


if __name__ == "__main__":
    main()
