"""The device runtime on its trainers: loss parity, accuracy, peak memory of the job, time.

    flock /work/bench.lock python benchmarks/device_runtime.py [--threads 2] [--users 3] [--out benchmarks/results]

Model all-MiniLM-L6-v2 with dropout off (its config's dropout probabilities set to 0: the ExecuTorch programs are
exported without dropout, so "the same training" means no dropout on every backend), data BBC news.

1. Server: a stratified 25% of the corpus; a top-k plan (``--blocks``, default the top block: the backends are
   compared on training transformer blocks); the package is the plain model cut at the plan's cut,
   head = logistic probe on that split, exported with ``--targets onnx,executorch`` (``top_train.pte``, ``top.pte``,
   ``top_fn.onnx``).
2. Users: ``--users`` simulated non-IID users from the other 75% (:mod:`edgetune_fleet.users`, seed 0), 200
   training + 60 held-out texts each.
3. Per user and backend (``torch``, ``executorch``, ``executorch-cpp``: the C library's job called from Python, and
   ``native``: the same job run by the library's driver, ``edgetune-device personalize --no-select --guard-fraction
   0``, a C program without Python; ``native-int8``: the same with ``--precision int8``, the int8 trunk
   ``trunk.int8.pte``, whose features differ, so its losses are not expected to match; ``torch-lora`` and
   ``native-lora``: the device's LoRA candidate, :data:`LORA_JOB`, on the torch backend and in the library's
   driver with ``--tuner lora``, compared with each other) one personalization
   job in a fresh process with ``--threads`` threads: the one configured job (``PersonalizeConfig.plain``: no
   candidate selection, no guard, so every backend runs the same training; device defaults otherwise: 8 epochs,
   early stopping on a 15% validation split; ``executorch-cpp`` and ``native`` run the library's trunk
   (``trunk.pte``, XNNPACK) 8 texts per call, the others run the ONNX trunk
   ``--cache-batch-size`` 4 texts per call on every backend: onnxruntime's activations set the trunk pass's peak,
   229 MB at 8 vs 183 MB at 4 texts of 128 tokens, measured alone). The parent
   samples the RSS of the job's whole process tree every 20 ms; the peak of that sum is the job's peak RSS. The
   worker imports only what its backend needs.
4. Parity: the step losses of the first 20 steps against the torch backend's; accuracy of each personal state on
   the user's held-out texts (predicted with the torch-free ONNX top, the same for every state).
5. Where the training program's time goes: ``top_train.pte``'s operators profiled with ExecuTorch's ETDump on full
   calls (:func:`op_profile`), the ``mm`` kernel's GFLOP/s next to the machine's GEMM limit.
6. Import costs, each in a fresh process: the RSS of a bare interpreter, and after ``import torch``, after the
   device's light imports (``device_sim.device`` + onnxruntime + tokenizers), after ``transformers``' BERT classes.

Results: ``device_runtime.json`` and ``device_runtime.png`` in ``--out``.
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
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from harness import (  # benchmarks/harness.py: the script's directory is on sys.path
    PeakSampler,
    hold_lock,
    load_average,
    machine_record,
    parser,
    rss_mb,
    tree_rss_mb,
    write_figure,
    write_json,
)

BACKENDS = ("torch", "executorch", "executorch-cpp", "native", "native-int8", "torch-lora", "native-lora")
# The LoRA jobs: the device's LoRA candidate (rank 8, alpha 16, its learning rates) as the one configured job, LoRA
# dropout off as every program runs; the torch backend draws the adapters' starting values per job and the
# library starts from those the exporter drew, so their losses differ from step 1 and are not compared.
LORA_JOB = {"tuner": "lora", "tuner_params": {"r": 8, "dropout": 0.0}, "lr": 1e-3, "head_lr": 0.03}
PARITY_STEPS = 20
TARGET_RSS_MB = {"executorch-cpp": 250.0, "torch": 500.0, "native": 200.0, "native-int8": 150.0}


# -- workers (fresh processes) ----------------------------------------------------------------------------------------
def job_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One personalization job: the backend's own imports, then ``Device.personalize`` as the CLI runs it."""
    t0 = time.perf_counter()
    from device_sim.device import Device

    if spec["backend"].startswith("torch"):
        import torch

        torch.set_num_threads(spec["threads"])
        import device_sim.backends.torch_backend  # noqa: F401 (the backend's imports, counted before the job)
    imported = time.perf_counter()
    rss_imports = rss_mb()
    losses: list[float] = []
    if spec["backend"].startswith("torch"):
        callbacks = [lambda event: losses.append(float(event.loss))]
    else:
        callbacks = [lambda step, loss: losses.append(float(loss))]
    with Device(spec["package"], threads=spec["threads"]) as device:
        # the one configured job on every backend (no candidate selection, no guard): the same training to compare
        settings = replace(plain_settings(), cache_batch_size=spec["cache_batch_size"])
        if spec["backend"].endswith("-lora"):
            settings = replace(settings, **LORA_JOB)
        backend = spec["backend"].removesuffix("-lora")
        result = device.personalize(spec["data"], spec["out"], settings, callbacks, backend)
    done = time.perf_counter()
    return {
        "import_seconds": imported - t0,
        "job_seconds": done - imported,
        "phases": result.seconds,
        "rss_after_imports_mb": rss_imports,
        "losses": losses,
        "history": result.history,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "torch_loaded": "torch" in sys.modules,
        "transformers_loaded": "transformers" in sys.modules,
        "heavy_modules": sorted(
            {
                m.split(".")[0]
                for m in sys.modules
                if m.split(".")[0] in ("scipy", "sklearn", "accelerate", "peft", "transformers")
            }  # fmt: skip
            | ({"edgetune.planner"} if "edgetune.planner" in sys.modules else set())
            | ({"edgetune.train"} if "edgetune.train" in sys.modules else set())
        ),
    }


IMPORTS = {
    "python": "",
    "light device (device_sim.device, onnxruntime, tokenizers)": "import device_sim.device, onnxruntime, tokenizers",
    "torch": "import torch",
    "torch + transformers BERT": "import torch, transformers.models.bert.modeling_bert",
    "torch backend's job imports (plain-torch top, no transformers)": (
        "import device_sim.backends.torch_backend, edgetune.native"
    ),
    "executorch Python runtime": "import executorch.extension.pybindings.portable_lib",
}


def run_measured(cmd: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run ``cmd``; returns (completed process, peak RSS of its process tree in MB, wall seconds)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with PeakSampler(lambda: {"tree": tree_rss_mb(proc.pid)}, interval=0.02) as sampler:
        out, err = proc.communicate()
    seconds = time.perf_counter() - start
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), sampler.peak.get("tree", 0.0), seconds


def run_native_job(spec: dict[str, Any]) -> dict[str, Any]:
    """The C library's job through its driver (no Python in the process); its record is read from the state."""
    cmd = [spec["driver"], "personalize", "--package", spec["package"], "--data", spec["data"], "--out", spec["out"],
           "--no-select", "--guard-fraction", "0", "--threads", str(spec["threads"]), "--quiet"]  # fmt: skip
    if spec["backend"] == "native-int8":
        cmd += ["--precision", "int8"]
    if spec["backend"] == "native-lora":
        cmd += ["--tuner", "lora", "--lr", str(LORA_JOB["lr"]), "--head-lr", str(LORA_JOB["head_lr"])]
    done, peak, seconds = run_measured(cmd, {**os.environ, "OMP_NUM_THREADS": str(spec["threads"])})
    if done.returncode != 0:
        raise RuntimeError(f"native job failed:\n{done.stderr[-4000:]}")
    training = json.loads((Path(spec["out"]) / "personal.json").read_text())["training"]
    return {
        "import_seconds": 0.0, "job_seconds": seconds, "phases": training["seconds"], "rss_after_imports_mb": 0.0,
        "losses": training["step_losses"], "history": training["history"], "best_epoch": training["best_epoch"],
        "epochs_run": len(training["history"]), "torch_loaded": False, "transformers_loaded": False,
        "program_planned_mb": training.get("program_planned_bytes", 0) / 2**20,
        "heavy_modules": [], "peak_tree_rss_mb": peak, "process_seconds": seconds,
    }  # fmt: skip


def run_job(spec: dict[str, Any], tmp: Path) -> dict[str, Any]:
    if spec["backend"].startswith("native"):
        return run_native_job(spec)
    spec_path, out_path = tmp / "spec.json", tmp / "out.json"
    spec_path.write_text(json.dumps(spec))
    out_path.unlink(missing_ok=True)
    env = {**os.environ, "EDGETUNE_NO_PROGRESS": "1", "OMP_NUM_THREADS": str(spec["threads"])}
    cmd = [sys.executable, __file__, "--worker", str(spec_path), str(out_path)]
    done, peak, seconds = run_measured(cmd, env)
    if done.returncode != 0:
        raise RuntimeError(f"{spec['backend']} job failed:\n{done.stderr[-4000:]}")
    result = json.loads(out_path.read_text())
    result.update(peak_tree_rss_mb=peak, process_seconds=seconds)
    return result


def import_costs() -> dict[str, float]:
    """RSS (MB) of a fresh interpreter after each import set (peak of the process, sampled)."""
    env = {**os.environ}
    out = {}
    for name, code in IMPORTS.items():
        script = f"{code}\nimport time; time.sleep(0.3)"
        done, peak, _ = run_measured([sys.executable, "-c", script], env)
        if done.returncode != 0:
            raise RuntimeError(f"import {name!r} failed: {done.stderr[-2000:]}")
        out[name] = peak
    return out


# -- setup ------------------------------------------------------------------------------------------------------------
def no_dropout_model(src: Path, dest: Path) -> Path:
    """A copy of the model directory whose config turns dropout off (the weights are the same files)."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file():
            shutil.copy2(f, dest / f.name)
    config = json.loads((dest / "config.json").read_text())
    for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"):
        if key in config:
            config[key] = 0.0
    (dest / "config.json").write_text(json.dumps(config, indent=2))
    return dest


def prepare(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from edgetune.api import plan
    from edgetune.data import stratified_split
    from edgetune.datasets import bbc_news, minilm_path
    from edgetune_fleet.users import UserConfig, simulate_users
    from exporters.export import ExportOptions, export_package

    server, pool = stratified_split(bbc_news(), test_size=0.75, seed=0)
    model = no_dropout_model(Path(minilm_path()), work / "model")
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    # a fixed top-k plan: the backends are compared on training blocks (SALF's cost-aware plan for BBC trains the
    # head alone, which would compare the backends on a linear layer)
    planned = plan(
        str(model), server, planner="topk", planner_params={"k": args.blocks}, max_length=128, progress=False
    )
    seconds["plan"] = time.perf_counter() - start
    start = time.perf_counter()
    options = ExportOptions(threads=args.threads, targets=("onnx", "executorch"), int8=True)
    result = export_package(model, planned, work / "pkg", data=server, options=options)
    seconds["export"] = time.perf_counter() - start
    users = simulate_users(pool, UserConfig(num_users=args.users, examples_per_user=260, test_fraction=60 / 260))
    files = []
    for user in users:
        train, test = work / f"{user.user_id}-train.csv", work / f"{user.user_id}-test.csv"
        user.train.to_csv(train)
        user.test.to_csv(test)
        files.append((user, train, test))
    sizes = {name: entry["size"] for name, entry in result.manifest["files"].items()}
    return {"plan": planned, "seconds": seconds, "users": files, "executorch": result.manifest["executorch"],
            "file_sizes": sizes}  # fmt: skip


def accuracy(package: Path, personal: Path, test: Path, threads: int, int8_trunk: bool = False) -> float:
    """The state's accuracy on the user's held-out texts: with the torch-free ONNX top on the fp32 ONNX trunk, or
    (``int8_trunk``) in the library on the trunk it was trained on, trunk.int8.pte."""
    from device_sim.device import Device
    from device_sim.native import NativeModel, NativePackage
    from edgetune.data import LabelMap, load_dataset

    data = load_dataset(test)
    with Device(package, threads=threads) as device:
        y = data.encoded_labels(LabelMap(tuple(device.labels)))
        if not int8_trunk:
            logits = device.predict_logits(data.texts, personal, backend="onnx")
    if int8_trunk:
        with NativePackage(package) as native, NativeModel(native, personal, threads, int8_trunk=True) as model:
            logits = model.predict(data.texts)
    return float((logits.argmax(axis=1) == y).mean())


# -- FLOPs against the machine's GEMM limit ---------------------------------------------------------------------
GEMM_SCRIPT = """
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
best = {}
for m, k, n in ((1600, 384, 1536), (1600, 1536, 384), (1600, 384, 384)):
    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(3):
        a @ b
    rates = []
    for _ in range(7):
        t = time.perf_counter()
        for _ in range(10):
            a @ b
        rates.append(20 * m * k * n / (time.perf_counter() - t) / 1e9)
    best[f"{m}x{k}x{n}"] = max(rates)
print(json.dumps(best))
"""


def gemm_limit(threads: int) -> dict[str, float]:
    """Sustained fp32 GEMM GFLOP/s on this machine with ``threads`` threads (torch's CPU BLAS), at the shapes of a
    MiniLM block's matrix products for a batch of 16 texts of 100 tokens; best of 7 runs each, in a fresh process."""
    done = subprocess.run([sys.executable, "-c", GEMM_SCRIPT, str(threads)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"GEMM measurement failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


OP_PROFILE_SCRIPT = """
import collections, json, sys, numpy as np, torch
import executorch.extension.pybindings._C as et
from executorch.devtools import Inspector
from executorch.exir._serialize._program import deserialize_pte_binary
pte_path, entry, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
torch.set_num_threads(int(sys.argv[4]))
pte = open(pte_path, "rb").read()
program = deserialize_pte_binary(pte)
planned = sum(getattr(program, "program", program).execution_plan[0].non_const_buffer_sizes)
module = et._load_for_executorch_from_buffer(pte, enable_etdump=True)
rows, width, calls = entry["max_batch"], 128, 4
hidden = entry["inputs"][0]["shape"][2]
rng = np.random.default_rng(0)
feeds = (torch.from_numpy(rng.normal(size=(rows, width, hidden)).astype(np.float32)),
         torch.ones(rows, width, dtype=torch.int64), torch.arange(rows, dtype=torch.int64) % 2)
for _ in range(calls):
    module.run_method("forward", feeds)
module.write_etdump_result_to_file(out)
ms, count = collections.Counter(), collections.Counter()
for block in Inspector(etdump_path=out).event_blocks:
    for event in block.events:
        if event.perf_data is not None and event.name.startswith("native_call_"):
            ms[event.name.removeprefix("native_call_")] += sum(event.perf_data.raw)
            count[event.name.removeprefix("native_call_")] += len(event.perf_data.raw)
print(json.dumps({"planned_bytes": planned, "rows": rows, "width": width, "calls": calls,
                  "ms_per_call": {k: v / calls for k, v in ms.most_common()},
                  "ops_per_call": {k: count[k] // calls for k in ms}}))
"""


def op_profile(package: Path, threads: int) -> dict[str, Any]:
    """Where ``top_train.pte``'s time goes: each operator's milliseconds per call of a full batch of the program
    (its ``max_batch`` rows of 128 tokens, random features), from ExecuTorch's ETDump profile in a fresh process,
    and the ``mm`` kernel's GFLOP/s: the block's linear layers' FLOPs (6 x tokens x weights: the forward, the
    input's and the weight's gradient) over the ``mm`` time (the head's and the attention's products left out)."""
    from edgetune_format.manifest import training_call_rows

    manifest = json.loads((package / "manifest.json").read_text())
    entry = manifest["executorch"]["train"]
    entry["max_batch"] = training_call_rows(manifest["executorch"], entry)
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            [sys.executable, "-c", OP_PROFILE_SCRIPT, str(package / entry["file"]), json.dumps(entry),
             str(Path(tmp) / "profile.etdp"), str(threads)],
            capture_output=True, text=True,
        )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"op profile failed: {done.stderr[-2000:]}")
    profile = json.loads(done.stdout.strip().splitlines()[-1])
    weights = sum(
        int(np.prod(p["shape"]))
        for p in entry["parameters"]
        if p["name"].startswith("blocks.") and len(p["shape"]) == 2
    )
    tokens = profile["rows"] * profile["width"]
    total = sum(profile["ms_per_call"].values())
    profile["share"] = {k: v / total for k, v in profile["ms_per_call"].items()}
    profile["mm_gflops"] = 6 * tokens * weights / (profile["ms_per_call"].get("mm.out", float("nan")) / 1e3) / 1e9
    return profile


def job_flops(package: Path, train: Path, epochs_run: int, batch_size: int = 16) -> dict[str, float]:
    """The FLOPs one configured job computes (cost model, :mod:`edgetune.costs`, at each batch's real width): the
    trunk once over every text, then per epoch run the top's forward and backward over the training split's
    batches (the job's epoch orders) and its forward over the validation split."""
    from device_sim.backends.program import epoch_order
    from device_sim.package import load_package
    from device_sim.split import guard_split, validation_split
    from edgetune.costs import CostConfig, estimate_cut
    from edgetune.data import LabelMap, load_dataset

    config = plain_settings()
    with load_package(package) as pkg:
        data = load_dataset(train)
        y = data.encoded_labels(LabelMap(tuple(pkg.labels)))
        _, mask = pkg.encode(data.texts)
        arch, cut = pkg.plan.arch, pkg.cut
    lengths = mask.sum(axis=1)
    rest, _ = guard_split(y, config.guard_fraction, config.seed)
    inner_train, inner_val = validation_split(y[rest], config.val_fraction, config.seed)
    train_len, val_len = lengths[rest[inner_train]], lengths[rest[inner_val]]

    def per_example(width: int) -> tuple[float, float, float]:  # (trunk forward, top forward, top backward)
        cost = estimate_cut(arch, CostConfig(seq_len=int(width), batch_size=batch_size, cached=True), cut)
        top_forward = cost.train_step_flops - cost.backward_flops
        return cost.forward_flops - top_forward, top_forward, cost.backward_flops

    trunk = float(sum(per_example(w)[0] for w in lengths))
    train_flops = 0.0
    for epoch in range(epochs_run):
        order = epoch_order(len(train_len), config.seed, epoch)
        for start in range(0, len(order), batch_size):
            rows = train_len[order[start : start + batch_size]]
            _, fwd, bwd = per_example(max(int(rows.max()), 2))
            train_flops += len(rows) * (fwd + bwd)
        for start in range(0, len(val_len), batch_size):
            rows = val_len[start : start + batch_size]
            train_flops += len(rows) * per_example(max(int(rows.max()), 2))[1]
    return {"trunk": trunk, "train": train_flops}


def plain_settings() -> Any:
    """The configured job every backend runs here (no selection, no guard)."""
    from device_sim.settings import PersonalizeConfig

    return PersonalizeConfig.plain(progress=False)


def throughput(rows: list[dict[str, Any]], gemm: dict[str, float]) -> dict[str, Any]:
    """Per backend: the GFLOP/s its trunk pass and its training reached (median over users), and their share of
    the machine's GEMM limit (the best of the measured shapes)."""
    limit = max(gemm.values())
    out: dict[str, Any] = {"gemm_gflops": gemm, "gemm_limit_gflops": limit}
    for backend in [b for b in BACKENDS if not b.endswith("-lora")]:  # the FLOPs are the full top's training
        rates = {"trunk": [], "train": []}
        for row in rows:
            phases = row[backend]["phases"]
            for phase in rates:
                if phases.get(phase):
                    rates[phase].append(row["flops"][phase] / phases[phase] / 1e9)
        out[backend] = {f"{phase}_gflops_median": float(np.median(v)) if v else None for phase, v in rates.items()} | {
            f"{phase}_share_of_gemm_limit": float(np.median(v)) / limit if v else None for phase, v in rates.items()
        }
    return out


# -- report ----------------------------------------------------------------------------------------------------
def reference(backend: str) -> str:
    """The torch job a backend's job is compared with: the LoRA one for LoRA jobs."""
    return "torch-lora" if backend.endswith("-lora") else "torch"


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for backend in BACKENDS:
        ref = reference(backend)
        jobs = [r[backend] for r in rows]
        s = {
            "peak_tree_rss_mb_median": float(np.median([j["peak_tree_rss_mb"] for j in jobs])),
            "peak_tree_rss_mb_max": float(np.max([j["peak_tree_rss_mb"] for j in jobs])),
            "job_seconds_median": float(np.median([j["job_seconds"] for j in jobs])),
            "process_seconds_median": float(np.median([j["process_seconds"] for j in jobs])),
            "accuracy_mean": float(np.mean([j["accuracy"] for j in jobs])),
        }
        if backend != ref:
            diffs = [j["loss_diff_vs_torch"] for j in jobs]
            s["compared_with"] = ref
            s["max_loss_diff_first_20_steps"] = None if None in diffs else float(np.max(diffs))
            s["accuracy_diff_points_max"] = float(np.max([abs(j["accuracy"] - r[ref]["accuracy"]) * 100 for j, r in
                                                          zip(jobs, rows)]))  # fmt: skip
            s["process_time_vs_torch_median"] = float(
                np.median([j["process_seconds"] / r[ref]["process_seconds"] for j, r in zip(jobs, rows)])
            )
            s["job_time_vs_torch_median"] = float(
                np.median([j["job_seconds"] / r[ref]["job_seconds"] for j, r in zip(jobs, rows)])
            )
        summary[backend] = s
    return summary


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    row = report["users"][0]
    for backend, style in zip(BACKENDS, ("-", "--", ":", "-.", (0, (1, 1)), (0, (5, 1)), (0, (3, 1, 1, 1)))):
        losses = row[backend]["losses"][:PARITY_STEPS]
        axes[0].plot(range(1, len(losses) + 1), losses, linestyle=style, label=backend, lw=2)
    axes[0].set(title=f"loss, first {PARITY_STEPS} steps ({row['user']})", xlabel="step", ylabel="loss")
    axes[0].legend()
    s = report["summary"]
    x = np.arange(len(BACKENDS))
    rss = [s[b]["peak_tree_rss_mb_median"] for b in BACKENDS]
    axes[1].bar(
        x, rss, color=["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:cyan", "tab:pink"]
    )
    for b, target in TARGET_RSS_MB.items():
        i = BACKENDS.index(b)
        axes[1].hlines(target, i - 0.4, i + 0.4, colors="red", linestyles="--")
    axes[1].set(xticks=x, xticklabels=BACKENDS, ylabel="MB", title="peak RSS of the job's process tree (median)")
    for i, v in enumerate(rss):
        axes[1].text(i, v, f"{v:.0f}", ha="center", va="bottom")
    times = [s[b]["process_seconds_median"] for b in BACKENDS]
    jobs = [s[b]["job_seconds_median"] for b in BACKENDS]
    axes[2].bar(x - 0.2, times, 0.4, label="process (incl. imports)")
    axes[2].bar(x + 0.2, jobs, 0.4, label="job (after imports)")
    axes[2].set(xticks=x, xticklabels=BACKENDS, ylabel="s", title="time per user (median)")
    for ax in axes[1:]:
        ax.tick_params(axis="x", rotation=30)
    axes[2].legend()
    fig.tight_layout()
    write_figure(fig, path, dpi=110)


def main() -> None:
    ap = parser(__doc__.split("\n")[0], out=Path(__file__).parent / "results")
    ap.add_argument("--users", type=int, default=3)
    ap.add_argument("--blocks", type=int, default=1, help="top blocks the package trains (a top-k plan)")
    ap.add_argument(
        "--cache-batch-size", type=int, default=4, help="texts per trunk call, every backend (device default: 8)"
    )
    args = ap.parse_args()
    hold_lock(args.lock)
    load_start = load_average()

    from device_sim.native import DRIVER, library_path

    driver = library_path().parent / DRIVER
    work = Path(tempfile.mkdtemp(prefix="device-runtime-"))
    try:
        setup = prepare(args, work)
        rows = []
        for user, train, test in setup["users"]:
            row: dict[str, Any] = {"user": user.user_id, "preference": user.preference}
            for backend in BACKENDS:
                out = work / f"{user.user_id}-{backend}"
                spec = {"backend": backend, "package": str(work / "pkg"), "data": str(train), "out": str(out),
                        "threads": args.threads, "cache_batch_size": args.cache_batch_size,
                        "driver": str(driver)}  # fmt: skip
                job = run_job(spec, work)
                job["accuracy"] = accuracy(work / "pkg", out, test, args.threads, backend == "native-int8")
                if backend != reference(backend):  # the LoRA jobs start from other adapters: not compared
                    ref = np.array(row["torch"]["losses"][:PARITY_STEPS])
                    got = np.array(job["losses"][:PARITY_STEPS])
                    job["loss_diff_vs_torch"] = None if backend.endswith("-lora") else float(np.abs(ref - got).max())
                row[backend] = job
                shutil.rmtree(out)
                peak, secs = job["peak_tree_rss_mb"], job["job_seconds"]
                print(f"{user.user_id} {backend}: peak {peak:.0f} MB, job {secs:.1f}s, accuracy {job['accuracy']:.3f}")
            row["flops"] = job_flops(work / "pkg", train, row["torch"]["epochs_run"])
            rows.append(row)
        imports = import_costs()
        gemm = gemm_limit(args.threads)
        ops = op_profile(work / "pkg", args.threads)
        report = {
            "benchmark": "device_runtime",
            "machine": machine_record(
                load_start, args.threads, workers_import=("torch", "executorch", "onnxruntime", "transformers")
            ),
            "settings": {"cache_batch_size": args.cache_batch_size, "dropout": 0.0},
            "plan": {"cut": setup["plan"].cut, "num_layers": setup["plan"].num_layers},
            "setup_seconds": setup["seconds"],
            "executorch_export": {
                **{k: setup["executorch"][k] for k in ("parity", "seconds", "max_batch")},
                "train_max_batch": setup["executorch"]["train"].get("max_batch"),
            },
            "package_file_sizes": setup["file_sizes"],
            "native_driver": str(driver),
            "import_rss_mb": imports,
            "targets": {"peak_rss_mb": TARGET_RSS_MB, "loss_parity": 1e-4, "accuracy_points": 0.5, "time_ratio": 1.5},
            "users": rows,
            "summary": summarize(rows),
            "throughput": throughput(rows, gemm),
            "training_program_ops": ops,
        }
        args.out.mkdir(parents=True, exist_ok=True)
        write_json(args.out / "device_runtime.json", report)
        plot(report, args.out / "device_runtime.png")
        print(json.dumps({"summary": report["summary"], "import_rss_mb": imports}, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        spec = json.loads(Path(sys.argv[2]).read_text())
        result = job_worker(spec)
        Path(sys.argv[3]).write_text(json.dumps(result))
    else:
        main()
