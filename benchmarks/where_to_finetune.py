"""Where to fine-tune: every cut trained (the oracle sweep) against the planners' picks.

    flock /work/bench.lock python benchmarks/where_to_finetune.py [--epochs 2] [--seeds 0 1 2] [--device cpu]

Model all-MiniLM-L6-v2 (6 BERT blocks, d 384); data BBC news (2225 articles,
5 topics), stratified 80/20 split with seed 0 (train 1780, test 445);
max_length 128, batch 16, AdamW with linear warm-up (6%) and decay, blocks at
--lr, head at --head-lr, LoRA adapters (r 8 on query/value, all blocks) at
--lora-lr. Every cut k = 0..6 (train blocks k+1..6 + head; k = 0 is full
fine-tuning with frozen embeddings) is trained once per seed in cached mode;
a planner pick equal to a swept cut reuses that run. Test accuracy and
macro-F1 are means over seeds. Defaults (2 epochs, lr 5e-5, head lr 5e-3,
LoRA lr 5e-4) were chosen in a pilot on a validation split carved out of the
training split (the test split played no part): the head learns from scratch
and needs the larger rate (head-only training reached 91.3% at 1e-3 and 94.9%
at 5e-3), while full fine-tuning moved by less than 0.6 points between head
rates 2e-3 and 5e-3.

Measurements, each training configuration in a fresh worker process (so peak
memory belongs to that run alone):
* seconds per epoch: the training loop only (tokenization, cache building and
  evaluation excluded; the one-off cache build is reported separately);
  naive mode is timed over one full epoch per cut, cached over every epoch
  of every seed;
* peak memory: the process's resident set (VmRSS and its anonymous part
  RssAnon, sampled every 5 ms from /proc/self/status; ru_maxrss is the
  kernel's high-water mark since the process started) while the first seed
  trains; the cache build (or, in naive mode, tokenization) is sampled apart;
* cost model check: FLOPs of one training step with FlopCounterMode; memory as
  the tensors autograd saves (saved_tensors_hooks) + trainable weights,
  gradients and AdamW states after a real step + the feature cache's bytes,
  and, as a second method, the worker's RSS growth during training.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from harness import (  # benchmarks/harness.py: the script's directory is on sys.path
    PeakSampler,
    hold_lock,
    load_average,
    machine_record,
    parser,
    rss_mb,
    status_mb,
    write_figure,
    write_json,
)

MODEL = "all-MiniLM-L6-v2"
PLANNERS = ("salf", "topk", "gradnorm", "random", "full")


# -- memory sampling ----------------------------------------------------------------------------
def peak_memory() -> PeakSampler:
    """Peak VmRSS and RssAnon of this process, sampled by a thread every 5 ms (see :func:`memory_result`)."""
    return PeakSampler(lambda: {"peak_rss_mb": rss_mb(), "peak_anon_mb": status_mb("RssAnon")}, interval=0.005)


def memory_result(sampler: PeakSampler) -> dict[str, float]:
    """The sampled peaks plus the kernel's high-water mark, the memory record of every run."""
    return {**sampler.peak, "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


# -- shared setup ---------------------------------------------------------------------------------
def load_split():
    """The fixed stratified 80/20 BBC news split every process of the benchmark shares."""
    from edgetune.data import stratified_split
    from edgetune.datasets import bbc_news

    return stratified_split(bbc_news(), 0.2, seed=0)


def train_config(spec: dict[str, Any], seed: int):
    """A worker's TrainConfig from its JSON spec (the spec crosses the process boundary, a config does not)."""
    from edgetune.train import TrainConfig

    lr = spec["lora_lr"] if spec["tuner"] == "lora" else spec["lr"]
    return TrainConfig(
        mode=spec["mode"],
        epochs=spec["epochs"],
        batch_size=spec["batch_size"],
        lr=lr,
        head_lr=spec["head_lr"],
        seed=seed,
        cache=spec.get("cache", "memory"),
        cache_dtype=spec.get("cache_dtype", "float32"),
        cache_batch_size=spec.get("cache_batch_size", 64),
        release_trunk=spec.get("release_trunk", False),
        progress=False,
        device=spec["device"],
    )


def tuner_for(spec: dict[str, Any]):
    """LoRA or full tuning, as the spec says."""
    from edgetune.tuners import get_tuner

    return get_tuner("lora", r=spec["lora_r"]) if spec["tuner"] == "lora" else get_tuner("full")


# -- worker: one training configuration in a fresh process --------------------------------------
def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Train ``spec`` for every seed; time epochs; sample memory while the first seed trains."""
    torch.set_num_threads(spec["threads"])
    from edgetune.api import load_model
    from edgetune.datasets import minilm_path
    from edgetune.train import Trainer

    train, test = load_split()
    label_map = train.label_map()
    y_train, y_test = train.encoded_labels(label_map), test.encoded_labels(label_map)
    out: dict[str, Any] = {"spec": spec, "seeds": []}
    train_src = test_src = None
    for i, seed in enumerate(spec["seeds"]):
        backbone, encoder = load_model(minilm_path(), spec["max_length"])
        trainer = Trainer(
            backbone, encoder, spec["cut"], label_map, tuner_for(spec), train_config(spec, seed), model_hash=MODEL
        )
        if i == 0:
            rss_before = rss_mb()
            with peak_memory() as build:
                start = time.perf_counter()
                train_src = trainer.source(train)
                out["cache_seconds"] = time.perf_counter() - start
            with peak_memory() as memory:
                result = trainer.fit(train_src, y_train)
            out["memory"] = {**memory_result(memory), "rss_before_mb": rss_before}
            out["memory_build"] = memory_result(build)
            if torch.cuda.is_available() and spec["device"] != "cpu":
                out["memory"]["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
            out["cache_bytes"] = result.cache_bytes
            out["trainable_params"] = result.trainable_params
        else:
            result = trainer.fit(train_src, y_train)
        row = {"seed": seed, "history": result.history}
        if spec.get("evaluate", True):
            test_src = test_src if (test_src is not None and spec["mode"] == "cached") else trainer.source(test, "test")
            row["test"] = trainer.evaluate(test_src, y_test)
        if spec.get("delta_path"):
            from safetensors.torch import save_file

            save_file(result.delta, spec["delta_path"])
        out["seeds"].append(row)
    return out


def run_worker(spec: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """Run :func:`worker` in a fresh Python process (clean peak-memory numbers).

    The 1-minute load average before and after is kept: above the thread count,
    another process shared the CPU and the timings are not to be trusted.
    """
    spec_path, out_path = tmp / "spec.json", tmp / "out.json"
    spec_path.write_text(json.dumps(spec))
    start, load = time.perf_counter(), os.getloadavg()[0]
    subprocess.run([sys.executable, __file__, "--worker", str(spec_path), str(out_path)], check=True)
    result = json.loads(out_path.read_text())
    result["wall_seconds"] = time.perf_counter() - start
    result["loadavg_1min"] = [load, os.getloadavg()[0]]
    return result


def retime(args, base: dict[str, Any], runs: dict[str, Any], cuts: list[int]) -> dict[str, Any]:
    """Measure again, side by side, the naive and cached epoch (timing and memory) of ``cuts``.

    For runs another process disturbed; accuracies stay those of the full runs.
    """
    with tempfile.TemporaryDirectory(prefix="where-to-finetune-") as tmp:
        for k in cuts:
            spec = {**base, "cut": k, "tuner": "full", "seeds": [args.seeds[0]], "evaluate": False, "epochs": 1}
            runs[f"naive{k}"] = {**run_worker({**spec, "mode": "naive"}, Path(tmp)), "retimed": True}
            runs[f"cut{k}"]["timing"] = run_worker({**spec, "mode": "cached"}, Path(tmp))
            print(f"retimed cut {k}", flush=True)
    return runs


# -- planners and the cost model ------------------------------------------------------------------
def plan_all(args, train) -> dict[str, Any]:
    """Every planner's pick and time, and the cost model's estimate of every cut and of LoRA."""
    from edgetune.api import load_model, plan
    from edgetune.datasets import minilm_path
    from edgetune.planner import ArchSummary, CostConfig, estimate_all, estimate_cut
    from edgetune.tuners import get_tuner

    backbone, encoder = load_model(minilm_path(), args.max_length)
    cost = CostConfig(seq_len=args.max_length, batch_size=args.batch_size, num_examples=len(train), epochs=args.epochs)
    picks, seconds, plans = {}, {}, {}
    for name in PLANNERS:
        start = time.perf_counter()
        p = plan((backbone, encoder), train, planner=name, cost=cost, progress=False)
        seconds[name], picks[name], plans[name] = time.perf_counter() - start, p.cut, p
        print(f"planner {name:9s} cut {p.cut}  ({seconds[name]:.1f}s)", flush=True)
    arch = ArchSummary.from_backbone(backbone, len(train.label_map()))
    lora = get_tuner("lora", r=args.lora_r).cost_profile(backbone.blocks[0], backbone.config.model_type)
    return {
        "picks": picks,
        "seconds": seconds,
        "salf": plans["salf"].to_dict(),
        "costs": [c.to_dict() for c in estimate_all(arch, cost)],
        "lora_cost": estimate_cut(arch, cost, 0, lora).to_dict(),
        "arch": arch,
        "cost_config": cost,
        "lora_profile": lora,
    }


def full_length_batch(args, train, encoder) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Up to one batch of rows that fill ``max_length`` (no padding), so measurement and the cost model see the
    same sequence length. Returns (ids, mask, labels)."""
    ids, mask = encoder(train.texts[: args.batch_size * 4])
    full = np.flatnonzero(mask.sum(axis=1) == args.max_length)[: args.batch_size]  # a batch of full-length rows
    labels = torch.from_numpy(train.encoded_labels(train.label_map())[full])
    return torch.from_numpy(ids[full]), torch.from_numpy(mask[full]), labels


def measure_run(args, backbone, num_labels: int, key: str, ids_t, mask_t, labels) -> tuple[Any, float, int]:
    """One real training step of run ``key`` from the same seed: its measurements, the trunk's forward FLOPs and
    the bytes of frozen weights inside the top (LoRA's base weights)."""
    from edgetune.measure import measure_step, trunk_forward_flops
    from edgetune.modeling import SequenceClassifier
    from edgetune.tuners import get_tuner

    torch.manual_seed(0)
    cut = 0 if key == "lora" else int(key[3:])
    clf = SequenceClassifier(backbone, num_labels)
    tuner = get_tuner("lora", r=args.lora_r) if key == "lora" else get_tuner("full")
    top = tuner.prepare(clf, cut)
    with torch.no_grad():
        hidden = clf.trunk_forward(ids_t, mask_t, cut)
    trunk = trunk_forward_flops(lambda c=clf, k=cut: c.trunk_forward(ids_t, mask_t, k), len(ids_t))
    optimizer = torch.optim.AdamW(list(tuner.trainable_parameters(top).values()), lr=1e-5)
    m = measure_step(top, hidden, mask_t, labels, optimizer, owner=clf)
    frozen_in_top = sum(4 * p.numel() for p in top.parameters() if not p.requires_grad)  # LoRA base weights
    tuner.merge(top)
    return m, trunk, frozen_in_top


def frozen_weight_bytes(backbone, cut: int) -> int:
    """fp32 bytes of the embeddings and the blocks below ``cut``: what naive mode keeps in memory and cached drops."""
    return 4 * (
        sum(p.numel() for p in backbone.embeddings.parameters())
        + sum(p.numel() for b in list(backbone.blocks)[:cut] for p in b.parameters())
    )


def cost_row(key: str, cut: int, cached, naive, m, trunk: float, frozen_in_top: int, frozen_bytes: int,
             run: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """Predicted against measured for one run: FLOPs, activations, training state, cache, frozen weights, memory."""
    measured_state = m.trainable_bytes + m.gradient_bytes + m.optimizer_bytes
    predicted_state = sum(cached.memory_bytes[k] for k in ("trainable_weights", "gradients", "adam_states"))
    return {
        "run": key,
        "cut": cut,
        "forward_flops": {"predicted": cached.forward_flops, "measured": trunk + m.forward_flops},
        "backward_flops": {"predicted": cached.backward_flops, "measured": m.backward_flops},
        "activation_bytes": {"predicted": cached.memory_bytes["activations"], "measured": m.activation_bytes},
        "train_state_bytes": {"predicted": predicted_state, "measured": measured_state},
        "cached_features_bytes": {
            "predicted": cached.memory_bytes["cached_features"],
            "measured": run["cache_bytes"],
        },
        "frozen_weight_bytes_naive": {
            "predicted": naive.memory_bytes["frozen_weights"],
            "measured": frozen_bytes,
        },
        "train_memory_cached": {
            "predicted": sum(cached.memory_bytes.values()),
            "measured": measured_state + frozen_in_top + m.activation_bytes + run["cache_bytes"],
        },
        "rss_growth_cached": {
            "predicted": sum(cached.memory_bytes[k] for k in ("gradients", "adam_states", "activations"))
            + cached.memory_bytes["cached_features"],
            "measured": (run["memory"]["peak_rss_mb"] - run["memory"]["rss_before_mb"]) * 2**20,
        },
    }


def cost_check(args, train, planned: dict[str, Any], runs: dict[str, Any]) -> list[dict[str, Any]]:
    """Predicted vs measured FLOPs and memory of one training step at every cut (and LoRA on all blocks)."""
    from dataclasses import replace

    from edgetune.api import load_model
    from edgetune.datasets import minilm_path
    from edgetune.planner import estimate_cut

    backbone, encoder = load_model(minilm_path(), args.max_length)
    ids_t, mask_t, labels = full_length_batch(args, train, encoder)
    cfg = replace(planned["cost_config"], batch_size=len(ids_t))
    rows = []
    for key in [f"cut{k}" for k in range(backbone.num_layers + 1)] + ["lora"]:
        m, trunk, frozen_in_top = measure_run(args, backbone, len(train.label_map()), key, ids_t, mask_t, labels)
        cut = 0 if key == "lora" else int(key[3:])
        profile = planned["lora_profile"] if key == "lora" else None
        cached = estimate_cut(planned["arch"], cfg, cut, profile)
        naive = estimate_cut(planned["arch"], replace(cfg, cached=False), cut, profile)
        row = cost_row(key, cut, cached, naive, m, trunk, frozen_in_top, frozen_weight_bytes(backbone, cut), runs[key])
        rows.append(row)
        for name in ("forward_flops", "backward_flops", "activation_bytes", "train_memory_cached"):
            pair = row[name]
            pair["error"] = pair["predicted"] / pair["measured"] - 1 if pair["measured"] else None
        print(
            f"cost check {key}: bwd {row['backward_flops']['error']:+.1%}, "
            f"act {row['activation_bytes']['error']:+.1%}, mem {row['train_memory_cached']['error']:+.1%}",
            flush=True,
        )
    for row in rows:
        pair = row["rss_growth_cached"]
        pair["error"] = pair["predicted"] / pair["measured"] - 1
    return rows


# -- summarising ------------------------------------------------------------------------------
def summarize_run(run: dict[str, Any]) -> dict[str, Any]:
    """Accuracy over seeds, and epoch time and memory from the re-timed run when there is one."""
    acc = [s["test"]["accuracy"] for s in run["seeds"]]
    f1 = [s["test"]["macro_f1"] for s in run["seeds"]]
    timed = run.get("timing", run)  # a re-measured epoch replaces a disturbed one
    epochs = [h["seconds"] for s in timed["seeds"] for h in s["history"]]
    return {
        "accuracy": float(np.mean(acc)),
        "accuracy_std": float(np.std(acc)),
        "macro_f1": float(np.mean(f1)),
        "macro_f1_std": float(np.std(f1)),
        "accuracy_per_seed": acc,
        "macro_f1_per_seed": f1,
        "cached_epoch_seconds": float(np.mean(epochs)),
        "cache_seconds": timed["cache_seconds"],
        "trainable_params": run["trainable_params"],
        "memory_cached": timed["memory"],
        "memory_cache_build": timed["memory_build"],
        "retimed": "timing" in run,
        "loadavg_1min": timed.get("loadavg_1min"),
    }


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both cost (lower) and accuracy (higher)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -np.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def regret(cut: int, table: dict[int, dict[str, Any]]) -> float:
    """Best accuracy among cuts at most as costly as ``cut`` (cut' >= cut) minus the accuracy at ``cut``."""
    best = max(table[k]["accuracy"] for k in table if k >= cut)
    return best - table[cut]["accuracy"]


PLANNER_MARKERS = {
    "salf": ("*", "red", 260),
    "topk": ("v", "C1", 90),
    "gradnorm": ("^", "C4", 90),
    "random": ("s", "C5", 70),
    "full": ("P", "C3", 90),
}
"""Marker, colour and size of each planner's pick in the accuracy-vs-cost figure."""


def plot(results: dict[str, Any], out: Path) -> None:
    """The three figures: accuracy against cost, cached against naive, the cost model against measurement."""
    import matplotlib

    matplotlib.use("Agg")

    plot_accuracy_vs_cost(results, out)
    plot_cached_vs_naive(results, out)
    plot_cost_check(results, out)


def plot_accuracy_vs_cost(results: dict[str, Any], out: Path) -> None:
    """Accuracy of every cut and of LoRA against backward FLOPs, the Pareto front, and where each planner picked."""
    import matplotlib.pyplot as plt

    cuts = results["cuts"]
    ks = sorted(int(k) for k in cuts)
    x = [100 * cuts[str(k)]["backward_frac"] for k in ks]
    acc = [100 * cuts[str(k)]["accuracy"] for k in ks]
    err = [100 * cuts[str(k)]["accuracy_std"] for k in ks]
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.errorbar(x, acc, yerr=err, fmt="o", color="C0", capsize=3, label="cut k: train blocks k+1..6 + head")
    for k, xi, yi in zip(ks, x, acc):
        ax.annotate(f"k={k}", (xi, yi), textcoords="offset points", xytext=(6, -12), fontsize=8)
    lora = results["lora_all"]
    ax.errorbar(
        [100 * lora["backward_frac"]],
        [100 * lora["accuracy"]],
        yerr=[100 * lora["accuracy_std"]],
        fmt="D",
        color="C2",
        capsize=3,
        label="LoRA r=8, all blocks",
    )
    pts = [(xi, yi) for xi, yi in zip(x, acc)] + [(100 * lora["backward_frac"], 100 * lora["accuracy"])]
    front = sorted(pareto_front(pts), key=lambda i: pts[i][0])
    ax.step(
        [pts[i][0] for i in front],
        [pts[i][1] for i in front],
        where="post",
        color="grey",
        ls="--",
        lw=1,
        label="Pareto front",
    )
    plot_planner_picks(ax, results["planners"], cuts)
    ax.set_xlabel("backward FLOPs, % of full fine-tuning (cost model)")
    ax.set_ylabel("test accuracy, % (mean ± std over seeds)")
    ax.set_title(f"{MODEL} on BBC news: where to fine-tune ({len(results['seeds'])} seeds, {results['epochs']} epochs)")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    write_figure(fig, out / "where_to_finetune.png")


def plot_planner_picks(ax, planners: dict[str, Any], cuts: dict[str, Any]) -> None:
    """Each planner's pick on the sweep's point for that cut (SALF filled, the others hollow)."""
    for name, info in planners.items():
        m, color, size = PLANNER_MARKERS[name]
        k = info["cut"]
        ax.scatter(
            [100 * cuts[str(k)]["backward_frac"]],
            [100 * cuts[str(k)]["accuracy"]],
            marker=m,
            s=size,
            facecolors="none" if name != "salf" else color,
            edgecolors=color,
            zorder=5,
            label=f"{name} pick (k={k})",
        )


def plot_cached_vs_naive(results: dict[str, Any], out: Path) -> None:
    """Seconds per epoch and peak memory per cut, naive against cached (and the fp16 memory-mapped cache)."""
    import matplotlib.pyplot as plt

    cuts = results["cuts"]
    ks = sorted(int(k) for k in cuts)
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 4.5))
    naive = [cuts[str(k)]["naive_epoch_seconds"] for k in ks]
    cached = [cuts[str(k)]["cached_epoch_seconds"] for k in ks]
    w = 0.38
    ax_t.bar([k - w / 2 for k in ks], naive, w, label="naive (trunk every step)", color="C1")
    ax_t.bar([k + w / 2 for k in ks], cached, w, label="cached (trunk once)", color="C0")
    for k, a, b in zip(ks, naive, cached):
        ax_t.text(k, max(a, b), f"{a / b:.1f}x", ha="center", va="bottom", fontsize=8)
    ax_t.set_xlabel("cut k")
    ax_t.set_ylabel("seconds per epoch")
    ax_t.set_title(f"cached vs naive freezing ({results['machine']['threads']} CPU threads; label: speedup)")
    ax_t.legend(fontsize=8)
    plot_peak_memory(ax_m, results, ks)
    fig.subplots_adjust(wspace=0.3)
    write_figure(fig, out / "cached_vs_naive.png")


def plot_peak_memory(ax_m, results: dict[str, Any], ks: list[int]) -> None:
    """Peak RSS and anonymous memory per cut, naive against cached, with the fp16 memory-mapped run as a star."""
    cuts = results["cuts"]
    ax_m.plot(ks, [cuts[str(k)]["memory_naive"]["peak_rss_mb"] for k in ks], "o-", color="C1", label="naive peak RSS")
    ax_m.plot(
        ks,
        [cuts[str(k)]["memory_cached"]["peak_rss_mb"] for k in ks],
        "o-",
        color="C0",
        label="cached (fp32, in memory) peak RSS",
    )
    anon_naive = [cuts[str(k)]["memory_naive"]["peak_anon_mb"] for k in ks]
    ax_m.plot(ks, anon_naive, "x--", color="C1", label="naive peak anon")
    ax_m.plot(
        ks, [cuts[str(k)]["memory_cached"]["peak_anon_mb"] for k in ks], "x--", color="C0", label="cached peak anon"
    )
    if results.get("fp16_mmap"):
        v = results["fp16_mmap"]
        ax_m.scatter(
            [v["cut"]],
            [v["memory_cached"]["peak_anon_mb"]],
            marker="*",
            s=150,
            color="C2",
            zorder=5,
            label="cached fp16 memory-mapped, trunk released: peak anon",
        )
    ax_m.set_xlabel("cut k")
    ax_m.set_ylabel("MB")
    ax_m.set_title("peak memory of the training process")
    ax_m.legend(fontsize=7)


def plot_cost_check(results: dict[str, Any], out: Path) -> None:
    """Cost model against measurement per run: backward FLOPs, saved activations, training memory."""
    import matplotlib.pyplot as plt

    rows = results["cost_check"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    names = [r["run"] for r in rows]
    for ax, key, title in zip(
        axes,
        ("backward_flops", "activation_bytes", "train_memory_cached"),
        ("backward FLOPs per example", "activations saved per step", "training memory (cached)"),
    ):
        ax.bar([i - 0.2 for i in range(len(rows))], [r[key]["predicted"] for r in rows], 0.4, label="cost model")
        ax.bar([i + 0.2 for i in range(len(rows))], [r[key]["measured"] for r in rows], 0.4, label="measured")
        ax.set_xticks(range(len(rows)), names, rotation=45, fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle("cost model vs measurement (FlopCounterMode; saved-tensor hooks + optimizer state + cache bytes)")
    write_figure(fig, out / "cost_model_check.png")


def train_all(args, base: dict[str, Any], planned: dict[str, Any], salf_cut: int) -> dict[str, Any]:
    """Every training run of the benchmark, each in a fresh worker process."""
    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="where-to-finetune-") as tmp:
        tmp_path = Path(tmp)
        for k in range(len(planned["costs"])):
            spec = {**base, "cut": k, "tuner": "full", "mode": "naive", "seeds": [args.seeds[0]], "evaluate": False}
            spec["epochs"] = 1  # naive mode is timed over one full epoch
            runs[f"naive{k}"] = run_worker(spec, tmp_path)
            runs[f"cut{k}"] = run_worker({**base, "cut": k, "tuner": "full", "mode": "cached"}, tmp_path)
            print(
                f"cut {k}: acc {summarize_run(runs[f'cut{k}'])['accuracy']:.4f}; epoch naive "
                f"{runs[f'naive{k}']['seeds'][0]['history'][0]['seconds']:.1f}s, cached "
                f"{summarize_run(runs[f'cut{k}'])['cached_epoch_seconds']:.1f}s",
                flush=True,
            )
        runs["lora"] = run_worker({**base, "cut": 0, "tuner": "lora", "mode": "cached"}, tmp_path)
        fp16 = {**base, "cut": salf_cut, "tuner": "full", "mode": "cached", "cache": "mmap", "cache_dtype": "float16"}
        fp16.update(release_trunk=True, cache_batch_size=args.batch_size)  # trunk transients as small as naive
        runs["fp16_mmap"] = run_worker(fp16, tmp_path)
        # naive and cached train the same model on the real data too: one epoch each at the SALF cut
        same = {**base, "cut": salf_cut, "tuner": "full", "epochs": 1, "seeds": [0], "evaluate": False}
        from safetensors.torch import load_file

        pair = {}
        for mode in ("naive", "cached"):
            path = str(tmp_path / f"{mode}.safetensors")
            pair[mode] = (run_worker({**same, "mode": mode, "delta_path": path}, tmp_path), load_file(path))
        runs["same_model"] = {
            "cut": salf_cut,
            "max_abs_weight_diff": max(
                float((pair["naive"][1][k] - pair["cached"][1][k]).abs().max()) for k in pair["naive"][1]
            ),
            "epoch1_loss": [pair[m][0]["seeds"][0]["history"][0]["loss"] for m in ("naive", "cached")],
        }
    return runs


# -- main ---------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    """The common benchmark options, the training settings, raw-run reuse, and the hidden worker entry point."""
    ap = parser(__doc__)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--head-lr", type=float, default=5e-3)
    ap.add_argument("--lora-lr", type=float, default=5e-4)
    ap.add_argument("--lora-r", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--runs", type=Path, help="Keep the raw training runs here (and reuse them if present).")
    ap.add_argument(
        "--retime",
        type=int,
        nargs="+",
        metavar="CUT",
        help="With --runs: measure these cuts' naive and cached epochs again (runs another process disturbed).",
    )
    ap.add_argument("--worker", nargs=2, type=Path, help=argparse.SUPPRESS)
    return ap.parse_args()


def training_runs(args, base: dict[str, Any], planned: dict[str, Any], salf_cut: int) -> dict[str, Any]:
    """The raw training runs: reused from ``--runs`` (re-timing the cuts of ``--retime``) or trained now, and kept
    there when asked, so the summary can be redone without retraining."""
    runs: dict[str, Any] = json.loads(args.runs.read_text()) if args.runs and args.runs.exists() else {}
    if runs:
        print(f"reusing the training runs in {args.runs}", flush=True)
        if args.retime:
            runs = retime(args, base, runs, args.retime)
            write_json(args.runs, runs)
    else:
        runs = train_all(args, base, planned, salf_cut)
        if args.runs:
            write_json(args.runs, runs)
    return runs


def cut_table(args, costs: list[dict[str, Any]], runs: dict[str, Any]) -> dict[str, Any]:
    """Per cut: accuracy, epoch times and memory of the naive and cached runs next to the cost model's prediction."""
    cuts: dict[str, Any] = {}
    for k, c in enumerate(costs):
        s = summarize_run(runs[f"cut{k}"])
        naive_epoch = runs[f"naive{k}"]["seeds"][0]["history"][0]["seconds"]
        total_cached = s["cache_seconds"] + args.epochs * s["cached_epoch_seconds"]
        cuts[str(k)] = {
            **s,
            "backward_frac": c["backward_frac"],
            "train_memory_mb_predicted": c["train_memory_mb"],
            "naive_epoch_seconds": naive_epoch,
            "speedup_per_epoch": naive_epoch / s["cached_epoch_seconds"],
            "speedup_whole_job": args.epochs * naive_epoch / total_cached,
            "naive_retimed": runs[f"naive{k}"].get("retimed", False),
            "naive_loadavg_1min": runs[f"naive{k}"].get("loadavg_1min"),
            "memory_naive": runs[f"naive{k}"]["memory"],
            "memory_naive_tokenize": runs[f"naive{k}"]["memory_build"],
        }
    return cuts


def planner_table(planned: dict[str, Any], table: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Each planner's pick scored by the oracle sweep: its accuracy, cost and regret."""
    return {
        name: {
            "cut": cut,
            "seconds": planned["seconds"][name],
            "accuracy": table[cut]["accuracy"],
            "macro_f1": table[cut]["macro_f1"],
            "backward_frac": table[cut]["backward_frac"],
            "regret": regret(cut, table),
        }
        for name, cut in planned["picks"].items()
    }


def memory_target(top1: dict, top2: dict, at_salf: dict, fp16_run: dict) -> dict[str, Any]:
    """Peak memory naive vs cached: the in-memory fp32 cache at the top cuts, and the fp16 memory-mapped cache with
    the trunk released at the SALF cut."""
    return {
        "in_memory_fp32_cache_rss_mb_naive_vs_cached": {
            "top1": [top1["memory_naive"]["peak_rss_mb"], top1["memory_cached"]["peak_rss_mb"]],
            "top2": [top2["memory_naive"]["peak_rss_mb"], top2["memory_cached"]["peak_rss_mb"]],
        },
        "fp16_mmap_trunk_released_at_salf_mb_naive_vs_cached": {
            "rss": [at_salf["memory_naive"]["peak_rss_mb"], fp16_run["memory_cached"]["peak_rss_mb"]],
            "anon": [at_salf["memory_naive"]["peak_anon_mb"], fp16_run["memory_cached"]["peak_anon_mb"]],
            "cache_build_rss": fp16_run["memory_cache_build"]["peak_rss_mb"],
            "cache_build_anon": fp16_run["memory_cache_build"]["peak_anon_mb"],
        },
        "met_in_memory_fp32": top1["memory_cached"]["peak_rss_mb"] < top1["memory_naive"]["peak_rss_mb"],
        "met_fp16_mmap_trunk_released": fp16_run["memory_cached"]["peak_rss_mb"]
        < at_salf["memory_naive"]["peak_rss_mb"],
    }


def targets_met(table: dict[int, dict], planners: dict, fp16_run: dict, salf_cut: int, checks: list) -> dict:
    """Each target of the benchmark with the value that decides it: SALF against full tuning and the sweep, cached
    against naive speed and memory, the cost model against measurement."""
    full_ft = table[0]
    salf = planners["salf"]
    top1, top2 = table[len(table) - 2], table[len(table) - 3]
    targets = {
        "salf_within_1pt_of_full": {
            "value_points": 100 * (full_ft["accuracy"] - salf["accuracy"]),
            "met": full_ft["accuracy"] - salf["accuracy"] <= 0.01,
        },
        "salf_backward_at_most_40pct": {"value": salf["backward_frac"], "met": salf["backward_frac"] <= 0.40},
        "salf_regret_at_most_0.5pt": {"value_points": 100 * salf["regret"], "met": salf["regret"] <= 0.005},
        "cached_3x_faster_top1_or_top2": {
            "top1": top1["speedup_per_epoch"],
            "top2": top2["speedup_per_epoch"],
            "met": max(top1["speedup_per_epoch"], top2["speedup_per_epoch"]) >= 3.0,
        },
        "cached_lower_peak_memory": memory_target(top1, top2, table[salf_cut], fp16_run),
        "cost_model_within_25pct": {
            name: max(abs(r[name]["error"]) for r in checks if r[name]["error"] is not None)
            for name in ("forward_flops", "backward_flops", "activation_bytes", "train_memory_cached")
        },
    }
    targets["cost_model_within_25pct"]["met"] = all(v <= 0.25 for v in targets["cost_model_within_25pct"].values())
    return targets


def main() -> None:
    """Plan, train every cut (or reuse the runs), check the cost model, then write the record and the figures."""
    args = parse_args()
    if args.worker:
        spec_path, out_path = args.worker
        out_path.write_text(json.dumps(worker(json.loads(spec_path.read_text()))))
        return
    hold_lock(args.lock)  # the parent only: its workers run while it holds the lock
    load_start = load_average()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    train, test = load_split()
    planned = plan_all(args, train)
    salf_cut = planned["picks"]["salf"]
    base = {k: getattr(args, k) for k in ("epochs", "max_length", "batch_size", "lr", "head_lr", "lora_lr", "lora_r")}
    base.update(threads=args.threads, device=args.device, seeds=args.seeds)

    runs = training_runs(args, base, planned, salf_cut)
    same_model = runs.pop("same_model")
    checks = cost_check(args, train, planned, runs)

    cuts = cut_table(args, planned["costs"], runs)
    table = {int(k): v for k, v in cuts.items()}
    lora = {**summarize_run(runs["lora"]), "backward_frac": planned["lora_cost"]["backward_frac"]}
    fp16_run = {**summarize_run(runs["fp16_mmap"]), "cut": salf_cut}
    planners = planner_table(planned, table)
    targets = targets_met(table, planners, fp16_run, salf_cut, checks)
    results = {
        "benchmark": "where_to_finetune",
        "machine": machine_record(load_start, args.threads, device=args.device),
        "model": MODEL,
        "data": f"BBC news, stratified 80/20 split seed 0: train {len(train)}, test {len(test)}",
        **{k: v for k, v in base.items() if k not in ("threads", "device")},
        "planners": planners,
        "cuts": cuts,
        "lora_all": lora,
        "fp16_mmap": fp16_run,
        "naive_vs_cached_same_model": same_model,
        "salf_plan_rows": planned["salf"]["rows"],
        "cost_check": checks,
        "targets": targets,
        "total_seconds": time.perf_counter() - started,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "where_to_finetune.json", results)
    plot(results, args.out)
    print(json.dumps(targets, indent=2))
    print(f"total {results['total_seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
