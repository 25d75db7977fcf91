"""Quickstart on the real all-MiniLM-L6-v2 and BBC news: where should this model be fine-tuned?

    python examples/quickstart.py [--out runs/quickstart]

1. Writes BBC news as train/test CSV files (stratified, seed 0).
2. Plans with SALF: one forward pass over 256 calibration examples, no training;
   prints the cost-benefit table per cut and writes plan.json + plan.png.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/quickstart"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from edgetune.api import load_model, plan
    from edgetune.cli.common import print_plan_table
    from edgetune.data import load_dataset
    from edgetune.datasets import minilm_path, write_bbc_news
    from edgetune.report import plot_plan

    start = time.perf_counter()
    train_csv, test_csv = write_bbc_news(args.out / "data")
    print(f"[1/2] data: {train_csv} and {test_csv}")

    model = load_model(minilm_path(), max_length=128)
    result = plan(model, load_dataset(train_csv), planner="salf")
    result.save(args.out / "plan.json")
    plot_plan(result, args.out / "plan.png")
    print_plan_table(result)
    chosen = result.chosen
    print(
        f"[2/2] plan: freeze embeddings + blocks 1..{result.cut}, train blocks {result.trainable_layers} + head: "
        f"{chosen.backward_frac:.0%} of full fine-tuning's backward FLOPs, ~{chosen.train_memory_mb:.0f} MB "
        f"(planned in {result.seconds:.1f}s)"
    )
    print(f"wrote {args.out / 'plan.json'} and {args.out / 'plan.png'} in {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
