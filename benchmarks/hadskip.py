"""HadSkip at inference budgets 0.5 and 0.75 vs full fine-tuning: accuracy and exported-trunk latency.

    python benchmarks/hadskip.py [--epochs 2] [--threads 2] [--out benchmarks/results]

all-MiniLM-L6-v2 + BBC news (stratified split, seed 0), max_length 128.
* full: every block + head fine-tuned (edgetune trainer, cut 0), all 6 blocks exported;
* hadskip-B: the whole model fine-tuned jointly with HadSkip gates at budget B
  (``edgetune skip``), exported with ``--skip-budget B`` (blocks the gates turn off are
  left out of the ONNX trunk).
Each model is exported as a device package whose trunk is the whole network (cut = L, the
top is the head only), so the trunk is all the inference compute. Accuracy: the package
(onnxruntime trunk + head) on the 445 test documents. Latency: that ONNX trunk in
onnxruntime, batch 1 and 8 at 128 tokens, same threads, blocks of calls alternating between
the models (``benchmarks/timing.py``).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from harness import hold_lock, load_average, machine_record, parser, write_figure, write_json
from timing import blocked  # benchmarks/timing.py: the script's directory is on sys.path

from device_sim.package import load_package
from device_sim.runtime import ort_session
from edgetune.api import load_model, plan
from edgetune.data import sample, stratified_split
from edgetune.datasets import bbc_news, minilm_path
from edgetune.finetune import finetune
from edgetune.skip import HadSkipConfig, hadskip_finetune
from edgetune.train import TrainConfig
from exporters.export import ExportOptions, export_package


def package_accuracy(pkg_dir: Path, test, threads: int) -> float:
    pkg = load_package(pkg_dir, threads=threads)
    logits = pkg.predict_logits(test.texts)
    labels = np.array([pkg.labels.index(y) for y in test.labels])
    return float((logits.argmax(1) == labels).mean())


def export_whole(classifier, encoder, train, out: Path, skip_budget: float | None) -> dict:
    """Package with the whole (kept) network in the ONNX trunk: plan cut = L."""
    p = plan((classifier.backbone, encoder), train, planner="topk", planner_params={"k": 0}, progress=False)
    result = export_package((classifier, encoder), p, out, options=ExportOptions(skip_budget=skip_budget))
    return result.manifest


def main() -> None:
    ap = parser(__doc__, seed=0)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.75])
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--train-limit", type=int, default=None, help="Smoke runs: train on this many examples.")
    args = ap.parse_args()
    hold_lock(args.lock)  # training and latencies are both timed
    torch.set_num_threads(args.threads)
    load_start = load_average()
    train, test = stratified_split(bbc_news(), 0.2, seed=0)
    if args.train_limit:
        train = sample(train, args.train_limit, seed=0)
    work = Path(tempfile.mkdtemp(prefix="hadskip-bench-"))
    rows: dict[str, dict] = {}

    start = time.perf_counter()
    backbone, encoder = load_model(minilm_path(), args.max_length)
    full_plan = plan((backbone, encoder), train, planner="full", progress=False)
    cfg = TrainConfig(epochs=args.epochs, batch_size=16, lr=5e-5, head_lr=1e-3, seed=args.seed, progress=False)
    result = finetune((backbone, encoder), full_plan, train, config=cfg)
    manifest = export_whole(result.classifier, encoder, train, work / "full", None)
    rows["full"] = {"train_seconds": time.perf_counter() - start, "kept_blocks": list(range(1, 7)), "budget": 1.0}
    print(f"full fine-tuning: {rows['full']['train_seconds']:.0f}s", flush=True)

    for budget in args.budgets:
        start = time.perf_counter()
        hs_cfg = HadSkipConfig(budget=budget, epochs=args.epochs, seed=args.seed)
        clf, enc, res = hadskip_finetune(minilm_path(), train, None, hs_cfg, args.max_length, progress=False)
        name = f"hadskip-{budget:g}"
        manifest = export_whole(clf, enc, train, work / name, budget)
        rows[name] = {
            "train_seconds": time.perf_counter() - start,
            "budget": budget,
            "kept_blocks": manifest["skip"]["kept_layers"],  # 1-based, as in the package
            "executed_fraction_train_end": res.executed_fraction,
            "mean_gate": res.mean_gate,
            "importance": res.importance,
        }
        print(f"{name}: keeps blocks {rows[name]['kept_blocks']}", flush=True)

    for name in rows:
        rows[name]["accuracy"] = package_accuracy(work / name, test, args.threads)
        print(f"{name}: package accuracy {rows[name]['accuracy']:.4f}", flush=True)

    ids, mask = encoder(test.texts[:8])  # BBC articles are longer than 128 tokens: full-length inputs
    sessions = {name: ort_session(work / name / "trunk.onnx", args.threads) for name in rows}
    for batch in (1, 8):
        feeds = {"input_ids": ids[:batch], "attention_mask": mask[:batch]}
        fns = {name: (lambda s=s, f=feeds: s.run(None, f)) for name, s in sessions.items()}
        stats = blocked(fns, args.repeats if batch == 1 else max(20, args.repeats // 5))
        for name in rows:
            rows[name][f"latency_b{batch}"] = stats[name]
            rows[name][f"speedup_b{batch}"] = stats["full"]["median_s"] / stats[name]["median_s"]

    for r in rows.values():
        r["accuracy_delta_points"] = 100 * (r["accuracy"] - rows["full"]["accuracy"])
    half = rows.get("hadskip-0.5")
    out = {
        "benchmark": "hadskip",
        "machine": machine_record(load_start, args.threads),
        "model": "all-MiniLM-L6-v2",
        "data": f"BBC news train {len(train)} / test {len(test)} (stratified, seed 0)",
        "epochs": args.epochs,
        "max_length": args.max_length,
        "results": rows,
        "target": "budget 0.5: >= 1.6x lower batch-1 latency within 2 points accuracy",
        "meets_target": bool(half and half["speedup_b1"] >= 1.6 and half["accuracy_delta_points"] >= -2.0),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "hadskip.json", out)
    plot(rows, args.out / "hadskip.png")
    print(json.dumps({n: {k: r[k] for k in ("accuracy", "speedup_b1", "speedup_b8")} for n, r in rows.items()}))


def plot(rows: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, r in rows.items():
        x = 1000 * r["latency_b1"]["median_s"]
        ax.scatter(x, 100 * r["accuracy"], s=60)
        ax.annotate(
            f"{name}\n{len(r['kept_blocks'])} blocks, {r['speedup_b1']:.2f}x",
            (x, 100 * r["accuracy"]),
            textcoords="offset points",
            xytext=(6, -4),
            fontsize=8,
        )
    ax.set_xlabel("ONNX trunk latency, batch 1 x 128 tokens (ms, median)")
    ax.set_ylabel("package accuracy on BBC test (%)")
    ax.set_title("HadSkip: accuracy vs latency (MiniLM-L6, onnxruntime, 2 threads)")
    write_figure(fig, path)


if __name__ == "__main__":
    main()
