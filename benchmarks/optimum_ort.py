"""optimum's ORTOptimizer / ORTQuantizer next to the exporter's own fused and int8 trunks, on the same cut trunk.

    python benchmarks/optimum_ort.py [--cut 4] [--threads 2] [--calls 30] [--out benchmarks/results]

Model: all-MiniLM-L6-v2 (bundled), the trunk cut at block ``--cut`` (embeddings + blocks 1..cut), exported once
with the TorchScript exporter (what both optimizers match patterns on). optimum cannot cut a model at a block
(huggingface/optimum#2148): its exporter writes whole models, so both sides here start from the exporter's
trunk graph; optimum is given it as an ONNX model directory with the backbone's ``config.json``.

Sides:

* ``ours_fused``: :func:`exporters.fused.export_trunk_fused` (``optimize_model``, ``opt_level=0``);
* ``optimum_fused``: ``ORTOptimizer`` with ``AutoOptimizationConfig.O2()`` (fusions + onnxruntime's extended
  graph optimizations written into the file);
* ``ours_int8``: :func:`exporters.quantize.quantize_trunk` on ``ours_fused`` (MatMul, Gather, Attention,
  EmbedLayerNormalization; per channel), as ``edgetune export --optimize fused --int8`` does;
* ``optimum_int8``: ``ORTQuantizer`` with ``AutoQuantizationConfig.avx512_vnni(is_static=False,
  per_channel=True)`` (optimum's dynamic-quantization default operators). It is tried on ``optimum_fused`` first
  (recorded under ``failures`` when it fails: onnxruntime's quantizer needs ``DefaultTensorType`` for the fused
  ops' untyped outputs, which ORTQuantizer does not pass), then run on the unfused TorchScript trunk.

Reported per side: graph nodes and the fused-op counts, file size, the median latency of ``--calls`` calls at
batch 1 and batch 8 (128 tokens of real BBC text per row; the sides timed in turn, round after round, so load
on this shared machine falls on all of them alike) and its ratio to ``ours_fused``, and the max abs difference of
the hidden state (real tokens) from the torch trunk over 32 BBC texts. Results: ``optimum_ort.json`` and
``optimum_ort.png`` in ``--out``.
"""

from __future__ import annotations

import collections
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from harness import load_average, machine_record, parser, write_figure, write_json


def _graph(path: Path) -> dict[str, Any]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    ops = collections.Counter(n.op_type for n in model.graph.node)
    fused = ("Attention", "EmbedLayerNormalization", "SkipLayerNormalization", "BiasGelu", "FastGelu",
             "QAttention", "QEmbedLayerNormalization", "MatMulInteger", "DynamicQuantizeMatMul")  # fmt: skip
    size = sum(p.stat().st_size for p in path.parent.iterdir() if p.name.startswith(path.name))
    return {"nodes": sum(ops.values()), "fused_ops": {k: ops[k] for k in fused if ops[k]}, "bytes": size}


def _optimum_dir(trunk: Path, config: Any, where: Path) -> Path:
    """The trunk graph as optimum reads a model: ``model.onnx`` beside the backbone's ``config.json``."""
    where.mkdir(parents=True)
    shutil.copy(trunk, where / "model.onnx")
    config.save_pretrained(where)
    return where


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--cut", type=int, default=4)
    ap.add_argument("--calls", type=int, default=30)
    args = ap.parse_args()
    load_start = load_average()

    import torch
    from optimum.onnxruntime import ORTOptimizer, ORTQuantizer
    from optimum.onnxruntime.configuration import AutoOptimizationConfig, AutoQuantizationConfig

    from device_sim.runtime import ort_session
    from edgetune.api import load_model
    from edgetune.datasets import bbc_news, minilm_path
    from edgetune.modeling import SequenceClassifier
    from exporters.fused import FUSED_INT8_OP_TYPES, _torchscript_export, export_trunk_fused
    from exporters.onnx_trunk import TrunkModule, _sample_inputs
    from exporters.options import INT8_OP_TYPES, Int8Config
    from exporters.quantize import quantize_trunk

    torch.set_num_threads(args.threads)
    backbone, encoder = load_model(minilm_path(), 128)
    classifier = SequenceClassifier(backbone, 2, ["a", "b"]).eval()
    texts = bbc_news().texts[:32]
    work = Path(tempfile.mkdtemp(prefix="optimum-ort-"))
    try:
        paths: dict[str, Path] = {}
        seconds: dict[str, float] = {}
        start = time.perf_counter()
        fused = export_trunk_fused(classifier, args.cut, work / "ours" / "trunk.onnx", 18)
        paths["ours_fused"], seconds["ours_fused"] = fused.export.path, time.perf_counter() - start
        start = time.perf_counter()
        ops = (*INT8_OP_TYPES, *FUSED_INT8_OP_TYPES)
        quantize_trunk(paths["ours_fused"], work / "ours" / "trunk.int8.onnx",
                       Int8Config(op_types=ops, extra={"DefaultTensorType": 1}))  # fmt: skip
        paths["ours_int8"], seconds["ours_int8"] = work / "ours" / "trunk.int8.onnx", time.perf_counter() - start

        ts = work / "ts" / "trunk.onnx"
        ts.parent.mkdir()
        module = TrunkModule(classifier, args.cut).eval()
        _torchscript_export(module, _sample_inputs(backbone.config.vocab_size, encoder.pad_id), ts, 18)
        start = time.perf_counter()
        optimizer = ORTOptimizer.from_pretrained(_optimum_dir(ts, backbone.config, work / "optimum"))
        optimizer.optimize(AutoOptimizationConfig.O2(), save_dir=work / "optimum-fused")
        paths["optimum_fused"] = work / "optimum-fused" / "model_optimized.onnx"
        seconds["optimum_fused"] = time.perf_counter() - start
        qconfig = AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=True)
        failures: dict[str, str] = {}
        try:  # the fused graph first, as ours; ORTQuantizer exposes no DefaultTensorType for the fused ops
            ORTQuantizer.from_pretrained(work / "optimum-fused", file_name="model_optimized.onnx").quantize(
                save_dir=work / "optimum-int8-fused", quantization_config=qconfig
            )
        except Exception as err:  # noqa: BLE001 (recorded: the measurement is whether it works)
            failures["optimum_int8_from_fused"] = f"{type(err).__name__}: {str(err)[:300]}"
        start = time.perf_counter()
        quantizer = ORTQuantizer.from_pretrained(work / "optimum", file_name="model.onnx")  # the unfused graph
        quantizer.quantize(save_dir=work / "optimum-int8", quantization_config=qconfig)
        paths["optimum_int8"] = work / "optimum-int8" / "model_quantized.onnx"
        seconds["optimum_int8"] = time.perf_counter() - start

        ids, mask = encoder(texts)
        with torch.inference_mode():
            want = module(torch.from_numpy(ids), torch.from_numpy(mask))[0].numpy()
        real = mask.astype(bool)
        sessions = {name: ort_session(path, args.threads) for name, path in paths.items()}
        rows: dict[str, dict[str, Any]] = {}
        for name, session in sessions.items():
            got = session.run(["hidden_state"], {"input_ids": ids, "attention_mask": mask})[0]
            rows[name] = {**_graph(paths[name]), "seconds_to_make": seconds[name],
                          "max_abs_diff_vs_torch": float(np.abs(got[real] - want[real]).max())}  # fmt: skip

        long_ids = [row for row in encoder(bbc_news().texts[32:200])[0] if (row != encoder.pad_id).all()]
        timings: dict[str, dict[int, list[float]]] = {name: {1: [], 8: []} for name in sessions}
        for batch in (1, 8):
            feed = {"input_ids": np.stack(long_ids[:batch]), "attention_mask": np.ones((batch, 128), np.int64)}
            for session in sessions.values():
                session.run(["hidden_state"], feed)  # warm-up
            for _ in range(args.calls):
                for name, session in sessions.items():  # in turn: the machine's load falls on every side
                    t = time.perf_counter()
                    session.run(["hidden_state"], feed)
                    timings[name][batch].append(time.perf_counter() - t)
        for name in sessions:
            for batch in (1, 8):
                ms = 1000 * float(np.median(timings[name][batch]))
                rows[name][f"ms_batch{batch}"] = ms
                base = 1000 * float(np.median(timings["ours_fused"][batch]))
                rows[name][f"latency_ratio_batch{batch}_vs_ours_fused"] = ms / base
    finally:
        shutil.rmtree(work, ignore_errors=True)

    result = {
        "model": "all-MiniLM-L6-v2", "cut": args.cut, "max_length": 128, "calls": args.calls,
        "sides": rows,
        "failures": failures,
        "note": "optimum cannot cut a model at a block (huggingface/optimum#2148): both sides start from the "
                "exporter's TorchScript trunk graph; ORTOptimizer calls the same onnxruntime optimize_model",
        "machine": machine_record(load_start, args.threads),
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "optimum_ort.json", result)
    _figure(rows, args.out / "optimum_ort.png")
    for name, row in rows.items():
        print(f"{name:14s} nodes {row['nodes']:4d}  {row['bytes'] / 1e6:6.1f} MB  b1 {row['ms_batch1']:7.2f} ms  "
              f"b8 {row['ms_batch8']:7.2f} ms  diff {row['max_abs_diff_vs_torch']:.2e}")  # fmt: skip


def _figure(rows: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, key, title in ((axes[0], "nodes", "graph nodes"), (axes[1], "bytes", "file size (MB)"),
                           (axes[2], "ms_batch8", "ms per call, batch 8 x 128 tokens")):  # fmt: skip
        values = [rows[n][key] / (1e6 if key == "bytes" else 1) for n in names]
        ax.bar(names, values, color=["#4c72b0", "#dd8452", "#4c72b0", "#dd8452"][: len(names)])
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle("MiniLM trunk: edgetune's fused/int8 (blue) vs optimum's ORTOptimizer/ORTQuantizer (orange)")
    fig.tight_layout()
    write_figure(fig, path)


if __name__ == "__main__":
    main()
