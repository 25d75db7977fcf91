"""How to train inside the SALF-chosen layers: full / LoRA / RoseLoRA / DSEE, on the server split and on users.

    flock /work/bench.lock python benchmarks/tuners.py [--epochs 2] [--seeds 0 1 2 3 4] [--threads 2]

Model all-MiniLM-L6-v2 (6 BERT blocks, d 384), data BBC news (2225 articles,
5 topics), stratified 80/20 split with seed 0 (train 1780, test 445),
max_length 128. SALF plans on the training split (calibration sample 256);
every tuner trains the blocks above its cut and the head, in cached mode (the
frozen trunk runs once; its output is shared by every run), batch 16, AdamW
with linear warm-up (6%) and decay, head at --head-lr. Learning rates as in
``where_to_finetune.py``: --lr for full tuning, --adapter-lr for the LoRA
family (LoRA, RoseLoRA, DSEE). LoRA, RoseLoRA and DSEE use rank 8 on the
query and value projections (peft's default targets for BERT).

Per run: test accuracy and macro-F1, trainable parameters, personal-delta
bytes (the safetensors bytes of ``tuner.delta_state``: everything training
changed, head included; the adapter-only share is reported too) and seconds
per optimizer step (the training loop only; cache building and evaluation
excluded). DSEE stage 2 (magnitude pruning of the final weights of the trained
blocks, no retraining) is applied to copies of each trained DSEE model (and, for
comparison, of each full-tuning model) at several settings; inference FLOPs of
the trained blocks per example of 128 tokens are counted with the cost-model
convention. Removed heads are real FLOPs (the projections shrink);
unstructured sparsity is a theoretical non-zero count (dense kernels still run
every weight).

Personalization: --users simulated users (``edgetune_fleet.users``: Dirichlet(0.5)
label mixes, half of them with a personal label swap; 200 documents each from
the test split, 30% held out per user). The global model is the full-tuning
server model of the first seed; each user trains its top on its own data
with each tuner via the server trainer in cached mode (the same computation as
on a device), --user-epochs epochs, --user-seeds seeds, and is scored on its own
held-out data.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from harness import hold_lock, load_average, machine_record, parser, write_figure, write_json

MODEL = "all-MiniLM-L6-v2"
TUNERS = ("full", "lora", "roselora", "dsee")
ADAPTER = {"r": 8, "alpha": 16.0, "dropout": 0.1}
ROSELORA = {**ADAPTER, "target_density": 0.1, "warmup": 0.1, "final": 0.2}
DSEE = {**ADAPTER, "sparse_n": 64, "decomposition_rank": 8, "decomposition_iters": 3}
# stage-2 settings: (name, unstructured ratio, scope, head ratio)
PRUNINGS = (
    ("heads 7/12", 0.0, "per_matrix", 7 / 12),
    ("heads 9/12", 0.0, "per_matrix", 9 / 12),
    ("unstructured 30%", 0.3, "per_matrix", 0.0),
    ("unstructured 50%", 0.5, "per_matrix", 0.0),
    ("unstructured 50% global", 0.5, "global", 0.0),
    ("heads 6/12 + unstructured 30%", 0.3, "per_matrix", 0.5),
)


def tuner_params(name: str) -> dict[str, Any]:
    """Each tuner's hyper-parameters, a fresh copy per call so no run can change another's."""
    return {"full": {}, "lora": dict(ADAPTER), "roselora": dict(ROSELORA), "dsee": dict(DSEE)}[name]


@torch.no_grad()
def predict(top: torch.nn.Module, source: Any, batch_size: int = 64) -> np.ndarray:
    """Logits of the top over a cached feature source, in batches to bound memory."""
    top.eval()
    out = []
    for start in range(0, len(source), batch_size):
        hidden, mask = source.batch(np.arange(start, min(start + batch_size, len(source))), torch.device("cpu"))
        out.append(top(hidden, mask).float().numpy())
    return np.concatenate(out)


def scores(top: torch.nn.Module, source: Any, labels: np.ndarray, names: list[str]) -> dict[str, float]:
    """Accuracy and macro-F1: the two numbers every row reports."""
    from edgetune.evaluation import classification_metrics

    m = classification_metrics(labels, predict(top, source).argmax(axis=1), names)
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}


def delta_bytes(delta: dict[str, torch.Tensor]) -> dict[str, int]:
    """What a user would store: the serialized delta, in all and without the head and norms."""
    from safetensors.torch import save

    adapter = {k: v for k, v in delta.items() if not k.startswith(("head.", "norm."))}
    return {"total": len(save(delta)), "adapter": len(save(adapter)) if adapter else 0}


class Bench:
    """The model, split, plan and shared feature caches every run starts from."""

    def __init__(self, args: argparse.Namespace) -> None:
        from edgetune.api import load_model, plan
        from edgetune.data import LabelMap, stratified_split
        from edgetune.datasets import bbc_news, minilm_path

        self.args = args
        self.train_ds, self.test_ds = stratified_split(bbc_news(), 0.2, seed=0)
        self.backbone, self.encoder = load_model(minilm_path(), args.max_length)
        self.backbone.model.eval()
        t0 = time.perf_counter()
        self.plan = plan((self.backbone, self.encoder), self.train_ds, planner="salf", progress=False)
        self.plan_seconds = time.perf_counter() - t0
        self.cut = self.plan.cut
        self.label_map = LabelMap(tuple(self.plan.labels))
        self.names = list(self.label_map.labels)
        t0 = time.perf_counter()
        trainer = self.trainer("full", 0)
        self.train_src = trainer.source(self.train_ds, "train")
        self.test_src = trainer.source(self.test_ds, "test")
        self.cache_seconds = time.perf_counter() - t0
        self.y_train = self.train_ds.encoded_labels(self.label_map)
        self.y_test = self.test_ds.encoded_labels(self.label_map)

    def config(self, tuner: str, seed: int, epochs: int) -> Any:
        """The shared training settings; only the learning rate depends on the tuner (full vs the LoRA family)."""
        from edgetune.train import TrainConfig

        lr = self.args.lr if tuner == "full" else self.args.adapter_lr
        return TrainConfig(
            mode="cached",
            epochs=epochs,
            batch_size=16,
            lr=lr,
            head_lr=self.args.head_lr,
            seed=seed,
            cache="memory",
            progress=False,
            device="cpu",
        )

    def trainer(self, tuner: str, seed: int, backbone: Any = None, epochs: int | None = None) -> Any:
        """A trainer on a private copy of the backbone, so no run sees another's updates."""
        from edgetune.train import Trainer
        from edgetune.tuners import get_tuner

        backbone = copy.deepcopy(backbone if backbone is not None else self.backbone)
        return Trainer(
            backbone,
            self.encoder,
            self.cut,
            self.label_map,
            get_tuner(tuner, **tuner_params(tuner)),
            self.config(tuner, seed, epochs or self.args.epochs),
            model_hash="minilm",
        )


def run_server(bench: Bench, tuner: str, seed: int) -> tuple[dict[str, Any], Any]:
    """One tuner trained on the server split: its row and its trainer (kept for pruning and as the global model)."""
    trainer = bench.trainer(tuner, seed)
    nonzero = None
    if tuner == "roselora":  # count what survived pruning before the adapters are merged away
        orig_merge = trainer.tuner.merge

        def merge_and_count(top: Any) -> Any:
            nonlocal nonzero
            nonzero = trainer.tuner.nonzero_adapter_params(top)
            return orig_merge(top)

        trainer.tuner.merge = merge_and_count
    result = trainer.fit(bench.train_src, bench.y_train)
    steps = sum(h["steps"] for h in result.history)
    row = {
        "tuner": tuner,
        "seed": seed,
        **scores(trainer.top, bench.test_src, bench.y_test, bench.names),
        "trainable_params": result.trainable_params,
        "delta_bytes": delta_bytes(result.delta),
        "step_seconds": sum(h["seconds"] for h in result.history) / steps,
        "steps": steps,
        "loss": [h["loss"] for h in result.history],
    }
    if nonzero is not None:
        row["nonzero_adapter_params"] = nonzero
    return row, trainer


def prune_variants(bench: Bench, trainer: Any) -> list[dict[str, Any]]:
    """Stage-2 pruning of copies of a trained top at every setting: accuracy against FLOPs saved."""
    from edgetune.tuners import get_tuner
    from edgetune.tuners.dsee import inference_flops

    dsee = get_tuner("dsee")
    rows = []
    base = inference_flops(trainer.top, bench.args.max_length)
    for name, ratio, scope, head_ratio in PRUNINGS:
        top = copy.deepcopy(trainer.top)
        report = dsee.prune(top, ratio, head_ratio, scope, seq_len=bench.args.max_length)
        rows.append(
            {
                "pruning": name,
                **scores(top, bench.test_src, bench.y_test, bench.names),
                "weight_sparsity": report["weight_sparsity"],
                "block_params_before": report["block_params_before"],
                "block_params_after": report["block_params_after"],
                "flops_before": base["dense"],
                "flops_dense_after": report["flops_dense_after"],
                "flops_nonzero_after": report["flops_nonzero_after"],
                "saved_dense": 1 - report["flops_dense_after"] / base["dense"],
                "saved_nonzero": 1 - report["flops_nonzero_after"] / base["dense"],
            }
        )
    return rows


def run_users(bench: Bench, global_trainer: Any, seeds: list[int]) -> dict[str, Any]:
    """Every simulated user personalizes the global model with each tuner and is scored on its own held-out data."""
    from edgetune_fleet.users import UserConfig, simulate_users

    users = simulate_users(bench.test_ds, UserConfig(num_users=bench.args.users, examples_per_user=200, seed=0))
    global_backbone = global_trainer.classifier.backbone
    head = {k: v.clone() for k, v in global_trainer.classifier.head.state_dict().items()}
    out = []
    for user in users:
        first = bench.trainer("full", 0, global_backbone, epochs=bench.args.user_epochs)
        train_src, test_src = first.source(user.train, "user_train"), first.source(user.test, "user_test")
        y_train, y_test = user.train.encoded_labels(bench.label_map), user.test.encoded_labels(bench.label_map)
        first.classifier.head.load_state_dict(head)
        row: dict[str, Any] = {
            "user": user.user_id,
            "train": len(user.train),
            "test": len(user.test),
            "preference": user.preference,
            "global": scores(first.top, test_src, y_test, bench.names),
            "tuners": {},
        }
        for tuner in TUNERS:
            runs = []
            for seed in seeds:
                trainer = bench.trainer(tuner, seed, global_backbone, epochs=bench.args.user_epochs)
                trainer.classifier.head.load_state_dict(head)
                result = trainer.fit(train_src, y_train)
                steps = sum(h["steps"] for h in result.history)
                runs.append(
                    {
                        "seed": seed,
                        **scores(trainer.top, test_src, y_test, bench.names),
                        "delta_bytes": delta_bytes(result.delta)["total"],
                        "step_seconds": sum(h["seconds"] for h in result.history) / steps,
                    }
                )
            row["tuners"][tuner] = runs
        out.append(row)
        print(
            f"user {user.user_id}: global {row['global']['accuracy']:.3f} "
            + " ".join(f"{t} {np.mean([r['accuracy'] for r in rs]):.3f}" for t, rs in row["tuners"].items()),
            flush=True,
        )
    return {"num_users": len(users), "epochs": bench.args.user_epochs, "users": out}


def mean_std(values: list[float]) -> dict[str, float]:
    """Mean, spread and count over seeds, the shape every summary entry uses."""
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "n": len(values)}


def summarize(runs: list[dict[str, Any]], prunings: dict[str, list[dict[str, Any]]], users: dict | None) -> dict:
    """Per tuner and per pruning setting, the means over seeds (and over users) the targets and the figure read."""
    summary: dict[str, Any] = {"server": {}, "pruning": {}, "users": {}}
    for tuner in TUNERS:
        rs = [r for r in runs if r["tuner"] == tuner]
        entry = {
            "accuracy": mean_std([r["accuracy"] for r in rs]),
            "macro_f1": mean_std([r["macro_f1"] for r in rs]),
            "trainable_params": rs[0]["trainable_params"],
            "delta_bytes": mean_std([r["delta_bytes"]["total"] for r in rs]),
            "adapter_bytes": mean_std([r["delta_bytes"]["adapter"] for r in rs]),
            "step_seconds": mean_std([r["step_seconds"] for r in rs]),
        }
        if "nonzero_adapter_params" in rs[0]:
            entry["nonzero_adapter_params"] = mean_std([r["nonzero_adapter_params"] for r in rs])
        summary["server"][tuner] = entry
    for tuner, rows in prunings.items():
        for name, *_ in PRUNINGS:
            rs = [r for r in rows if r["pruning"] == name]
            summary["pruning"].setdefault(tuner, {})[name] = {
                "accuracy": mean_std([r["accuracy"] for r in rs]),
                "weight_sparsity": rs[0]["weight_sparsity"],
                "saved_dense": rs[0]["saved_dense"],
                "saved_nonzero": rs[0]["saved_nonzero"],
            }
    if users is not None:
        for tuner in TUNERS:
            accs = [np.mean([r["accuracy"] for r in u["tuners"][tuner]]) for u in users["users"]]
            summary["users"][tuner] = {
                "accuracy": mean_std([float(a) for a in accs]),
                "delta_bytes": float(np.mean([r["delta_bytes"] for u in users["users"] for r in u["tuners"][tuner]])),
                "step_seconds": float(np.mean([r["step_seconds"] for u in users["users"] for r in u["tuners"][tuner]])),
            }
        summary["users"]["global"] = {"accuracy": mean_std([u["global"]["accuracy"] for u in users["users"]])}
    return summary


def targets(summary: dict[str, Any]) -> dict[str, Any]:
    """Whether RoseLoRA and DSEE meet their targets against LoRA and full tuning."""
    s = summary["server"]
    rose_gap = s["lora"]["accuracy"]["mean"] - s["roselora"]["accuracy"]["mean"]
    bytes_ratio = s["roselora"]["delta_bytes"]["mean"] / s["lora"]["delta_bytes"]["mean"]
    full = s["full"]["accuracy"]["mean"]
    dsee = []
    for name, entry in summary["pruning"].get("dsee", {}).items():
        gap = full - entry["accuracy"]["mean"]
        dsee.append(
            {
                "pruning": name,
                "gap_to_full_points": 100 * gap,
                "saved_dense": entry["saved_dense"],
                "saved_nonzero": entry["saved_nonzero"],
                "meets_real": entry["saved_dense"] >= 0.2 and gap <= 0.01,
                "meets_theoretical": entry["saved_nonzero"] >= 0.2 and gap <= 0.01,
            }
        )
    return {
        "roselora_gap_to_lora_points": 100 * rose_gap,
        "roselora_bytes_vs_lora": bytes_ratio,
        "roselora_meets": rose_gap <= 0.01 and bytes_ratio <= 0.30,
        "dsee": dsee,
        "dsee_meets_real_flops": any(d["meets_real"] for d in dsee),
        "dsee_meets_theoretical_flops": any(d["meets_theoretical"] for d in dsee),
    }


def plot(result: dict[str, Any], path: Path) -> None:
    """Accuracy, delta size, step time per tuner and the pruning trade-off, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["summary"]["server"]
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.2))
    x = np.arange(len(TUNERS))
    acc = [100 * s[t]["accuracy"]["mean"] for t in TUNERS]
    err = [100 * s[t]["accuracy"]["std"] for t in TUNERS]
    axes[0].bar(x, acc, yerr=err, color="tab:blue", capsize=4)
    axes[0].set_ylim(min(acc) - 3, 100)
    axes[0].set_title(f"test accuracy (%), {len(result['seeds'])} seeds")
    axes[1].bar(x, [s[t]["delta_bytes"]["mean"] / 1024 for t in TUNERS], color="tab:orange")
    axes[1].set_yscale("log")
    axes[1].set_title("personal delta (KiB, log)")
    axes[2].bar(x, [1000 * s[t]["step_seconds"]["mean"] for t in TUNERS], color="tab:green")
    axes[2].set_title("ms per optimizer step (batch 16)")
    for ax in axes[:3]:
        ax.set_xticks(x, TUNERS)
    ax = axes[3]
    full = 100 * s["full"]["accuracy"]["mean"]
    for tuner, marker in (("dsee", "o"), ("full", "s")):
        entries = result["summary"]["pruning"].get(tuner, {})
        for key, fill in (("saved_dense", "full"), ("saved_nonzero", "none")):
            xs = [100 * e[key] for e in entries.values()]
            ys = [100 * e["accuracy"]["mean"] for e in entries.values()]
            label = f"{tuner} + stage 2, {'real' if key == 'saved_dense' else 'non-zero'} FLOPs"
            ax.scatter(
                xs,
                ys,
                marker=marker,
                facecolors=None if fill == "full" else "none",
                edgecolors="tab:red" if tuner == "dsee" else "tab:gray",
                c="tab:red" if (tuner == "dsee" and fill == "full") else ("tab:gray" if fill == "full" else None),
                label=label,
            )
    ax.axhline(full - 1, ls="--", c="k", lw=0.8, label="full tuning - 1 point")
    ax.axvline(20, ls=":", c="k", lw=0.8)
    ax.set_xlabel("inference FLOPs saved in the trained block (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("stage-2 pruning")
    ax.legend(fontsize=7)
    fig.suptitle(f"{MODEL} + BBC news, SALF cut {result['plan']['cut']}: tuners inside the chosen layers")
    fig.tight_layout()
    write_figure(fig, path, dpi=110)


def parse_args() -> argparse.Namespace:
    """The common benchmark options plus the server runs' and the users' training settings."""
    ap = parser(__doc__, out=Path(__file__).parent / "results")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--adapter-lr", type=float, default=5e-4)
    ap.add_argument("--head-lr", type=float, default=5e-3)
    ap.add_argument("--users", type=int, default=4)
    ap.add_argument("--user-epochs", type=int, default=5)
    ap.add_argument("--user-seeds", type=int, nargs="+", default=[0, 1, 2])
    return ap.parse_args()


def server_runs(bench: Bench, seeds: list[int]) -> tuple[list[dict[str, Any]], dict[str, list], Any]:
    """Every tuner on the server split for every seed, with stage-2 pruning of the DSEE and full models; the first
    full-tuning model is kept as the users' global model."""
    runs, prunings, global_trainer = [], {"dsee": [], "full": []}, None
    for seed in seeds:
        for tuner in TUNERS:
            row, trainer = run_server(bench, tuner, seed)
            runs.append(row)
            print(
                f"seed {seed} {tuner}: acc {row['accuracy']:.4f} delta {row['delta_bytes']['total']} B "
                f"step {1000 * row['step_seconds']:.0f} ms",
                flush=True,
            )
            if tuner in prunings:
                prunings[tuner] += [{**r, "seed": seed} for r in prune_variants(bench, trainer)]
            if tuner == "full" and global_trainer is None:
                global_trainer = trainer
    return runs, prunings, global_trainer


def result_record(args: argparse.Namespace, bench: Bench, runs: list, prunings: dict, users: dict | None,
                  load_start: list[float], start: float) -> dict[str, Any]:  # fmt: skip
    """The JSON record: the setting, every run, the pruning and personalization rows, the summary and targets."""
    summary = summarize(runs, prunings, users)
    return {
        "benchmark": "tuners",
        "command": "python benchmarks/tuners.py " + " ".join(sys.argv[1:]),
        "machine": machine_record(load_start, args.threads),
        "model": MODEL,
        "data": f"BBC news, train {len(bench.train_ds)} / test {len(bench.test_ds)} (stratified, seed 0)",
        "max_length": args.max_length,
        "epochs": args.epochs,
        "seeds": args.seeds,
        "user_seeds": args.user_seeds,
        "learning_rates": {"full": args.lr, "adapters": args.adapter_lr, "head": args.head_lr},
        "tuner_params": {t: tuner_params(t) for t in TUNERS},
        "plan": {
            "planner": "salf",
            "cut": bench.cut,
            "trainable_layers": bench.plan.trainable_layers,
            "seconds": bench.plan_seconds,
        },
        "cache_seconds": bench.cache_seconds,
        "runs": runs,
        "pruning": prunings,
        "personalization": users,
        "summary": summary,
        "targets": targets(summary),
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    """Server runs, pruning and personalization under the lock, then the JSON record and the figure."""
    args = parse_args()
    hold_lock(args.lock)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("EDGETUNE_NO_PROGRESS", "1")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

    start = time.perf_counter()
    load_start = load_average()
    bench = Bench(args)
    print(f"SALF cut {bench.cut} ({bench.plan_seconds:.1f}s); caches built in {bench.cache_seconds:.1f}s", flush=True)
    runs, prunings, global_trainer = server_runs(bench, args.seeds)
    users = run_users(bench, global_trainer, args.user_seeds) if args.users > 0 else None
    result = result_record(args, bench, runs, prunings, users, load_start, start)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "tuners.json", result)
    plot(result, args.out / "tuners.png")
    print(json.dumps(result["targets"], indent=2))
    print(f"done in {result['seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
