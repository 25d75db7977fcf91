"""A fused trunk: the transformer fusions of onnxruntime's optimizer applied at export.

``onnxruntime.transformers.optimizer.optimize_model`` rewrites a transformer
graph into onnxruntime's fused operators: ``EmbedLayerNormalization``,
``Attention`` (one op per block: QKV projection, masked softmax, context),
``SkipLayerNormalization`` (residual add + LayerNorm) and ``BiasGelu``. It
matches the op patterns that the **TorchScript** exporter writes
(``torch.onnx.export(dynamo=False)``); on the dynamo graph that the package's
plain trunk comes from it finds almost nothing, so a fused trunk is exported
with the TorchScript exporter first, then optimized.

The optimizer has a pattern set per model type; a family names the one
that fits it (``Family.ort_optimizer_type``). A trunk counts as fused only when every block
in it got a fused attention op: anything less is reported as *not fused*, with
the operator counts and the reason, and the exporter then ships the plain
trunk (a half-fused graph is no faster and harder to reason about).

``opt_level=0``: only the optimizer's own fusions are written into the file;
onnxruntime's generic graph optimizations still run when a session loads it,
as for the plain trunk. The fused graph holds operators of the
``com.microsoft`` domain, which onnxruntime (CPU) runs; other ONNX runtimes may
not.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from device_sim.runtime import TRUNK_INPUTS, TRUNK_OUTPUTS
from edgetune.modeling import SequenceClassifier
from exporters.errors import ExportError
from exporters.onnx_trunk import (
    EXTERNAL_DATA_BYTES,
    OnnxExport,
    TrunkModule,
    _io,
    _module_bytes,
    _quiet_exporter,
    _sample_inputs,
    publish,
    written_opset,
)

OPTIMIZER = "onnxruntime.transformers.optimizer.optimize_model"
EXPORTER = "torch.onnx.export(dynamo=False)"
ATTENTION_OPS = ("Attention", "MultiHeadAttention", "GroupQueryAttention", "PackedAttention", "QAttention")
# Fused ops the int8 quantizer has integer kernels for (QAttention, QEmbedLayerNormalization), beyond MatMul/Gather.
FUSED_INT8_OP_TYPES = ("Attention", "EmbedLayerNormalization")
TORCHSCRIPT_MAX_OPSET = 20


@dataclass
class FusedTrunk:
    """The outcome of a fused export: the written graph (``None`` when the family did not fuse) and its record."""

    export: OnnxExport | None
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def fused(self) -> bool:
        return self.export is not None


def _record(level: str, model_type: str | None, blocks: int, **extra: Any) -> dict[str, Any]:
    import onnxruntime

    return {
        "level": level,
        "requested": "fused",
        "tool": OPTIMIZER,
        "optimizer_model_type": model_type,
        "exporter": EXPORTER,
        "onnxruntime": onnxruntime.__version__,
        "blocks": blocks,
        **extra,
    }


def not_fused_message(record: dict[str, Any]) -> str:
    """One line for the export log and the manifest's warnings when a fused trunk was asked for and not made."""
    return f"--optimize fused: the trunk is not fused ({record['reason']}); the package ships the plain trunk"


def _torchscript_export(module: torch.nn.Module, args: tuple[torch.Tensor, ...], path: Path, opset: int) -> None:
    axes = {0: "batch", 1: "sequence"}
    with _quiet_exporter(), torch.inference_mode(False), torch.no_grad():
        try:
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=list(TRUNK_INPUTS),
                output_names=list(TRUNK_OUTPUTS),
                opset_version=min(opset, TORCHSCRIPT_MAX_OPSET),
                dynamo=False,
                dynamic_axes={name: axes for name in (*TRUNK_INPUTS, *TRUNK_OUTPUTS)},
            )
        except Exception as err:  # the exporter raises many types; name the module and the cause
            raise ExportError(f"torch.onnx (TorchScript) could not export the trunk: {err}") from err


def export_trunk_fused(
    classifier: SequenceClassifier,
    cut: int,
    path: str | Path,
    opset: int,
    external_data: bool | None = None,
    pad_id: int = 0,
) -> FusedTrunk:
    """Export embeddings + blocks 1..``cut`` with the TorchScript exporter, fuse them with onnxruntime's optimizer
    and write the fused graph to ``path`` (not yet verified: see :func:`exporters.onnx_trunk.verify_trunk`).

    Returns the export and its manifest record (``level``, ``fused_ops`` counts, ``attention_fused_blocks``...);
    when the family has no optimizer patterns or not every block's attention fused, nothing is written and the
    record says ``level: none`` with the reason.
    """
    start = time.perf_counter()
    path = Path(path)
    backbone = classifier.backbone
    blocks = len(classifier.kept_layers(0, cut))
    family = backbone.family.name
    model_type = backbone.family.ort_optimizer_type
    if model_type is None:
        reason = f"onnxruntime's transformer optimizer has no fusion patterns for the {family} family"
        return FusedTrunk(None, _record("none", None, blocks, fused_ops={}, reason=reason))
    if external_data is None:
        parts = [backbone.embeddings, *list(backbone.blocks)[:cut]]
        external_data = _module_bytes(parts) > EXTERNAL_DATA_BYTES
    config = backbone.config
    heads = int(getattr(config, "num_attention_heads", 0) or getattr(config, "n_head", 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".ts", dir=path.parent))
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        module = TrunkModule(classifier, cut).eval()
        _torchscript_export(module, _sample_inputs(config.vocab_size, pad_id), scratch / "trunk.onnx", opset)
        from onnxruntime.transformers.optimizer import optimize_model

        with _quiet_exporter():
            optimized = optimize_model(
                str(scratch / "trunk.onnx"),
                model_type=model_type,
                num_heads=heads,
                hidden_size=backbone.hidden_size,
                opt_level=0,
            )
        counts = {op: int(n) for op, n in optimized.get_fused_operator_statistics().items() if n}
        attention = sum(counts.get(op, 0) for op in ATTENTION_OPS)
        extra = {"fused_ops": counts, "attention_fused_blocks": attention}
        if attention < blocks or not counts:
            reason = (
                f"onnxruntime's optimizer (model type {model_type}) fused the attention of {attention} of the "
                f"trunk's {blocks} blocks (fused ops: {counts or 'none'})"
            )
            return FusedTrunk(None, _record("none", model_type, blocks, **extra, reason=reason))
        optimized.save_model_to_file(str(staging / path.name), use_external_data_format=external_data)
        files = publish(staging, path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)
    inputs = [_io(n, "int64", ["batch", "sequence"]) for n in TRUNK_INPUTS]
    outputs = [
        _io(TRUNK_OUTPUTS[0], "float32", ["batch", "sequence", backbone.hidden_size]),
        _io(TRUNK_OUTPUTS[1], "int64", ["batch", "sequence"]),
    ]
    seconds = time.perf_counter() - start
    export = OnnxExport(path, files, written_opset(path), inputs, outputs, seconds)
    return FusedTrunk(export, _record("fused", model_type, blocks, **extra, reason=None))
