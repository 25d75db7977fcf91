"""Planner wall time as a ratio to one epoch of full fine-tuning, same data, same machine, one run.

    python benchmarks/plan_cost.py [--threads 2] [--out benchmarks/results]

Model: all-MiniLM-L6-v2; data: BBC news train split (80%, seed 0); max_length 128.
Full fine-tuning = every block + head trained with AdamW (embeddings frozen, as the
planner's cut 0; training them too would only make the epoch slower and the ratio
smaller). Each planner runs on the same loaded model; the epoch runs through
edgetune's trainer and is timed over the training loop (forward, backward,
optimizer step; the texts are tokenized once before it).
"""

from __future__ import annotations

import json
import time

import torch
from harness import exclusive, load_average, machine_record, parser, write_figure, write_json

from edgetune.api import load_model, plan
from edgetune.data import stratified_split
from edgetune.datasets import bbc_news, minilm_path
from edgetune.train import TrainConfig, Trainer
from edgetune.tuners import get_tuner


def full_finetune_epoch(backbone, encoder, dataset, batch_size: int, seed: int = 0) -> float:
    """Seconds of one epoch of full fine-tuning (cut 0: every block + head, embeddings frozen) with the trainer.

    Naive mode at cut 0 is plain fine-tuning: the frozen embeddings run every step under no_grad.
    """
    label_map = dataset.label_map()
    config = TrainConfig(
        mode="naive", epochs=1, batch_size=batch_size, lr=2e-5, seed=seed, progress=False, device="cpu"
    )
    trainer = Trainer(backbone, encoder, 0, label_map, get_tuner("full"), config, model_hash="plan_cost")
    return trainer.fit(dataset).history[0]["seconds"]


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_start = load_average()

    train, _ = stratified_split(bbc_news(), 0.2, seed=0)
    # "salf-256" caps the calibration sample at the 256 texts the planner read before it grew its sample: the time
    # a 5%-of-an-epoch plan buys, at the stability docs/results.md's planner study measures for small samples.
    planners = {
        "salf": ("salf", {}),
        "salf-256": ("salf", {"max_sample_size": 256}),
        "gradnorm": ("gradnorm", {}),
        "autofreeze": ("autofreeze", {}),
        "topk": ("topk", {}),
        "random": ("random", {}),
        "full": ("full", {}),
    }
    # Planners first on a pristine model (full fine-tuning changes the weights).
    backbone, encoder = load_model(minilm_path(), args.max_length)
    planner_seconds = {}
    picks = {}
    salf_detail: dict[str, dict] = {}  # the sample SALF read and the seconds its traces took
    with exclusive(args.lock):
        for name, (planner, params) in planners.items():
            start = time.perf_counter()
            p = plan((backbone, encoder), train, planner=planner, planner_params=params, batch_size=args.batch_size,
                     progress=False)  # fmt: skip
            planner_seconds[name] = time.perf_counter() - start
            picks[name] = p.cut
            if planner == "salf":
                fitted = p.planner_params["fitted"]
                salf_detail[name] = {k: fitted.get(k) for k in ("sample_size", "trace_seconds")}
            print(f"{name:9s} cut {p.cut}  {planner_seconds[name]:.1f}s", flush=True)

        epoch = full_finetune_epoch(backbone, encoder, train, args.batch_size)
    print(f"full fine-tuning epoch: {epoch:.1f}s over {len(train)} examples", flush=True)
    ratios = {k: v / epoch for k, v in planner_seconds.items()}
    result = {
        "benchmark": "plan_cost",
        "machine": machine_record(load_start, args.threads),  # load average: other work on this shared machine
        "model": "all-MiniLM-L6-v2",
        "data": f"BBC news train split, {len(train)} examples",
        "max_length": args.max_length,
        "batch_size": args.batch_size,
        "full_finetune_epoch_seconds": epoch,
        "planner_seconds": planner_seconds,
        "planner_cut": picks,
        "salf_sample": salf_detail,
        "ratio_to_epoch": ratios,
        "target_salf_ratio": 0.05,
        "salf_meets_target": ratios["salf"] <= 0.05,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "plan_cost.json", result)

    plot(result, args.out / "plan_cost.png", args.threads)
    print(json.dumps({k: f"{v:.2%}" for k, v in ratios.items()}))


def plot(result: dict, path, threads: int) -> None:
    """Planner time as a share of one epoch, one bar per planner (SALF in red, its 256-text variant in orange)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios, seconds = result["ratio_to_epoch"], result["planner_seconds"]
    epoch = result["full_finetune_epoch_seconds"]
    fig, ax = plt.subplots(figsize=(7.5, 4.0))
    names = list(ratios)
    colours = {"salf": "C3", "salf-256": "C1"}
    ax.bar(names, [100 * ratios[n] for n in names], color=[colours.get(n, "C0") for n in names])
    ax.axhline(5, color="grey", ls="--", lw=1, label="target for SALF: 5%")
    for i, n in enumerate(names):
        ax.text(i, 100 * ratios[n], f"{seconds[n]:.1f}s", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
    ax.set_ylabel("planner time, % of one full fine-tuning epoch")
    ax.set_title(f"Planner cost on MiniLM-L6 + BBC news ({threads} CPU thread(s); epoch {epoch:.0f}s)", fontsize=10)
    ax.legend()
    fig.tight_layout()
    write_figure(fig, path)


if __name__ == "__main__":
    main()
