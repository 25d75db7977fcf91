"""Device package on the real model: fidelity, onnxruntime vs torch eager trunk speed, int8 size and accuracy.

    flock /work/bench.lock python benchmarks/export_ort.py [--threads 2] [--out benchmarks/results]

Model: all-MiniLM-L6-v2; data: BBC news, stratified 80/20 split (seed 0); max_length 128.

1. Plan with SALF on the train split (its cut l*), export the package from the plain model with a
   logistic head probe fitted on the train split, int8 trunk validated on the whole test split.
2. Fidelity: package (trunk in onnxruntime + top in torch) vs the source model (whole model in torch
   eager, same head) on all 445 test documents: argmax agreement and max abs logit difference.
3. Speed: the trunk at the SALF cut and the full 6-layer trunk; torch eager (inference_mode) vs
   onnxruntime fp32 vs onnxruntime int8, batch 1 and 32, 128 real tokens per sequence (no padding),
   the same thread count on both sides. Each side runs in blocks of consecutive calls, the blocks
   alternating over ten rounds (see ``blocked``); speedups are ratios of the medians of all calls.
   Also onnxruntime fp32 after the onnxscript transformer fusions (attention, skip-layer-norm,
   bias-gelu), as a check that graph fusion is not what is missing. The 1-minute load average
   before and after the timings is recorded (the machine is shared).
4. int8 size: the shipped int8 trunk (MatMul + embedding Gather) and, to show why the Gather matters,
   a MatMul-only variant; the word-embedding table's share of the fp32 trunk.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from timing import blocked, cpu_name  # benchmarks/timing.py: the script's directory is on sys.path

from device_sim.package import load_package
from device_sim.runtime import map_batches, ort_session
from edgetune.api import load_model, plan
from edgetune.data import LabelMap, stratified_split
from edgetune.datasets import bbc_news, minilm_path
from edgetune.io import atomic_write_json
from edgetune.modeling import SequenceClassifier
from edgetune.report import save_figure
from exporters.export import ExportOptions, export_package
from exporters.onnx_trunk import TrunkModule, export_trunk, verify_trunk
from exporters.quantize import Int8Config, quantize_trunk, size_of


def fused_copy(src: Path, dst: Path) -> Path:
    """The fp32 trunk after onnxscript's onnxruntime fusions (MultiHeadAttention, SkipLayerNorm, BiasGelu)."""
    import onnx
    import onnx_ir as ir
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    model = ir.from_proto(onnx.load(str(src)))
    optimize_for_ort(model)
    onnx.save(ir.to_proto(model), str(dst))
    return dst


def speed(classifier, cut: int, files: dict[str, Path], batches: dict[int, tuple], threads: int, repeats: dict) -> dict:
    trunk = TrunkModule(classifier, cut).eval()
    sessions = {name: ort_session(path, threads) for name, path in files.items()}
    out = {}
    for bs, (ids, mask) in batches.items():
        ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
        feeds = {"input_ids": ids, "attention_mask": mask}

        def torch_call(ids_t=ids_t, mask_t=mask_t):
            with torch.inference_mode():
                trunk(ids_t, mask_t)

        fns = {"torch_eager": torch_call}
        for name, session in sessions.items():
            fns[name] = lambda session=session, feeds=feeds: session.run(["hidden_state"], feeds)
        stats = blocked(fns, repeats[bs])
        base = stats["torch_eager"]["median_s"]
        for name in sessions:
            stats[name]["speedup_vs_torch"] = base / stats[name]["median_s"]
        out[f"batch_{bs}"] = stats
        line = ", ".join(f"{n} {s['median_s'] * 1e3:.1f} ms" for n, s in stats.items())
        print(f"  cut {cut} batch {bs}: {line}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--repeats-b1", type=int, default=60)
    ap.add_argument("--repeats-b32", type=int, default=12)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    train, test = stratified_split(bbc_news(), 0.2, seed=0)
    backbone, encoder = load_model(minilm_path(), args.max_length)
    the_plan = plan((backbone, encoder), train, planner="salf", progress=False)
    cut = the_plan.cut
    print(f"SALF plan: cut {cut} ({the_plan.seconds:.1f}s)", flush=True)

    work = Path(tempfile.mkdtemp(prefix="export_ort-"))
    options = ExportOptions(int8=True, threads=args.threads, batch_size=32)
    result = export_package(minilm_path(), the_plan, work / "pkg", data=train, val_data=test, options=options,
                            log=print)  # fmt: skip
    m = result.manifest

    # -- fidelity on the whole test split ------------------------------------------------------------
    pkg = load_package(result.path, threads=args.threads)
    package_logits = pkg.predict_logits(test.texts, batch_size=32)
    source = SequenceClassifier(backbone, len(m["labels"]), m["labels"]).eval()
    top = pkg.top_model()
    source.head.load_state_dict(top.head.state_dict())

    def source_fn(ids, mask):
        with torch.inference_mode():
            return source(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()

    source_logits = map_batches(pkg.encoder, test.texts, source_fn, 32)
    labels = test.encoded_labels(LabelMap(tuple(m["labels"])))
    fidelity = {
        "num_examples": len(test),
        "argmax_agreement": float((package_logits.argmax(1) == source_logits.argmax(1)).mean()),
        "max_abs_logit_diff": float(np.abs(package_logits - source_logits).max()),
        "package_accuracy": float((package_logits.argmax(1) == labels).mean()),
        "source_accuracy": float((source_logits.argmax(1) == labels).mean()),
    }
    fidelity["meets_target"] = fidelity["argmax_agreement"] == 1.0 and fidelity["max_abs_logit_diff"] <= 1e-3
    print(f"fidelity: {fidelity}", flush=True)

    # -- trunks: SALF cut (from the package) and the full 6-layer trunk ------------------------------
    clf = SequenceClassifier(backbone, len(m["labels"]), m["labels"]).eval()
    trunks = {cut: {"onnx_fp32": pkg.file("trunk.onnx"), "onnx_int8": pkg.file("trunk.int8.onnx")}}
    full = backbone.num_layers
    if full != cut:
        full_dir = work / "full"
        full_dir.mkdir()
        exported = export_trunk(clf, full, full_dir / "trunk.onnx", pad_id=encoder.pad_id)
        verify_trunk(clf, full, exported.path, encoder, test.texts[:16], threads=args.threads)
        quantize_trunk(exported.path, full_dir / "trunk.int8.onnx")
        trunks[full] = {"onnx_fp32": exported.path, "onnx_int8": full_dir / "trunk.int8.onnx"}
    for k, files in trunks.items():
        files["onnx_fp32_fused"] = fused_copy(files["onnx_fp32"], files["onnx_fp32"].with_name(f"fused{k}.onnx"))

    long_texts = [t for t, n in zip(test.texts, encoder.lengths(test.texts)) if n >= args.max_length]
    batches = {bs: encoder(long_texts[:bs]) for bs in (1, 32)}
    assert all(b[0].shape[1] == args.max_length and b[1].all() for b in batches.values())
    repeats = {1: args.repeats_b1, 32: args.repeats_b32}
    timings = {}
    load_before = os.getloadavg()[0]
    for k, files in trunks.items():
        timings[f"cut_{k}"] = speed(clf, k, files, batches, args.threads, repeats)

    load_after = os.getloadavg()[0]

    # -- int8 size ---------------------------------------------------------------------------------
    fp32_size = m["trunk"]["size"]
    matmul_only = quantize_trunk(pkg.file("trunk.onnx"), work / "matmul_only.onnx", Int8Config(op_types=("MatMul",)))
    word_embeddings = backbone.model.embeddings.word_embeddings.weight
    q = m["trunk_int8"]
    sizes = {
        "fp32_bytes": fp32_size,
        "int8_bytes": q["size"],
        "int8_ratio": q["size_ratio"],
        "int8_matmul_only_bytes": size_of(matmul_only),
        "int8_matmul_only_ratio": size_of(matmul_only) / fp32_size,
        "word_embedding_share_of_fp32": word_embeddings.numel() * 4 / fp32_size,
    }
    accuracy = q["accuracy"]

    b1 = timings[f"cut_{cut}"]["batch_1"]["onnx_fp32"]["speedup_vs_torch"]
    results = {
        "benchmark": "export_ort",
        "machine": {
            "platform": platform.platform(),
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "threads": args.threads,
            "load_avg_1min_before_after_timings": [load_before, load_after],
        },
        "versions": m["producer"],
        "model": "all-MiniLM-L6-v2",
        "data": f"BBC news, train {len(train)} / test {len(test)} (stratified, seed 0)",
        "max_length": args.max_length,
        "plan": {"planner": "salf", "cut": cut, "seconds": the_plan.seconds},
        "head": m["head"],
        "export_seconds": result.seconds,
        "trunk_parity_max_abs_diff": m["trunk"]["parity"]["max_abs_diff"],
        "fidelity": fidelity,
        "timings": timings,
        "sizes": sizes,
        "int8_accuracy": accuracy,
        "targets": {
            "ort_fp32_speedup_batch1_at_salf_cut": b1,
            "ort_fp32_speedup_batch1_target": 1.3,
            "ort_fp32_speedup_met": b1 >= 1.3,
            "int8_size_ratio_target": 0.3,
            "int8_size_met": sizes["int8_ratio"] <= 0.3,
            "int8_accuracy_loss_points_target": 1.0,
            "int8_accuracy_met": accuracy["delta_points"] >= -1.0,
            "fidelity_met": fidelity["meets_target"],
        },
        "seconds": time.perf_counter() - started,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "export_ort.json", results)
    plot(results, args.out / "export_ort.png")
    print(json.dumps(results["targets"], indent=2))
    print(f"wrote {args.out / 'export_ort.json'} and {args.out / 'export_ort.png'} in {results['seconds']:.0f}s")
    pkg.close()
    shutil.rmtree(work, ignore_errors=True)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timings = results["timings"]
    sides = ["torch_eager", "onnx_fp32", "onnx_fp32_fused", "onnx_int8"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    for ax, bs in zip(axes[:2], (1, 32)):
        groups = list(timings)
        width = 0.2
        for j, side in enumerate(sides):
            vals = [timings[g][f"batch_{bs}"][side]["median_s"] * 1e3 for g in groups]
            bars = ax.bar(np.arange(len(groups)) + (j - 1.5) * width, vals, width, label=side)
            for bar, g in zip(bars, groups):
                s = timings[g][f"batch_{bs}"][side].get("speedup_vs_torch")
                if s:
                    ax.annotate(f"{s:.2f}x", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                                va="bottom", fontsize=7)  # fmt: skip
        ax.set_xticks(np.arange(len(groups)), [f"trunk {g.replace('_', ' ')}" for g in groups])
        ax.set_ylabel("ms per call (median)")
        ax.set_title(f"batch {bs}, seq {results['max_length']}, {results['machine']['threads']} threads")
        ax.legend(fontsize=7)
    s = results["sizes"]
    ax = axes[2]
    names = ["fp32", "int8 MatMul only", "int8 MatMul+Gather"]
    vals = [s["fp32_bytes"] / 1e6, s["int8_matmul_only_bytes"] / 1e6, s["int8_bytes"] / 1e6]
    ax.bar(names, vals, color=["C0", "C7", "C3"])
    for i, v in enumerate(vals):
        ax.annotate(f"{v:.1f} MB ({v / vals[0]:.2f}x)", (i, v), ha="center", va="bottom", fontsize=8)
    a = results["int8_accuracy"]
    ax.set_title(f"trunk size (cut {results['plan']['cut']}); accuracy {a['fp32']:.3f} -> {a['int8']:.3f}")
    ax.set_ylabel("MB")
    f = results["fidelity"]
    fig.suptitle(
        f"all-MiniLM-L6-v2 device package: fidelity on {f['num_examples']} BBC test docs: argmax agreement "
        f"{f['argmax_agreement']:.3f}, max |logit diff| {f['max_abs_logit_diff']:.1e}"
    )
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
