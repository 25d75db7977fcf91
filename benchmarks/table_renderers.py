"""The result tables of README.md and docs/results.md, one renderer per results JSON (for ``readme_tables.py``).

Each renderer takes the parsed JSON of one file in ``benchmarks/results/`` and returns the Markdown table (no
trailing newline). Only the numbers come from the JSON; labels and emphasis are fixed here. No torch, no numpy:
the tables' check runs in the fast test tier.
"""

from __future__ import annotations

from statistics import fmean
from typing import Any

Result = dict[str, Any]


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _head(cells: list[str]) -> list[str]:
    return [_row(cells), "|" + "---|" * len(cells)]


# --- planner_study.json ----------------------------------------------------------------------------------------

PLANNER_LABELS = ("salf", "salf-argmax", "topk", "gradnorm", "autofreeze", "random", "full")


def _pt(x: float) -> str:
    """Points with one decimal, without a negative zero."""
    return f"{round(x, 1) + 0.0:.1f}"


def planner_study(res: Result) -> str:
    """One row per task (the oracle's best and cheapest-within-1-point cuts, SALF's stability, each planner's picks
    with cost and points below the best), then each group's means with 95% intervals."""
    calibration = set(res.get("calibration_tasks", []))
    lines = _head(["task", "best (cut)", "oracle cheapest", "SALF same cut", *PLANNER_LABELS])
    for task, entry in res["tasks"].items():
        st = entry["plans"]["stability"]
        stable = f"{st['resample_mode_share']:.0%} resamples, {st['row_order_mode_share']:.0%} row orders"
        role = "calibration" if task in calibration else "held out"
        if "analysis" not in entry:
            picks = ["/".join(str(e["cut"]) for e in entry["plans"].get(label, [])) for label in PLANNER_LABELS]
            lines.append(_row([f"{task} ({role})", "no oracle yet", "", stable, *picks]))
            continue
        a = entry["analysis"]
        per_cut = {int(c): v for c, v in a["per_cut"].items()}
        cheap = a["oracle_cheapest_cut"]
        cells = [f"{task} ({role})", f"{a['best_accuracy']:.1f} ({a['best_cut']})",
                 f"cut {cheap} ({100 * per_cut[cheap]['backward_frac']:.0f}%)", stable]  # fmt: skip
        for label in PLANNER_LABELS:
            p = a["picks"][label]
            below = p["below_best"]
            cells.append(f"{'/'.join(map(str, p['cuts']))}: {100 * p['backward_frac']:.0f}%, "
                         f"{_pt(below['mean'])} below [{_pt(below['low'])}, {_pt(below['high'])}]")  # fmt: skip
        lines.append(_row(cells))
    for group, g in res.get("summary", {}).items():
        cells = [f"**mean, {group.replace('_', ' ')}** ({len(g['tasks'])} tasks)", "", "", ""]
        for label in PLANNER_LABELS:
            below, regret = g[label]["below_best"], g[label]["regret"]
            cells.append(f"{100 * g[label]['backward_frac']:.0f}%, {_pt(below['mean'])} below "
                         f"[{_pt(below['low'])}, {_pt(below['high'])}], regret {_pt(regret['mean'])} "
                         f"[{_pt(regret['low'])}, {_pt(regret['high'])}]")  # fmt: skip
        lines.append(_row(cells))
        versus = g.get("salf_vs")
        if versus:  # SALF's accuracy and cost against each planner, paired on the same draws
            cells = [f"SALF minus planner, {group.replace('_', ' ')}", "", "", ""]
            for label in PLANNER_LABELS:
                if label not in versus:
                    cells.append("")
                    continue
                gain = versus[label]["accuracy_gain"]
                cells.append(f"{_pt(gain['mean'])} points [{_pt(gain['low'])}, {_pt(gain['high'])}], "
                             f"{100 * versus[label]['cost_difference']:+.0f}% FLOPs")  # fmt: skip
            lines.append(_row(cells))
    if "frontier" in res:
        lines += ["", _planner_frontier(res)]
    return "\n".join(lines)


FRONTIER_RULES = {"salf": "SALF", "topk": "top k blocks", "oracle": "oracle (hindsight)"}
OTHER_PLANNERS = {"salf-cross-task": "SALF, law fitted on the other tasks", "validation": "every cut trained, "
                  "cheapest within 1 point on validation", "gradnorm": "grad-norm", "autofreeze": "AutoFreeze-like",
                  "random": "random", "salf-argmax": "SALF argmax-gain"}  # fmt: skip


def _planner_frontier(res: Result) -> str:
    """Held-out tasks: each rule's mean cost, points below the best cut and regret with 95% intervals; SALF at every
    tolerance and top-k at every k side by side, so a reader sees whether SALF beats a fixed depth at equal cost."""
    tasks = res["frontier"]["tasks"]
    group = res["summary"]["held_out"]
    lines = _head([f"rule, held-out tasks ({', '.join(tasks)})", "cuts per task", "backward FLOPs",
                   "points below the best [95%]", "regret [95%]"])  # fmt: skip

    def cells(name: str, cuts: str, frac: float, below: dict, regret: dict) -> list[str]:
        return [name, cuts, f"{100 * frac:.0f}%", f"{_pt(below['mean'])} [{_pt(below['low'])}, {_pt(below['high'])}]",
                f"{_pt(regret['mean'])} [{_pt(regret['low'])}, {_pt(regret['high'])}]"]  # fmt: skip

    for p in res["frontier"]["points"]:
        cuts = " / ".join("-".join(map(str, sorted(set(p["cuts"][t])))) for t in tasks)
        name = f"{FRONTIER_RULES[p['rule']]}, {p['setting']}"
        if p["rule"] == "salf" and p["setting"] == "tolerance 1":
            name = f"**{name} (default)**"
        lines.append(_row(cells(name, cuts, p["backward_frac"], p["below_best"], p["regret"])))
    for label, name in OTHER_PLANNERS.items():
        if label in group:
            g = group[label]
            cuts = " / ".join("-".join(map(str, sorted(set(res["tasks"][t]["analysis"]["picks"][label]["cuts"]))))
                              for t in tasks)  # fmt: skip
            lines.append(_row(cells(name, cuts, g["backward_frac"], g["below_best"], g["regret"])))
    return "\n".join(lines)


# --- tuners.json -----------------------------------------------------------------------------------------------


def _count(n: float) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} k"


def _bytes(n: float) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def tuners(res: Result) -> str:
    """Server-side tuners inside the planned block: accuracy over seeds, parameters, delta bytes, step time."""
    server, params = res["summary"]["server"], res["tuner_params"]
    labels = {
        "full": "full",
        "lora": f"LoRA r={params['lora']['r']}",
        "roselora": f"RoseLoRA r={params['roselora']['r']}, density {params['roselora']['target_density']:g}",
        "dsee": f"DSEE r={params['dsee']['r']} + {params['dsee']['sparse_n']} sparse",
    }
    lora_bytes = server["lora"]["delta_bytes"]["mean"]
    lines = _head(["tuner", "test accuracy", "trainable params", "personal delta", "step time"])
    for name, label in labels.items():
        s = server[name]
        acc = f"{100 * s['accuracy']['mean']:.2f} ± {100 * s['accuracy']['std']:.2f}"
        trainable, delta = _count(s["trainable_params"]), _bytes(s["delta_bytes"]["mean"])
        if "nonzero_adapter_params" in s:
            trainable += f" ({_count(s['nonzero_adapter_params']['mean'])} non-zero)"
        if name == "roselora":
            delta += f" ({s['delta_bytes']['mean'] / lora_bytes:.0%} of LoRA)"
        lines.append(_row([label, acc, trainable, delta, f"{1000 * s['step_seconds']['mean']:.0f} ms"]))
    return "\n".join(lines)


# --- personalize_users.json ------------------------------------------------------------------------------------


def _users_row(name: str, s: Result) -> str:
    return _row([
        name,
        str(s["users"]),
        f"{s['global_accuracy']['mean']:.1f}",
        f"{s['gain_points_before_guard']['mean']:+.2f}",
        f"{s['gain_points_after_guard']['mean']:+.2f}",
        f"{100 * s['share_worse_before_guard']:.0f}%",
        f"{100 * s['share_worse_after_guard']:.0f}% ({s['worse_after_guard']})",
        f"{100 * s['share_kept_personal']:.0f}%",
        f"{s['job_seconds']['median']:.1f} ({s['job_seconds']['max']:.1f})",
        f"{100 * s['guard_share_of_job']['mean']:.1f}% ({100 * s['guard_share_of_job']['max']:.1f}%)",
        f"{s['peak_rss_mb']['median']:.0f} ({s['peak_rss_mb']['max']:.0f})",
    ])  # fmt: skip


def personalize_users(res: Result) -> str:
    """Per corpus and kind of user, per kind, then all users: gains before / after the guard, job cost."""
    s = res["summary"]
    lines = _head(["users", "n", "global acc.", "mean gain before guard", "after guard", "worse by > 1 pt before",
                   "after (count)", "kept personal", "job s median (max)", "guard share of job mean (max)",
                   "peak RSS MB median (max)"])  # fmt: skip
    for corpus, kinds in s.get("by_corpus_and_kind", {}).items():
        lines += [_users_row(f"{corpus} / {kind}", k) for kind, k in kinds.items()]
    lines += [_users_row(f"all / {kind}", k) for kind, k in s["by_kind"].items()]
    lines.append(_users_row("**all**", s["all"]))
    return "\n".join(lines)


# --- backbone_swap.json ----------------------------------------------------------------------------------------

SHORT_BACKBONES = {"minilm": "MiniLM", "mpnet": "MPNet", "derived": "MiniLM minus its top block"}


def _swap_methods(new: str) -> dict[str, str]:
    return {
        "none": f"none ({new}'s global head)",
        "fala": "**FaLA** (clustered)",
        "fala-random": "FaLA, random selection (3 draws)",
        "head-only": "head-only on the curated examples",
        "retrain": f"re-training {new}'s planned top, all texts",
    }


def _swap_groups(summary: Result) -> list[tuple[str, Result]]:
    """The table's per-group columns: per corpus and kind when the run has several corpora, else per kind."""
    if len(summary.get("by_corpus", {})) > 1:
        return list(summary["by_corpus_and_kind"].items())
    return [(k, summary["by_kind"][k]) for k in sorted(summary["by_kind"])]


def _interval(ci: list[float] | None) -> str:
    return f"[{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}]" if ci else ""


def backbone_swap(res: Result) -> str:
    """Accuracy per method after the swap (overall and per corpus and kind of user), labels used, backward FLOPs,
    time; then per corpus and overall: FaLA over re-training, the ceiling (the old personal model over
    re-training) and clustered minus random selection with its paired 95% intervals."""
    summary = res["summary"]
    old, new = (SHORT_BACKBONES[b] for b in res.get("direction", ("minilm", "mpnet")))
    full = fmean(u["after"]["retrain"]["full_retrain_backward_flops"] for u in res["users"])
    groups = _swap_groups(summary)
    lines = _head(["method", "accuracy (mean ± sd)", *(g for g, _ in groups), "examples labelled",
                   "backward FLOPs / user", f"vs full {new} re-training", "wall time / user"])  # fmt: skip
    before = [f"{g['before_personal']:.3f}" for _, g in groups]
    lines.append(_row([f"before the swap ({old} + personal state)", f"{summary['before_personal']['mean']:.3f}",
                       *before, "", "", "", ""]))  # fmt: skip
    for method, label in _swap_methods(new).items():
        if method not in summary["methods"]:
            continue
        e = summary["methods"][method]
        flops = e["backward_flops"]["mean"]
        factor = "" if method == "none" else (f"{full / flops:,.0f}x less" if flops > 0 else "no backward")
        lines.append(_row([label, f"{e['accuracy']['mean']:.3f} ± {e['accuracy']['std']:.3f}",
                           *(f"{g[method]:.3f}" for _, g in groups),
                           f"{e['examples_used']['mean']:.1f}", f"{flops:.3g}", factor,
                           f"{e['seconds']['mean']:.1f} s"]))  # fmt: skip
    if "by_corpus" not in summary:
        return "\n".join(lines)
    lines += ["", *_head(["users", "n", "FaLA / re-training", "ceiling: before the swap / re-training",
                          "clustered - random (points)", "95% interval (t)", "95% interval (bootstrap)",
                          "better / worse / tied", "Wilcoxon p"])]  # fmt: skip
    entries = list(summary["by_corpus"].items())
    methods = summary["methods"]
    overall = {"n": summary["cluster_vs_random_paired"]["n_users"], "fala": methods["fala"]["accuracy"]["mean"],
               "retrain": methods["retrain"]["accuracy"]["mean"],
               "before_personal": summary["before_personal"]["mean"],
               "cluster_vs_random_paired": summary["cluster_vs_random_paired"]}  # fmt: skip
    for name, e in [*entries, ("**all**", overall)] if len(entries) > 1 else [("**all**", overall)]:
        t = e.get("cluster_vs_random_paired", {})
        lines.append(_row([name, str(e["n"]), f"{100 * e['fala'] / e['retrain']:.1f}%",
                           f"{100 * e['before_personal'] / e['retrain']:.1f}%",
                           f"{100 * t.get('mean_difference', 0.0):+.2f}", _interval(t.get("ci95_t")),
                           _interval(t.get("ci95_bootstrap")),
                           f"{t.get('users_better', 0)} / {t.get('users_worse', 0)} / {t.get('users_tied', 0)}",
                           f"{t['wilcoxon_p']:.2g}" if "wilcoxon_p" in t else ""]))  # fmt: skip
    return "\n".join(lines)


# --- device_runtime.json --------------------------------------------------------------------------------------

BACKENDS = {
    "torch": "torch (plain-torch top, one process)",
    "executorch": "executorch (Python bindings)",
    "executorch-cpp": "**executorch-cpp** (libedgetune_device's job called from Python, no torch)",
    "native": "**native** (libedgetune_device's job, a C program; its job time is the whole process)",
    "native-int8": "**native-int8** (the same with the int8 trunk, trunk.int8.pte: other features)",
    "torch-lora": "torch-lora (the LoRA candidate, rank 8, on the torch backend)",
    "native-lora": "**native-lora** (the same in libedgetune_device's driver, top_train_lora.pte; vs torch-lora)",
}


def device_runtime(res: Result) -> str:
    """The same configured job on each training backend: loss parity, accuracy, peak RSS, job time."""
    flops = res.get("throughput")  # GFLOP/s of the trunk and of training, against the machine's GEMM limit
    rate_column = [f"GFLOP/s trunk / training (GEMM limit {flops['gemm_limit_gflops']:.0f})"] if flops else []
    lines = _head(["backend", "loss vs torch, first 20 steps (max diff)", "held-out accuracy",
                   "peak RSS, median (max)", "job time, median", "vs torch", *rate_column])  # fmt: skip
    for backend, label in BACKENDS.items():
        if backend not in res["summary"]:  # a run before the library trained
            continue
        s = res["summary"][backend]
        accuracy = f"{100 * s['accuracy_mean']:.2f}"
        if s.get("accuracy_diff_points_max") == 0:
            accuracy += " (same on every user)"
        rss = f"{s['peak_tree_rss_mb_median']:.0f} MB"
        if backend in ("executorch-cpp", "native", "native-int8", "native-lora"):
            rss = f"**{rss}**"
        diff = s.get("max_loss_diff_first_20_steps")
        ratio = s.get("job_time_vs_torch_median", 1.0)
        rate = []
        if flops and backend in flops:
            t = flops[backend]
            rate = [f"{t['trunk_gflops_median']:.1f} / {t['train_gflops_median']:.1f} "
                    f"({100 * t['train_share_of_gemm_limit']:.0f}% of the limit)"]  # fmt: skip
        elif flops:
            rate = ["(LoRA: not counted)"]
        lines.append(_row([label, "" if diff is None else f"{diff:.1e}", accuracy,
                           f"{rss} ({s['peak_tree_rss_mb_max']:.0f})", f"{s['job_seconds_median']:.1f} s",
                           "1x" if "compared_with" not in s and backend in ("torch", "torch-lora") else f"{ratio:.2f}x",
                           *rate]))  # fmt: skip
    ops = res.get("training_program_ops")  # where top_train.pte's time goes (ETDump profile)
    if ops:
        shares = ", ".join(f"`{k.removesuffix('.out')}` {100 * v:.0f}%" for k, v in list(ops["share"].items())[:3])
        lines += ["", f"`top_train.pte`, one call of {ops['rows']} x {ops['width']} tokens "
                      f"({ops['planned_bytes'] / 1e6:.0f} MB memory plan): {sum(ops['ms_per_call'].values()):.0f} ms "
                      f"in its kernels, {shares}; `mm` at {ops['mm_gflops']:.1f} GFLOP/s."]  # fmt: skip
    return "\n".join(lines)


# --- fleet_scale.json -----------------------------------------------------------------------------------------


def fleet_scale(res: Result) -> str:
    """One row per timed run of the fleet: workers, throughput, wall time, per-user task time, load."""
    users = res["setting"]["users"]
    lines = _head(["run", "workers", "users/hour", f"wall, {users} users", "per-user task, median",
                   "load average before -> after"])  # fmt: skip
    for i, run in enumerate(res["runs"], 1):
        lines.append(_row([str(i), str(run["workers"]), f"{run['users_per_hour']:.0f}",
                           f"{run['wall_seconds']:.1f} s", f"{run['task_seconds']['median']:.1f} s",
                           f"{run['load_average_before'][0]:.1f} -> {run['load_average_after'][0]:.1f}"]))  # fmt: skip
    return "\n".join(lines)


# --- hadskip.json ---------------------------------------------------------------------------------------------


def hadskip(res: Result) -> str:
    """Full fine-tuning against HadSkip per budget: blocks kept, accuracy, exported trunk latency, speedup."""
    lines = _head(["model", "blocks executed", "test accuracy", "trunk latency batch 1", "speedup b1 / b8"])
    for name, r in res["results"].items():
        # kept_blocks counts from 1 (package schema 2); results measured earlier hold 0-based kept_layers
        kept = r["kept_blocks"] if "kept_blocks" in r else [i + 1 for i in r["kept_layers"]]
        accuracy = f"{100 * r['accuracy']:.2f}"
        b1 = f"{r['speedup_b1']:.2f}x"
        if name == "full":
            label = "full fine-tuning"
        else:
            label = f"HadSkip budget {r['budget']:g}"
            accuracy += f" ({r['accuracy_delta_points']:+.2f})"
            if r["budget"] == 0.5:  # the target's budget
                b1 = f"**{b1}**"
        latency, speedup = f"{1000 * r['latency_b1']['median_s']:.1f} ms", f"{b1} / {r['speedup_b8']:.2f}x"
        lines.append(_row([label, block_runs(kept), accuracy, latency, speedup]))
    return "\n".join(lines)


def block_runs(blocks: list[int]) -> str:
    """Block numbers as runs, ``[1, 5, 6]`` -> ``1, 5-6``: a skip set need not be contiguous."""
    runs: list[list[int]] = []
    for block in sorted(blocks):
        if runs and block == runs[-1][-1] + 1:
            runs[-1].append(block)
        else:
            runs.append([block])
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)


# --- rankmean.json --------------------------------------------------------------------------------------------

MERGES = {
    "single": "each task's own model",
    "other_blocks": "the other task's blocks",
    "rankmean": "RankMean (per block, as the reference code)",
    "rankmean_module": "RankMean per module",
    "average": "plain average",
    "task_arithmetic": "task arithmetic (lambda = 1)",
}
MERGED = ("rankmean", "rankmean_module", "average", "task_arithmetic")


def rankmean(res: Result) -> str:
    """Each task's accuracy with its own blocks, the other task's, and the merges; the best merge's mean in bold."""
    acc = res["summary_accuracy"]
    best = max((m for m in MERGED if m in acc), key=lambda m: acc[m]["mean"])
    lines = _head(["blocks", "topics", "sections", "mean"])
    for name, label in MERGES.items():
        if name not in acc:
            continue
        a = acc[name]
        mean = f"{100 * a['mean']:.2f}"
        lines.append(_row([label, f"{100 * a['topics']:.2f}", f"{100 * a['sections']:.2f}",
                           f"**{mean}**" if name == best else mean]))  # fmt: skip
    return "\n".join(lines)


RENDERERS = {
    "planner_study": planner_study,
    "tuners": tuners,
    "personalize_users": personalize_users,
    "backbone_swap": backbone_swap,
    "backbone_swap_mpnet_to_minilm": backbone_swap,
    "device_runtime": device_runtime,
    "fleet_scale": fleet_scale,
    "hadskip": hadskip,
    "rankmean": rankmean,
}
"""Table name (the README marker and the results file's stem) -> renderer."""
