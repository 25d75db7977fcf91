"""Prediction on a device: onnxruntime alone vs the torch top, with personal states of each tuner.

    flock /work/bench.lock python benchmarks/predict_runtime.py [--threads 2] [--texts 200] [--out benchmarks/results]

Model all-MiniLM-L6-v2, data BBC news. A stratified 25% of the corpus is the server's: a top-1 plan (the last
block and the head are trained), the package exported with its ONNX top (``top.onnx``, the top's tensors as graph
inputs). One simulated user (:mod:`edgetune_fleet.users`, seed 0) personalizes it with the ``full`` and
the ``lora`` tuner (one configured job each, torch backend). Then, each in a fresh process with ``--threads``
threads, ``edgetune predict --data <the user's held-out texts>`` runs with ``--runtime onnx`` (torch is made
unimportable in that process, as on a device without it) and with ``--runtime torch``, for the package alone and
for each state, and ``--runtime onnx --int8`` (the package's int8 trunk); the parent samples the RSS of the
process every 20 ms (peak) and times the process. Both runtimes' labels must agree on every text (same argmax);
their logits are compared in-process on the same texts (int8: how many labels equal the fp32 ones).

Results: ``predict_runtime.json`` and ``predict_runtime.png`` in ``--out``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from device_runtime import no_dropout_model, run_measured  # benchmarks/ is on sys.path when run as a script
from harness import git_commit, hold_lock, installed, load_average, machine_record, parser, write_figure, write_json

TARGET_RSS_MB = 200.0
WORKERS_IMPORT = ("torch", "onnxruntime")  # the versions the result records
NO_TORCH = "import sys; sys.modules['torch'] = None; from edgetune_cli import app; app()"
WITH_TORCH = "from edgetune_cli import app; app()"


def setup(work: Path, threads: int) -> dict[str, Any]:
    from device_sim.device import Device
    from device_sim.settings import PersonalizeConfig
    from edgetune.api import plan
    from edgetune.data import stratified_split
    from edgetune.datasets import bbc_news, minilm_path
    from edgetune_fleet.users import UserConfig, simulate_users
    from exporters.export import ExportOptions, export_package

    server, pool = stratified_split(bbc_news(), test_size=0.75, seed=0)
    model = no_dropout_model(Path(minilm_path()), work / "model")
    planned = plan(str(model), server, planner="topk", planner_params={"k": 1}, max_length=128, progress=False)
    export_package(model, planned, work / "pkg", data=server, options=ExportOptions(threads=threads, int8=True))
    user = simulate_users(pool, UserConfig(num_users=1, examples_per_user=260, test_fraction=60 / 260))[0]
    user.test.to_csv(work / "test.csv")
    states = {"package alone": None}
    with Device(work / "pkg", threads=threads) as device:
        for tuner in ("full", "lora"):
            out = work / f"personal-{tuner}"
            device.personalize(user.train, out, PersonalizeConfig.plain(tuner=tuner, progress=False))
            states[tuner] = out
    return {"states": states, "user": user.user_id, "num_test": len(user.test)}


def predict_process(
    code: str, package: Path, personal: Path | None, data: Path, runtime: str, threads: int, int8: bool = False
) -> dict:
    args = ["predict", "--package", str(package), "--data", str(data), "--runtime", runtime, "--threads", str(threads)]
    args += ["--int8"] if int8 else []
    if personal is not None:
        args += ["--personal", str(personal)]
    env = {**os.environ, "EDGETUNE_NO_PROGRESS": "1", "OMP_NUM_THREADS": str(threads)}
    done, peak, seconds = run_measured([sys.executable, "-c", code, *args], env)
    if done.returncode != 0:
        raise RuntimeError(f"predict --runtime {runtime} failed:\n{done.stderr[-3000:]}")
    return {"peak_rss_mb": peak, "seconds": seconds, "labels": done.stdout.split()}


def logit_diff(package: Path, personal: Path | None, data: Path, threads: int) -> float:
    from device_sim.device import Device
    from edgetune.data import load_dataset

    texts = load_dataset(data, "text", None).texts
    with Device(package, threads=threads) as device:
        a = device.predict_logits(texts, personal, backend="onnx")
        b = device.predict_logits(texts, personal, backend="torch")
    return float(abs(a - b).max())


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = report["rows"]
    names = list(rows)
    x = np.arange(len(names))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    sides = (("onnx", "tab:green", "--runtime onnx"), ("onnx_int8", "tab:olive", "--runtime onnx --int8"),
             ("torch", "tab:blue", "--runtime torch"))  # fmt: skip
    for i, (runtime, color, label) in enumerate(sides):
        rss = [rows[n][runtime]["peak_rss_mb"] for n in names]
        axes[0].bar(x + (i - 1) * 0.27, rss, 0.27, label=label, color=color)
        secs = [rows[n][runtime]["seconds"] for n in names]
        axes[1].bar(x + (i - 1) * 0.27, secs, 0.27, label=label, color=color)
    axes[0].axhline(TARGET_RSS_MB, color="red", ls="--", label="target (onnx)")
    axes[0].set(xticks=x, xticklabels=names, ylabel="MB", title="peak RSS of a predict process")
    axes[1].set(xticks=x, xticklabels=names, ylabel="s", title=f"predict process time ({report['num_test']} texts)")
    for ax in axes:
        ax.legend()
    fig.tight_layout()
    write_figure(fig, path, dpi=110)


def measure_state(work: Path, personal: Path | None, threads: int) -> dict[str, Any]:
    """One row: predict processes on onnxruntime (fp32, int8) and torch for one state, and whether they agree."""
    onnx = predict_process(NO_TORCH, work / "pkg", personal, work / "test.csv", "onnx", threads)
    torch_ = predict_process(WITH_TORCH, work / "pkg", personal, work / "test.csv", "torch", threads)
    int8 = predict_process(NO_TORCH, work / "pkg", personal, work / "test.csv", "onnx", threads, True)
    fp32_labels = onnx.pop("labels")
    same = fp32_labels == torch_.pop("labels")
    int8_same = sum(a == b for a, b in zip(int8.pop("labels"), fp32_labels))
    diff = logit_diff(work / "pkg", personal, work / "test.csv", threads)
    return {"onnx": onnx, "torch": torch_, "onnx_int8": {**int8, "labels_as_fp32": int8_same},
            "same_labels": same, "max_logit_diff": diff}  # fmt: skip


def main() -> None:
    """Set up the package and the states, measure each state's predict processes, write the JSON and the figure."""
    args = parser(__doc__.split("\n")[0], out=Path(__file__).parent / "results", threads=2).parse_args()
    hold_lock(args.lock)
    load_start = load_average()
    work = Path(tempfile.mkdtemp(prefix="predict-runtime-"))
    try:
        made = setup(work, args.threads)
        rows: dict[str, Any] = {}
        for name, personal in made["states"].items():
            rows[name] = row = measure_state(work, personal, args.threads)
            onnx, torch_, int8 = row["onnx"], row["torch"], row["onnx_int8"]
            print(
                f"{name}: onnx {onnx['peak_rss_mb']:.0f} MB {onnx['seconds']:.1f}s, torch "
                f"{torch_['peak_rss_mb']:.0f} MB {torch_['seconds']:.1f}s, same labels {row['same_labels']}, diff "
                f"{row['max_logit_diff']:.1e}; onnx --int8 {int8['peak_rss_mb']:.0f} MB {int8['seconds']:.1f}s"
            )
        report = {
            "benchmark": "predict_runtime",
            "machine": machine_record(load_start, args.threads, workers_import=WORKERS_IMPORT),
            "versions": installed(WORKERS_IMPORT),
            "commit": git_commit()["commit"],
            "user": made["user"],
            "num_test": made["num_test"],
            "target_peak_rss_mb_onnx": TARGET_RSS_MB,
            "rows": rows,
        }
        args.out.mkdir(parents=True, exist_ok=True)
        write_json(args.out / "predict_runtime.json", report)
        plot(report, args.out / "predict_runtime.png")
        print(json.dumps(rows, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
