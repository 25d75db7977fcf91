"""Device package speed: onnxruntime (fp32, fused, int8) vs two torch baselines, each in its own process.

    flock /work/bench.lock python benchmarks/export_ort.py [--threads 2] [--rounds 4] [--out benchmarks/results]

Models: all-MiniLM-L6-v2 (bundled) and all-mpnet-base-v2 when ``edgetune datasets mpnet-path`` finds it
(``--models minilm`` skips it). Data: BBC news, stratified 80/20 split (seed 0); max_length 128.

1. Per model: SALF plan on the train split (its cut l*); two packages exported from the plain model with a
   logistic probe head fitted on the train split and the int8 trunk (``--int8``), validated on the 445 held-out
   test texts (fp32 vs int8 accuracy: the "within 1 point" target): ``plain`` (the dynamo trunk) and ``fused``
   (``--optimize fused``: onnxruntime's transformer fusions, the int8 trunk quantized from the fused graph).
   A family whose attention does not fuse ships the plain trunk; its record says why and it gets no fused rows.
2. Fidelity: each package's fp32 predictions (trunk + ONNX top, onnxruntime alone) vs the source model (whole
   model in torch eager, same head) on all test texts.
3. Speed, for the **trunk** (embeddings + blocks 1..l*) and the **trunk + top** (the whole classifier: logits),
   at batch 1 and 32, 128 real tokens per text (no padding), ``--threads`` threads everywhere:
   ``torch_own`` (the project's torch modules: ``TrunkModule`` / ``SequenceClassifier``), ``torch_hf``
   (Hugging Face's model forward on the same blocks: ``AutoModel`` with ``encoder.layer[:l*]``; for trunk + top
   the whole ``AutoModel`` + mean pooling + the same head), ``ort_fp32`` / ``ort_fp32_fused`` / ``ort_int8`` /
   ``ort_int8_fused`` (the packages' trunks; trunk + top adds the package's ``top.onnx``).
   Every measurement runs in **its own process** (idle onnxruntime and OpenMP threads spin and would slow the
   other runtime in a shared process): per round one fresh process per side, the sides in a rotated order,
   ``--rounds`` rounds; a process warms up, then times consecutive calls at batch 1 and at batch 32. Threads
   wait passively on both sides (torch: ``OMP_WAIT_POLICY=PASSIVE``; onnxruntime: no spinning): on this shared,
   loaded machine a spinning pool lost its cores to the other jobs (torch batch 1 was 25x slower, onnxruntime's
   4x). onnxruntime sessions keep their memory arena (the speed setting; a device's predict path drops it to
   bound its memory). Reported:
   the median over all rounds' calls, ms per text, and speedups = torch median / side median.
4. The CPU's measured GEMM rate (torch fp32 matmul, ``--threads`` threads, the trunk's shapes at batch 32) next
   to each side's achieved GFLOP/s on the trunk (2 x parameters x tokens + attention 4 n^2 d per block).

Results: ``export_ort.json`` and ``export_ort.png`` in ``--out``, written atomically.
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
    git_commit,
    hold_lock,
    installed,
    load_average,
    machine_record,
    parser,
    write_figure,
    write_json,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TORCH_SIDES = ("torch_own", "torch_hf")
ORT_SIDES = {  # side -> (package, precision)
    "ort_fp32": ("plain", "fp32"),
    "ort_fp32_fused": ("fused", "fp32"),
    "ort_int8": ("plain", "int8"),
    "ort_int8_fused": ("fused", "int8"),
}
PARTS = ("trunk", "trunk+top")
BATCHES = (1, 32)
WORKERS_IMPORT = ("torch", "onnxruntime", "transformers", "onnx")  # the versions the result records
TARGETS = {"fused_fp32_vs_torch_own_b1": 1.3, "fused_fp32_vs_torch_own_b32": 1.0, "int8_vs_torch_own_b1": 2.0}


# -- worker: one side, one part, in a fresh process ----------------------------------------------------------------
def _calls(fn, inputs: dict[int, tuple[np.ndarray, np.ndarray]], calls: dict[int, int]) -> dict[str, list[float]]:
    out = {}
    for bs, (ids, mask) in inputs.items():
        warm = time.perf_counter()
        for i in range(100):  # warm-up: at least 2 calls (1 at batch 32) and 1 s
            fn(ids, mask)
            if i >= (1 if bs == 1 else 0) and time.perf_counter() - warm > 1.0:
                break
        times = []
        for _ in range(calls[bs]):
            start = time.perf_counter()
            fn(ids, mask)
            times.append(time.perf_counter() - start)
        out[str(bs)] = times
    return out


def _torch_fn(spec: dict[str, Any]):
    import torch

    from device_sim.package import load_package
    from edgetune.api import load_model
    from edgetune.backbones import default_attn_implementation
    from edgetune.modeling import SequenceClassifier
    from exporters.onnx_trunk import TrunkModule

    torch.set_num_threads(spec["threads"])
    with load_package(spec["package"]) as pkg:
        head = pkg.top_model().head
        labels = pkg.labels
    cut, part = spec["cut"], spec["part"]
    if spec["side"] == "torch_own":
        backbone, _ = load_model(spec["model"], spec["max_length"])
        clf = SequenceClassifier(backbone, len(labels), labels).eval()
        clf.head.load_state_dict(head.state_dict())
        module = TrunkModule(clf, cut).eval() if part == "trunk" else clf

        def fn(ids, mask):
            with torch.inference_mode():
                return module(torch.from_numpy(ids), torch.from_numpy(mask))

        return fn
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(spec["model"])
    model = AutoModel.from_pretrained(
        spec["model"], attn_implementation=default_attn_implementation(config.model_type), add_pooling_layer=False
    ).eval()
    if part == "trunk":
        model.encoder.layer = model.encoder.layer[:cut]
    head = head.eval()

    def fn(ids, mask):
        with torch.inference_mode():
            m = torch.from_numpy(mask)
            hidden = model(input_ids=torch.from_numpy(ids), attention_mask=m).last_hidden_state
            if part == "trunk":
                return hidden
            w = m[..., None].to(hidden.dtype)
            return head((hidden * w).sum(1) / w.sum(1).clamp_min(1.0))

    return fn


def _ort_session(path: Path, threads: int, spinning: bool):
    """The speed configuration: all graph optimizations, the CPU memory arena on (a device's predict path turns
    it off to bound its memory), worker threads spinning between runs only when asked (``--ort-spinning``)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _ort_fn(spec: dict[str, Any]):
    sys.modules["torch"] = None  # an onnxruntime side never loads torch (nor its OpenMP pool)
    from device_sim.package import load_package
    from device_sim.runtime import OnnxTop

    pkg = load_package(spec["package"], threads=spec["threads"])
    entry = pkg.manifest["trunk" if spec["precision"] == "fp32" else "trunk_int8"]
    session = _ort_session(pkg.file(entry["file"]), spec["threads"], spec["ort_spinning"])
    if spec["part"] == "trunk":
        return lambda ids, mask: session.run(["hidden_state"], {"input_ids": ids, "attention_mask": mask})
    top_session = _ort_session(pkg.file(pkg.onnx_top_entry()["file"]), spec["threads"], spec["ort_spinning"])
    top = OnnxTop(top_session, pkg.top_tensors())

    def fn(ids, mask):
        hidden = session.run(["hidden_state"], {"input_ids": ids, "attention_mask": mask})[0]
        return top(hidden, mask)

    return fn


def _gemm_fn(spec: dict[str, Any]):
    import torch

    torch.set_num_threads(spec["threads"])
    d = spec["hidden"]
    a, b = torch.randn(4096, d), torch.randn(d, 4 * d)
    flops = 2 * 4096 * d * 4 * d
    times = []
    with torch.inference_mode():
        for _ in range(3):
            a @ b
        for _ in range(20):
            start = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - start)
    return {"gflops": flops / float(np.median(times)) / 1e9, "shape": [4096, d, 4 * d]}


def worker(spec: dict[str, Any]) -> None:
    sys.path.insert(0, str(ROOT))
    if spec["side"] == "gemm":
        print(json.dumps(_gemm_fn(spec)))
        return
    fn = _torch_fn(spec) if spec["side"] in TORCH_SIDES else _ort_fn(spec)
    inputs = {
        bs: (np.load(spec["inputs"] + f"/ids_{bs}.npy"), np.load(spec["inputs"] + f"/mask_{bs}.npy")) for bs in BATCHES
    }
    print(json.dumps(_calls(fn, inputs, {int(k): v for k, v in spec["calls"].items()})))


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "PYTHONPATH": str(ROOT)}
    if spec.get("omp_wait_policy"):
        env["OMP_WAIT_POLICY"] = spec["omp_wait_policy"]
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
        capture_output=True, text=True, env=env, cwd=ROOT,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"worker {spec['side']} {spec.get('part')} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- parent -----------------------------------------------------------------------------------------------------------
def trunk_flops(config: Any, blocks: int, batch: int, seq: int) -> float:
    """2 x block parameters x tokens + attention 4 n^2 d per block (embeddings: lookups, not counted)."""
    d, inter = config.hidden_size, config.intermediate_size
    per_block = 4 * d * d + 2 * d * inter
    return float(blocks * batch * (2 * per_block * seq + 4 * seq * seq * d))


def export_packages(name: str, model_path: Path, work: Path, the_plan, probe, test, args) -> tuple[dict, dict]:
    """The ``fused`` and ``plain`` packages (int8 included) and what each export recorded; a family whose attention
    does not fuse gets one plain package under both names."""
    from exporters.export import ExportOptions, export_package

    packages, records = {}, {}
    for kind in ("fused", "plain"):
        if kind == "plain" and records["fused"]["trunk_optimization"]["level"] != "fused":
            packages["plain"], records["plain"] = packages["fused"], records["fused"]  # the same plain trunk
            break
        options = ExportOptions(int8=True, threads=args.threads, optimize="none" if kind == "plain" else "fused")
        result = export_package(model_path, the_plan, work / f"{name}-{kind}", data=probe, val_data=test,
                                options=options, log=lambda s, k=kind: print(f"  [{k}] {s}", flush=True))  # fmt: skip
        m = result.manifest
        records[kind] = {
            "export_seconds": result.seconds,
            "trunk_exporter": m["trunk"]["exporter"],
            "trunk_parity_max_abs_diff": m["trunk"]["parity"]["max_abs_diff"],
            "trunk_bytes": m["trunk"]["size"],
            "trunk_optimization": m.get("trunk_optimization"),
            "int8": {k: m["trunk_int8"][k] for k in ("size", "size_ratio", "accuracy", "quantization")},
            "validation_accuracy": (m.get("validation") or {}).get("accuracy"),
        }
        packages[kind] = result.path
    return packages, records


def fidelity_of(backbone, labels: list[str], packages: dict, kinds: tuple[str, ...], test, threads: int) -> dict:
    """Each package's predictions (onnxruntime alone) against the whole source model in torch eager, same head."""
    import torch

    from device_sim.package import load_package
    from device_sim.runtime import map_batches
    from edgetune.data import LabelMap
    from edgetune.modeling import SequenceClassifier

    source = SequenceClassifier(backbone, len(labels), labels).eval()
    fidelity = {}
    with load_package(packages["plain"], threads=threads) as pkg:
        source.head.load_state_dict(pkg.top_model().head.state_dict())

        def source_fn(ids, mask):
            with torch.inference_mode():
                return source(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()

        torch.set_num_threads(threads)
        source_logits = map_batches(pkg.encoder, test.texts, source_fn, 32)
    truth = test.encoded_labels(LabelMap(tuple(labels)))
    for kind in kinds:
        with load_package(packages[kind], threads=threads) as pkg:
            logits = pkg.predict_logits(test.texts, batch_size=32, backend="onnx")
        fidelity[kind] = {
            "num_examples": len(test),
            "argmax_agreement": float((logits.argmax(1) == source_logits.argmax(1)).mean()),
            "max_abs_logit_diff": float(np.abs(logits - source_logits).max()),
            "package_accuracy": float((logits.argmax(1) == truth).mean()),
            "source_accuracy": float((source_logits.argmax(1) == truth).mean()),
        }
        print(f"  fidelity {kind}: {fidelity[kind]}", flush=True)
    return fidelity


def write_inputs(encoder, texts: list[str], max_length: int, inputs: Path) -> Path:
    """The timed batches, saved for the workers: test texts of ``max_length`` real tokens, so nothing is padding."""
    long_texts = [t for t, n in zip(texts, encoder.lengths(texts)) if n >= max_length]
    inputs.mkdir()
    for bs in BATCHES:
        ids, mask = encoder(long_texts[:bs])
        assert ids.shape == (bs, max_length) and mask.all()
        np.save(inputs / f"ids_{bs}.npy", ids)
        np.save(inputs / f"mask_{bs}.npy", mask)
    return inputs


def prepare(name: str, model_path: Path, work: Path, train, test, args) -> dict[str, Any]:
    """Everything the timed workers need for one model: plan, packages, fidelity, saved inputs, FLOPs per call."""
    from edgetune.api import load_model, plan
    from edgetune.data import stratified_split

    backbone, encoder = load_model(model_path, args.max_length)
    the_plan = plan((backbone, encoder), train, planner="salf", progress=False)
    print(f"{name}: SALF plan cut {the_plan.cut} ({the_plan.seconds:.1f}s)", flush=True)
    probe = train
    if args.probe_texts and len(train) > args.probe_texts:
        probe = stratified_split(train, 1 - args.probe_texts / len(train), seed=0)[0]
    packages, records = export_packages(name, model_path, work, the_plan, probe, test, args)
    fused_ok = records["fused"]["trunk_optimization"]["level"] == "fused"
    kinds = ("plain", "fused") if fused_ok else ("plain",)
    fidelity = fidelity_of(backbone, list(the_plan.labels), packages, kinds, test, args.threads)
    inputs = write_inputs(encoder, test.texts, args.max_length, work / f"{name}-inputs")
    config = backbone.config
    return {
        "model_path": str(model_path),
        "cut": the_plan.cut,
        "num_layers": backbone.num_layers,
        "plan_seconds": the_plan.seconds,
        "packages": {k: str(v) for k, v in packages.items()},
        "exports": records,
        "fused": fused_ok,
        "fidelity": fidelity,
        "inputs": str(inputs),
        "hidden": backbone.hidden_size,
        "flops": {
            part: {
                str(bs): trunk_flops(
                    config, the_plan.cut if part == "trunk" else backbone.num_layers, bs, args.max_length
                )  # fmt: skip
                for bs in BATCHES
            }
            for part in PARTS
        },
    }


def measure(name: str, info: dict[str, Any], args) -> dict[str, Any]:
    sides = list(TORCH_SIDES) + [s for s, (kind, _) in ORT_SIDES.items() if kind == "plain" or info["fused"]]
    jobs = [(part, side) for part in PARTS for side in sides]
    samples: dict[tuple[str, str], dict[str, list[float]]] = {job: {str(b): [] for b in BATCHES} for job in jobs}
    calls = {"1": args.calls_b1, "32": args.calls_b32}
    load = [os.getloadavg()[0]]
    for r in range(args.rounds):
        order = jobs[r % len(jobs) :] + jobs[: r % len(jobs)]  # rotate: no side always runs first or last
        if r % 2:
            order = order[::-1]
        for part, side in order:
            spec = {
                "side": side, "part": part, "threads": args.threads, "cut": info["cut"], "model": info["model_path"],
                "max_length": args.max_length, "inputs": info["inputs"], "calls": calls,
                "package": info["packages"][ORT_SIDES[side][0] if side in ORT_SIDES else "plain"],
                "precision": ORT_SIDES[side][1] if side in ORT_SIDES else None,
                "omp_wait_policy": args.omp_wait_policy,
                "ort_spinning": args.ort_spinning,
            }  # fmt: skip
            got = run_worker(spec)
            for b, times in got.items():
                samples[(part, side)][b] += times
            time.sleep(0.3)
        load.append(os.getloadavg()[0])
        print(f"  {name}: round {r + 1}/{args.rounds} done (load {load[-1]:.1f})", flush=True)
    timings: dict[str, Any] = {}
    for part in PARTS:
        timings[part] = {}
        for bs in BATCHES:
            stats = {}
            for side in sides:
                s = np.asarray(samples[(part, side)][str(bs)])
                stats[side] = {
                    "median_s": float(np.median(s)),
                    "p25_s": float(np.percentile(s, 25)),
                    "p75_s": float(np.percentile(s, 75)),
                    "calls": int(len(s)),
                    "ms_per_text": float(np.median(s)) / bs * 1e3,
                    "gflops": info["flops"][part][str(bs)] / float(np.median(s)) / 1e9,
                }
            for side in sides:
                for base in TORCH_SIDES:
                    stats[side][f"speedup_vs_{base}"] = stats[base]["median_s"] / stats[side]["median_s"]
            timings[part][f"batch_{bs}"] = stats
            line = ", ".join(
                f"{n} {v['median_s'] * 1e3:.1f} ms ({v['speedup_vs_torch_own']:.2f}x)" for n, v in stats.items()
            )
            print(f"  {name} {part} batch {bs}: {line}", flush=True)
    return {"timings": timings, "load_avg_1min_per_round": load}


def targets_of(model: dict[str, Any]) -> dict[str, Any]:
    t = model["timings"]["trunk"]
    fused_side = "ort_fp32_fused" if model["fused"] else "ort_fp32"
    int8 = model["exports"]["fused" if model["fused"] else "plain"]["int8"]["accuracy"]
    b1, b32 = t["batch_1"][fused_side]["speedup_vs_torch_own"], t["batch_32"][fused_side]["speedup_vs_torch_own"]
    q_side = "ort_int8_fused" if model["fused"] else "ort_int8"
    q1 = t["batch_1"][q_side]["speedup_vs_torch_own"]
    return {
        "fp32_side": fused_side,
        "fused_fp32_vs_torch_own_b1": b1,
        "fused_fp32_vs_torch_own_b1_target": TARGETS["fused_fp32_vs_torch_own_b1"],
        "fused_fp32_vs_torch_own_b1_met": b1 >= TARGETS["fused_fp32_vs_torch_own_b1"],
        "fused_fp32_vs_torch_own_b32": b32,
        "fused_fp32_vs_torch_own_b32_target": TARGETS["fused_fp32_vs_torch_own_b32"],
        "fused_fp32_vs_torch_own_b32_met": b32 >= TARGETS["fused_fp32_vs_torch_own_b32"],
        "int8_side": q_side,
        "int8_vs_torch_own_b1": q1,
        "int8_vs_torch_own_b1_target": TARGETS["int8_vs_torch_own_b1"],
        "int8_delta_points": int8["delta_points"] if int8 else None,
        "int8_met": bool(q1 >= TARGETS["int8_vs_torch_own_b1"] and int8 and int8["delta_points"] >= -1.0),
    }


def parse_args() -> argparse.Namespace:
    """The harness's common options (``--out``, ``--threads``, ``--lock``) and this benchmark's own."""
    ap = parser(__doc__, out=HERE / "results", threads=2)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--calls-b1", type=int, default=20)
    ap.add_argument("--calls-b32", type=int, default=3)
    ap.add_argument("--models", default="minilm,mpnet")
    ap.add_argument("--probe-texts", type=int, default=600, help="train texts the head probe is fitted on")
    ap.add_argument(
        "--omp-wait-policy",
        default="PASSIVE",
        help="OMP_WAIT_POLICY of the workers (torch's OpenMP pool): on a shared, loaded machine ACTIVE spinning made "
        "torch's batch-1 MiniLM forward 25x slower (730 vs 29 ms); '' leaves the default",
    )
    ap.add_argument(
        "--ort-spinning",
        action="store_true",
        help="let onnxruntime's worker threads spin between runs (its default; off here like torch's PASSIVE wait: "
        "on the loaded machine spinning made the batch-1 MiniLM trunk 4x slower, 95 vs 22 ms)",
    )
    ap.add_argument("--merge", action="store_true", help="keep the other models' entries of an existing result")
    return ap.parse_args()


def models_to_run(names: str) -> dict[str, Path | str]:
    """The chosen models' directories; a model that is not installed gets the reason it is skipped instead."""
    from edgetune.datasets import minilm_path, mpnet_path

    chosen = {m.strip() for m in names.split(",")}
    models: dict[str, Path | str] = {}
    if "minilm" in chosen:
        models["all-MiniLM-L6-v2"] = minilm_path()
    if "mpnet" in chosen:
        try:
            models["all-mpnet-base-v2"] = mpnet_path()
        except Exception as err:  # noqa: BLE001 (not installed: recorded, not fatal)
            models["all-mpnet-base-v2"] = f"skipped: {err}"
    return models


def run_model(name: str, path: Path, work: Path, train, test, args, commit: str) -> dict[str, Any]:
    """One model's result: export and fidelity, the GEMM rate, the timed rounds and the targets."""
    info = prepare(name, path, work, train, test, args)
    spec = {"side": "gemm", "threads": args.threads, "hidden": info["hidden"], "omp_wait_policy": args.omp_wait_policy}
    gemm = run_worker(spec)
    info.update(measure(name, info, args))
    info["gemm"] = gemm
    info["targets"] = targets_of(info)
    info["commit"] = commit
    info["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    for k in ("packages", "inputs"):
        info.pop(k)
    print(json.dumps(info["targets"], indent=2), flush=True)
    return info


def main() -> None:
    """Measure every chosen model (each side in its own worker process) and write the JSON and the figure."""
    args = parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return
    hold_lock(args.lock)
    load_start = load_average()
    sys.path.insert(0, str(ROOT))
    from edgetune.data import stratified_split
    from edgetune.datasets import bbc_news

    started = time.perf_counter()
    train, test = stratified_split(bbc_news(), 0.2, seed=0)
    models = models_to_run(args.models)
    work = Path(tempfile.mkdtemp(prefix="export_ort-"))
    commit = git_commit(ROOT)["commit"]
    results: dict[str, Any] = {}
    previous = args.out / "export_ort.json"
    if args.merge and previous.is_file():
        results = {k: v for k, v in json.loads(previous.read_text())["models"].items() if "commit" in v}
    try:
        for name, path in models.items():
            if isinstance(path, str):
                results[name] = {"skipped": path}
            else:
                results[name] = run_model(name, Path(path), work, train, test, args, commit)
        report = {
            "benchmark": "export_ort",
            "machine": machine_record(load_start, args.threads, workers_import=WORKERS_IMPORT),
            "versions": installed(WORKERS_IMPORT),
            "commit": commit,
            "omp_wait_policy": args.omp_wait_policy or "default",
            "ort_spinning": args.ort_spinning,
            "ort_memory_arena": True,
            "data": f"BBC news, train {len(train)} / test {len(test)} (stratified, seed 0)",
            "max_length": args.max_length,
            "rounds": args.rounds,
            "calls_per_round": {"batch_1": args.calls_b1, "batch_32": args.calls_b32},
            "models": results,
            "seconds": time.perf_counter() - started,
        }
        args.out.mkdir(parents=True, exist_ok=True)
        write_json(args.out / "export_ort.json", report)
        plot(report, args.out / "export_ort.png")
        print(f"wrote {args.out / 'export_ort.json'} and {args.out / 'export_ort.png'} in {report['seconds']:.0f}s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = {n: m for n, m in report["models"].items() if "timings" in m}
    fig, axes = plt.subplots(len(models), 4, figsize=(20, 4.2 * len(models)), squeeze=False)
    for row, (name, m) in zip(axes, models.items()):
        for ax, (part, bs) in zip(row, [(p, b) for p in PARTS for b in BATCHES]):
            stats = m["timings"][part][f"batch_{bs}"]
            sides = list(stats)
            vals = [stats[s]["ms_per_text"] for s in sides]
            colors = ["C7" if s.startswith("torch") else ("C3" if "int8" in s else "C0") for s in sides]
            bars = ax.bar(range(len(sides)), vals, color=colors)
            for bar, s in zip(bars, sides):
                ax.annotate(f"{stats[s]['speedup_vs_torch_own']:.2f}x", (bar.get_x() + bar.get_width() / 2,
                            bar.get_height()), ha="center", va="bottom", fontsize=7)  # fmt: skip
            ax.set_xticks(range(len(sides)), [s.replace("_", "\n", 1) for s in sides], fontsize=7)
            ax.set_ylabel("ms per text (median)")
            blocks = m["cut"] if part == "trunk" else m["num_layers"]
            ax.set_title(f"{name}: {part} ({blocks} blocks), batch {bs}", fontsize=9)
    fig.suptitle(
        f"each side in its own process, {report['rounds']} interleaved rounds, {report['machine']['threads']} threads, "
        f"{report['max_length']} tokens per text; labels: speedup vs the project's torch module"
    )
    fig.tight_layout()
    write_figure(fig, path)


if __name__ == "__main__":
    main()
