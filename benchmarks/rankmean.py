"""RankMean vs plain averaging vs task arithmetic: merging top layers fine-tuned on two label groupings.

    python benchmarks/rankmean.py [--seeds 0 1 2] [--epochs 3] [--out benchmarks/results]

all-MiniLM-L6-v2 + BBC news (stratified split, seed 0), max_length 128. Two tasks on the
same documents:
* topics: the 5 BBC topics;
* sections: a regrouping into 3 labels (economy = business + tech, culture = entertainment
  + sports, politics).
For each seed, the top 3 blocks + a task head are fine-tuned per task from the same base
(edgetune trainer, cached trunk features); the two fine-tuned top-block sets are merged
without data (RankMean ranking whole blocks as in the reference code, RankMean ranking leaf modules, plain
average, task arithmetic with lambda = 1), and each task is
evaluated with the merged blocks and its own head. Reference points: each single model on
its own task, and the other task's blocks with this task's head.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch
from harness import hold_lock, load_average, machine_record, parser, write_figure, write_json

from edgetune.api import load_model, plan
from edgetune.data import TextDataset, sample, stratified_split
from edgetune.datasets import bbc_news, minilm_path
from edgetune.finetune import finetune
from edgetune.merge import merge_state_dicts
from edgetune.modeling import SequenceClassifier
from edgetune.train import TrainConfig

SECTIONS = {
    "business": "economy",
    "tech": "economy",
    "entertainment": "culture",
    "sports": "culture",
    "politics": "politics",
}
METHODS = {
    "rankmean": {"method": "rankmean"},
    "rankmean_module": {"method": "rankmean", "granularity": "module"},
    "average": {"method": "average"},
    "task_arithmetic": {"method": "task_arithmetic", "scale": 1.0},
}
K_TOP = 3


def regroup(ds: TextDataset) -> TextDataset:
    """The same documents under the 3 section labels: a second task whose fine-tune can be merged with the first."""
    return TextDataset(ds.texts, [SECTIONS[y] for y in ds.labels], ds.source + " (sections)", ds.rows)


@torch.no_grad()
def top_accuracy(classifier: SequenceClassifier, cut: int, hidden: torch.Tensor, mask: torch.Tensor, y) -> float:
    """Accuracy from the shared trunk output: only the top blocks and the head differ between variants."""
    classifier.eval()
    logits = torch.cat([classifier.top(cut)(hidden[i : i + 64], mask[i : i + 64]) for i in range(0, len(y), 64)])
    return float((logits.argmax(1).numpy() == y).mean())


def body(state: dict) -> dict:
    """A state dict without the task head: only the blocks are merged."""
    return {k: v for k, v in state.items() if not k.startswith("head.")}


def head(state: dict) -> dict:
    """The task head's entries of a state dict: each task keeps its own head whatever blocks it is given."""
    return {k: v for k, v in state.items() if k.startswith("head.")}


def parse_args():
    """The common benchmark options plus this benchmark's own."""
    ap = parser(__doc__)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--train-limit", type=int, default=None, help="Smoke runs: train on this many examples.")
    return ap.parse_args()


def make_tasks(train_limit: int | None) -> dict[str, tuple[TextDataset, TextDataset]]:
    """Both label groupings over the same documents and the same split, so only the labels differ."""
    train_topics, test_topics = stratified_split(bbc_news(), 0.2, seed=0)
    if train_limit:
        train_topics = sample(train_topics, train_limit, seed=0)
    return {
        "topics": (train_topics, test_topics),
        "sections": (regroup(train_topics), regroup(test_topics)),
    }


def trunk_features(test: TextDataset, max_length: int):
    """The base model's state and the test trunk output (blocks 1..cut), computed once: the trunk stays frozen, so
    every variant sees the same output. Returns (base backbone, base state, cut, hidden, mask)."""
    base_backbone, encoder = load_model(minilm_path(), max_length)
    base_state = {f"model.{k}": v.clone() for k, v in base_backbone.model.state_dict().items()}
    cut = base_backbone.num_layers - K_TOP
    ids, mask = (torch.from_numpy(a) for a in encoder(test.texts))
    with torch.no_grad():
        clf0 = SequenceClassifier(base_backbone, 5).eval()
        hidden = torch.cat([clf0.trunk_forward(ids[i : i + 64], mask[i : i + 64], cut) for i in range(0, len(ids), 64)])
    return base_backbone, base_state, cut, hidden, mask


def train_models(tasks: dict, seed: int, args) -> dict[str, SequenceClassifier]:
    """One fine-tuned model per task, each from a fresh copy of the base, so the merge sees two independent runs."""
    models = {}
    for name, (train, _) in tasks.items():
        backbone, enc = load_model(minilm_path(), args.max_length)
        p = plan((backbone, enc), train, planner="topk", planner_params={"k": K_TOP}, progress=False)
        cfg = TrainConfig(epochs=args.epochs, lr=args.lr, head_lr=1e-3, seed=seed, progress=False)
        models[name] = finetune((backbone, enc), p, train, config=cfg).classifier.eval()
        print(f"seed {seed}: trained {name}", flush=True)
    return models


def evaluate_seed(seed: int, tasks: dict, models: dict, base_state: dict, cut: int, hidden, mask) -> dict:
    """Merge the two tasks' blocks every way and score each task with its own head on the single, the other
    task's and each merged block set."""
    states = {n: dict(m.state_dict()) for n, m in models.items()}
    merged = {
        method: merge_state_dicts(base_state, [body(states["topics"]), body(states["sections"])], **params)[0]
        for method, params in METHODS.items()
    }
    row = {"seed": seed}
    for name, (_, test) in tasks.items():
        own = models[name]
        y = np.array([own.labels.index(t) for t in test.labels])
        other = "sections" if name == "topics" else "topics"
        row[name] = {"single": top_accuracy(own, cut, hidden, mask, y)}
        variant = copy.deepcopy(own)
        variant.load_state_dict({**body(states[other]), **head(states[name])})
        row[name]["other_blocks"] = top_accuracy(variant, cut, hidden, mask, y)
        for method, state in merged.items():
            variant.load_state_dict({**state, **head(states[name])})
            row[name][method] = top_accuracy(variant, cut, hidden, mask, y)
    return row


def summarize(runs: list[dict], tasks: list[str]) -> tuple[dict, list]:
    """Mean accuracy over seeds per method and task, and per seed RankMean's margin over plain averaging."""
    summary = {}
    for method in ("single", "other_blocks", *METHODS):
        per_task = {t: float(np.mean([r[t][method] for r in runs])) for t in tasks}
        summary[method] = {**per_task, "mean": float(np.mean(list(per_task.values())))}
    margins = [np.mean([r[t]["rankmean"] - r[t]["average"] for t in tasks]) for r in runs]
    return summary, margins


def main() -> None:
    """Train, merge and score every seed, then write the summary, the JSON record and the figure."""
    args = parse_args()
    hold_lock(args.lock)
    torch.set_num_threads(args.threads)
    load_start = load_average()

    tasks = make_tasks(args.train_limit)
    train_topics, test_topics = tasks["topics"]
    base_backbone, base_state, cut, hidden, mask = trunk_features(test_topics, args.max_length)

    runs = []
    for seed in args.seeds:
        models = train_models(tasks, seed, args)
        row = evaluate_seed(seed, tasks, models, base_state, cut, hidden, mask)
        runs.append(row)
        print(json.dumps(row), flush=True)

    summary, margins = summarize(runs, list(tasks))
    out = {
        "benchmark": "rankmean",
        "machine": machine_record(load_start, args.threads),
        "model": "all-MiniLM-L6-v2",
        "data": f"BBC news train {len(train_topics)} / test {len(test_topics)} (stratified, seed 0)",
        "tasks": {"topics": "5 BBC topics", "sections": SECTIONS},
        "merged": f"top {K_TOP} blocks (blocks {cut + 1}..{base_backbone.num_layers}); heads stay per task",
        "epochs": args.epochs,
        "lr": args.lr,
        "runs": runs,
        "summary_accuracy": summary,
        "rankmean_minus_average_points": {
            "mean": 100 * float(np.mean(margins)),
            "std": 100 * float(np.std(margins)),
            "per_seed": [100 * float(m) for m in margins],
        },
        "target": "RankMean >= plain averaging on average",
        "meets_target": bool(np.mean(margins) >= 0),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "rankmean.json", out)
    plot(summary, list(tasks), args.out / "rankmean.png")
    print(json.dumps(summary, indent=1))


def plot(summary: dict, tasks: list[str], path: Path) -> None:
    """Bar chart of mean accuracy per method and task, to see the merges against the single models at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(summary)
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(tasks)
    for i, task in enumerate(tasks):
        xs = np.arange(len(methods)) + i * width
        vals = [100 * summary[m][task] for m in methods]
        ax.bar(xs, vals, width, label=task)
        for x, v in zip(xs, vals):
            ax.text(x, v, f"{v:.1f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(np.arange(len(methods)) + width / 2, [m.replace("_", "\n") for m in methods])
    lo = min(100 * summary[m][t] for m in methods for t in tasks)
    ax.set_ylim(max(0, lo - 10), 100)
    ax.set_ylabel("test accuracy (%), mean over seeds")
    ax.set_title(f"Merging top-{K_TOP} blocks fine-tuned on two label groupings of BBC news")
    ax.legend()
    write_figure(fig, path)


if __name__ == "__main__":
    main()
