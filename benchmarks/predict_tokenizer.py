"""`predict` from text to labels in onnxruntime alone: the in-graph tokenizer (onnxruntime-extensions) vs tokenizers.

    python benchmarks/predict_tokenizer.py [--threads 2] [--texts 200] [--rounds 3] [--out benchmarks/results]

Model all-MiniLM-L6-v2, data BBC news: a top-1 plan (last block + head) and its package (probe head, ``top.onnx``)
on a stratified quarter of the corpus; the first ``--texts`` of the other texts are labelled. Each side is one
``edgetune predict --runtime onnx`` process (``--threads`` threads), started ``--rounds`` times in turn:

* ``tokenizers``: ``--tokenizer tokenizers``, torch made unimportable (as ``predict_runtime.py``'s onnx side);
* ``onnx``: ``--tokenizer onnx`` with torch, tokenizers and transformers unimportable: a device with onnxruntime
  and onnxruntime-extensions only.

Reported per side: the peak RSS of the process (sampled every 20 ms; median and max over rounds) and its wall
time; both sides' labels must be identical on every text. Results: ``predict_tokenizer.json`` in ``--out``.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from device_runtime import no_dropout_model, run_measured  # benchmarks/ is on sys.path when run as a script
from harness import load_average, machine_record, parser, write_json

BLOCK = {
    "tokenizers": "import sys; sys.modules['torch'] = None",
    "onnx": "import sys; [sys.modules.__setitem__(m, None) for m in ('torch', 'tokenizers', 'transformers')]",
}
RUN = "; from edgetune_cli import app; app()"


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--texts", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    load_start = load_average()

    from edgetune.api import plan
    from edgetune.data import TextDataset, stratified_split
    from edgetune.datasets import bbc_news, minilm_path
    from exporters.export import ExportOptions, export_package

    work = Path(tempfile.mkdtemp(prefix="predict-tokenizer-"))
    try:
        server, rest = stratified_split(bbc_news(), test_size=0.75, seed=0)
        model = no_dropout_model(Path(minilm_path()), work / "model")
        planned = plan(str(model), server, planner="topk", planner_params={"k": 1}, max_length=128, progress=False)
        export_package(model, planned, work / "pkg", data=server, options=ExportOptions(threads=args.threads))
        texts = rest.texts[: args.texts]
        TextDataset(texts, [rest.labels[0]] * len(texts), source="bbc").to_csv(work / "texts.csv")
        cli = ["predict", "--package", str(work / "pkg"), "--data", str(work / "texts.csv"), "--runtime", "onnx"]
        cli += ["--threads", str(args.threads)]
        env = {**os.environ, "EDGETUNE_NO_PROGRESS": "1", "OMP_NUM_THREADS": str(args.threads)}
        runs: dict[str, list[dict]] = {side: [] for side in BLOCK}
        labels: dict[str, list[str]] = {}
        for _ in range(args.rounds):
            for side, block in BLOCK.items():
                cmd = [sys.executable, "-c", block + RUN, *cli, "--tokenizer", side]
                done, peak, seconds = run_measured(cmd, env)
                if done.returncode != 0:
                    raise RuntimeError(f"{side}: predict failed:\n{done.stderr[-3000:]}")
                runs[side].append({"peak_rss_mb": peak, "seconds": seconds})
                labels[side] = done.stdout.split()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    same = sum(a == b for a, b in zip(labels["tokenizers"], labels["onnx"]))
    result = {
        "model": "all-MiniLM-L6-v2", "cut": planned.cut, "texts": len(texts), "rounds": args.rounds,
        "sides": {side: {"runs": r, "peak_rss_mb_median": statistics.median(x["peak_rss_mb"] for x in r),
                         "peak_rss_mb_max": max(x["peak_rss_mb"] for x in r),
                         "seconds_median": statistics.median(x["seconds"] for x in r)} for side, r in runs.items()},
        "labels_identical": same, "labels_total": len(labels["onnx"]),
        "machine": machine_record(load_start, args.threads, ("onnxruntime", "onnxruntime_extensions", "tokenizers")),
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "predict_tokenizer.json", result)
    for side, row in result["sides"].items():
        print(f"{side:10s} peak RSS {row['peak_rss_mb_median']:.0f} MB (max {row['peak_rss_mb_max']:.0f}), "
              f"{row['seconds_median']:.1f} s")  # fmt: skip
    print(f"labels identical: {same} of {len(labels['onnx'])}")


if __name__ == "__main__":
    main()
