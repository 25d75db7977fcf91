"""``export_package``: a model + a plan -> a verified device package.

Steps (a failure at any of them leaves nothing behind):

1. Load the model: an edgetune classifier checkpoint (``edgetune.json``) or a
   plain Hugging Face model directory; refuse a plan made for another model.
2. Head: a checkpoint keeps its trained head; a plain model gets a logistic
   probe fitted on ``data`` (see :mod:`exporters.head`), or zeros and a warning.
3. Trunk: ONNX export of embeddings + blocks 1..cut, verified against torch on
   real padded batches (:mod:`exporters.onnx_trunk`).
4. Top: blocks cut+1..L + head as safetensors + spec; optionally ONNX (verified).
5. Tokenizer (``tokenizer.json`` + ``encoder.json``); optionally the int8 trunk
   with its size and its accuracy change on labelled validation data.
6. Manifest (file table with sha256 and size, sealed), written last.

Everything is written into a temporary directory next to ``out`` that
replaces ``out`` in one rename at the end (or is packed into ``out.tar``,
written to a temporary file and renamed): a crash at any step leaves the
previous package, if any, untouched and no half package.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from device_sim.fit import token_positions
from device_sim.package import is_package, write_tar
from device_sim.runtime import accuracy, map_batches, ort_session, run_trunk, torch_top_fn
from edgetune.data import LabelMap, TextDataset, load_dataset, stratified_split
from edgetune.formatting import accuracy as percent
from edgetune.formatting import stable_model_id
from edgetune.io import atomic_directory, atomic_write_bytes, atomic_write_json, output_lock, recover
from edgetune.modeling import SequenceClassifier, TopModel
from edgetune.planner.plan import Plan
from edgetune.tokenization import TextEncoder
from edgetune_format import manifest as mf
from edgetune_format.trust import load_signing_key, signature_document
from exporters.errors import ExportError, PlanMismatchError
from exporters.fused import EXPORTER as FUSED_EXPORTER
from exporters.fused import FUSED_INT8_OP_TYPES, export_trunk_fused, not_fused_message
from exporters.head import init_head_from_probe, zero_head
from exporters.onnx_trunk import (
    DEFAULT_VERIFY_TEXTS,
    OnnxExport,
    Parity,
    export_top_onnx,
    export_trunk,
    verification_batches,
    verify_top_onnx,
    verify_trunk,
)
from exporters.options import ExportOptions
from exporters.quantize import quantize_trunk, size_of

TRUNK_FILE = "trunk.onnx"
TRUNK_INT8_FILE = "trunk.int8.onnx"
TOP_NAME = "top"
TOP_ONNX_FILE = "top.onnx"
VERIFY_SAMPLE = 16
DYNAMO = "torch.onnx.export(dynamo=True)"


@dataclass
class ExportResult:
    path: Path
    manifest: dict[str, Any]
    warnings: list[str]
    seconds: float


@dataclass
class Source:
    """The loaded model, its encoder, and what kind of directory it came from."""

    classifier: SequenceClassifier
    encoder: TextEncoder
    kind: str  # checkpoint | huggingface | in-memory
    meta: dict[str, Any]
    path: str


def load_source(model: str | Path, plan: Plan) -> Source:
    """An edgetune classifier checkpoint or a plain Hugging Face model (directory or hub id) at the plan's length."""
    path = Path(model)
    if (path / "edgetune.json").is_file():
        meta = json.loads((path / "edgetune.json").read_text(encoding="utf-8"))
        classifier = SequenceClassifier.from_pretrained(path)
        backbone_dir = path / "backbone"
        if (backbone_dir / "encoder.json").is_file() and (backbone_dir / "tokenizer.json").is_file():
            saved = TextEncoder.from_dir(backbone_dir)
            encoder = TextEncoder(saved.tokenizer, plan.max_length, saved.pad_id, saved.pad_token)
        elif (backbone_dir / "tokenizer_config.json").is_file():
            encoder = TextEncoder.from_pretrained(backbone_dir, plan.max_length)
        else:
            raise FileNotFoundError(
                f"{backbone_dir}: no tokenizer (encoder.json + tokenizer.json, or a Hugging Face tokenizer); "
                "save the checkpoint with its encoder"
            )
        return Source(classifier, encoder, "checkpoint", meta, str(path))
    if path.exists() and not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{path}: neither an edgetune classifier checkpoint (edgetune.json) nor a Hugging Face model "
            "directory (config.json)"
        )
    from edgetune.api import load_model

    backbone, encoder = load_model(model, plan.max_length)
    classifier = SequenceClassifier(backbone, len(plan.labels), plan.labels)
    return Source(classifier, encoder, "huggingface", {}, str(model))


def check_plan(source: Source, plan: Plan) -> str:
    """Refuse a plan made for another model; returns the exported weights' fingerprint.

    A fine-tuned checkpoint no longer hashes like the model its plan was made for (its top layers
    changed); it may then name that model in ``edgetune.json`` as ``base_model_hash``.
    """
    fingerprint = source.classifier.backbone.fingerprint()
    accepted = {fingerprint}
    if source.meta.get("base_model_hash"):
        accepted.add(str(source.meta["base_model_hash"]))
    if plan.model_hash not in accepted:
        hint = (
            " (a fine-tuned checkpoint records the model its plan was made for as base_model_hash in edgetune.json)"
            if source.kind == "checkpoint"
            else ""
        )
        raise PlanMismatchError(
            f"the plan was made for another model: {plan.model_id!r} ({plan.model_type}, {plan.num_layers} layers, "
            f"hash {plan.model_hash[:12]}), but --model {source.path} has hash {fingerprint[:12]}{hint}; "
            "re-run `edgetune plan` on this model"
        )
    if list(source.classifier.labels) != list(plan.labels):
        raise ExportError(
            f"{source.path}: the classifier's labels {source.classifier.labels} differ from the plan's {plan.labels}"
        )
    config = source.classifier.backbone.config
    positions = token_positions({"family": config.model_type, "hf_config": config.to_dict()})
    if positions is not None and plan.max_length > positions:  # the device would refuse such a package
        raise ExportError(
            f"the plan's max_length {plan.max_length} is more than {source.path}'s {positions} token positions; "
            f"re-run `edgetune plan --max-length {positions}` (or less)"
        )
    return fingerprint


def apply_skip_budget(classifier: SequenceClassifier, budget: float | None) -> dict[str, Any] | None:
    """Drop the blocks HadSkip's gates skip for the whole task at ``budget``; what the manifest records.

    The gates' mean probabilities (``hadskip.mean_gate`` in ``edgetune.json``, written by
    ``edgetune skip``) rank the blocks; the round(budget * L) highest are kept. Without a
    budget, blocks the checkpoint already skips stay skipped. ``budget`` is :class:`ExportOptions`'s, which
    checked its range.
    """
    from edgetune.skip import static_keep

    if budget is None:
        if not classifier.skipped_layers:
            return None
        return {"budget": None, "skipped_layers": [i + 1 for i in classifier.skipped_layers]}  # block numbers
    stats = classifier.meta.get("hadskip")
    if not stats or "mean_gate" not in stats:
        raise ExportError(
            "--skip-budget needs a model trained with HadSkip gates (`edgetune skip`); this one has no gate "
            "statistics in its edgetune.json"
        )
    keep = static_keep(np.asarray(stats["mean_gate"]), budget)
    classifier.set_skipped_layers([i for i in range(classifier.num_layers) if i not in keep])
    return {
        "budget": budget,
        "skipped_layers": [i + 1 for i in classifier.skipped_layers],  # block numbers, from 1 (schema version 2)
        "kept_layers": [int(i) + 1 for i in keep],
        "mean_gate": stats["mean_gate"],
        "trained_budget": stats.get("config", {}).get("budget"),
    }


def _as_dataset(data: str | Path | TextDataset | None, plan: Plan, options: ExportOptions) -> TextDataset | None:
    if data is None or isinstance(data, TextDataset):
        return data
    return load_dataset(data, options.text_column or plan.text_column, options.label_column or plan.label_column)


def _verify_texts(datasets: Sequence[TextDataset | None], encoder: TextEncoder) -> list[str]:
    """Up to 16 real texts spread over the length range (short, long, truncated), else built-in sentences."""
    texts = [t for d in datasets if d is not None for t in d.texts]
    if not texts:
        return list(DEFAULT_VERIFY_TEXTS)
    order = np.argsort(encoder.lengths(texts), kind="stable")
    picks = np.unique(np.linspace(0, len(order) - 1, min(VERIFY_SAMPLE, len(order))).round().astype(int))
    return [texts[order[i]] for i in picks]


def _check_out(out: Path, tar: bool) -> Path:
    """Never overwrite something that is not a package: bad input loses nothing."""
    if tar and out.suffix != ".tar":
        out = out.with_name(out.name + ".tar")
    if out.exists():
        if tar and (out.is_dir() or not is_package(out)):
            raise ExportError(f"{out} exists and is not an edgetune package archive; refusing to overwrite it")
        if not tar and (not out.is_dir() or (any(out.iterdir()) and not is_package(out))):
            raise ExportError(f"{out} exists and is not an edgetune package directory; refusing to overwrite it")
    return out


@contextlib.contextmanager
def _staging(out: Path, tar: bool) -> Iterator[Path]:
    if not tar:
        with atomic_directory(out) as tmp:
            yield tmp
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        write_tar(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch
    import transformers

    import edgetune
    from exporters.executorch import versions

    return {
        **versions(),
        "edgetune": edgetune.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def _package_accuracy(
    session: Any, top: Any, encoder: TextEncoder, data: TextDataset, labels: list[str], options: ExportOptions, p: bool
) -> tuple[float, np.ndarray]:
    fn = torch_top_fn(top, lambda ids, mask: run_trunk(session, ids, mask))
    logits = map_batches(encoder, data.texts, fn, options.batch_size, p, "validation")
    return accuracy(logits, data.encoded_labels(LabelMap(tuple(labels)))), logits


def _prepare_head(
    source: Source,
    plan: Plan,
    fit_data: TextDataset | None,
    val: TextDataset | None,
    options: ExportOptions,
    progress: bool,
    warnings: list[str],
) -> tuple[dict[str, Any], TextDataset | None]:
    """Keep a trained head; fit a probe (or zero) the head of a plain model. Returns (head info, validation data)."""
    if source.kind != "huggingface":
        init = "checkpoint" if source.kind == "checkpoint" else "given"
        return {"init": init}, val if val is not None else fit_data
    if fit_data is None:
        zero_head(source.classifier)
        warnings.append(
            "the model has no trained head and no --data was given: the head is zero-initialized, so the "
            "package scores every text the same until it is trained on the device"
        )
        return {"init": "zeros"}, val
    if val is None and options.val_fraction > 0 and len(fit_data) >= 4 * len(plan.labels):
        fit_data, val = stratified_split(fit_data, options.val_fraction, options.seed)
    info = init_head_from_probe(
        source.classifier, source.encoder, fit_data, options.probe_c, options.seed, options.batch_size, progress
    )
    return {"init": "probe", "data": fit_data.source, **info}, val


def _write_top_onnx(
    tmp: Path, top: TopModel, session: Any, encoder: TextEncoder, texts: list[str], options: ExportOptions
) -> dict[str, Any]:
    # Export and check against the top the device's torch runtime builds from top.json + top.safetensors, not the
    # server's module: transformers' SDPA attention skips GPT-2's scale_attn_by_inverse_layer_idx, so a graph
    # traced from it matched its source (2.9e-6) while differing from the device's top by 0.012.
    top = TopModel.load(tmp, TOP_NAME).eval()
    exported = export_top_onnx(top, tmp / TOP_ONNX_FILE, options.opset, options.external_data)
    hidden = [(run_trunk(session, ids, mask), mask) for ids, mask in verification_batches(encoder, texts)]
    parity = verify_top_onnx(top, exported.path, hidden, options.atol, options.threads)
    files = [f.name for f in exported.files]
    names = [i["name"] for i in exported.inputs[2:]]
    return {
        "file": TOP_ONNX_FILE, "files": files, "opset": exported.opset, **exported.io(), "tensors_as_inputs": names,
        "parity": parity.to_dict(),
    }  # fmt: skip


def _write_executorch(
    tmp: Path,
    top: TopModel,
    session: Any,
    encoder: TextEncoder,
    texts: list[str],
    trunk: tuple[SequenceClassifier, int],
    o: ExportOptions,
) -> dict[str, Any]:
    """``top_train.pte`` + ``top.pte``, verified on the ONNX trunk's output for the verification texts, and
    ``trunk.pte`` (with ``--int8`` ``trunk.int8.pte`` too), verified against the torch trunk on them."""
    from exporters.executorch import ExecutorchOptions, write_executorch

    num_labels = int(top.spec["num_labels"])
    batches, id_batches = [], []
    for ids, mask in verification_batches(encoder, texts):
        for start in range(0, len(ids), o.executorch_max_batch):
            i, m = ids[start : start + o.executorch_max_batch], mask[start : start + o.executorch_max_batch]
            labels = (np.arange(len(i)) + start) % num_labels  # every label's gradient path is exercised
            batches.append((run_trunk(session, i, m), m, labels))
            id_batches.append((i, m))
    options = ExecutorchOptions(
        o.executorch_max_batch, encoder.max_length, o.executorch_atol, train_max_batch=o.executorch_train_batch
    )
    return write_executorch(tmp, top, batches, options, (trunk[0], trunk[1], id_batches), int8=o.int8)


def _write_int8(
    tmp: Path,
    trunk: OnnxExport,
    top: TopModel,
    encoder: TextEncoder,
    val: TextDataset | None,
    baseline: tuple[float, np.ndarray] | None,
    labels: list[str],
    options: ExportOptions,
    progress: bool,
    fused: bool = False,
) -> dict[str, Any]:
    """Quantize the trunk; measure its size and, with labelled data, its accuracy against the fp32 package.

    A fused trunk is quantized as it is: its ``Attention`` and ``EmbedLayerNormalization`` ops too (onnxruntime
    has integer kernels for both), so the int8 graph keeps the fusions."""
    config = options.int8_config
    if fused:
        ops = tuple(config.op_types) + tuple(op for op in FUSED_INT8_OP_TYPES if op not in config.op_types)
        # the fused ops' outputs have no inferred type; the quantizer then needs the default one (float)
        config = replace(config, op_types=ops, extra={"DefaultTensorType": 1, **config.extra})
    files = quantize_trunk(trunk.path, tmp / TRUNK_INT8_FILE, config, len(trunk.files) > 1)
    size, fp32_size = size_of(files), size_of(trunk.files)
    entry = {
        "file": TRUNK_INT8_FILE,
        "files": [f.name for f in files],
        "precision": "int8",
        "opset": trunk.opset,
        **trunk.io(),
        "quantization": config.to_dict(),
        "from": "fused" if fused else "plain",
        "size": size,
        "size_ratio": size / fp32_size,
        "accuracy": None,
    }
    if val is not None and baseline is not None:
        session = ort_session(tmp / TRUNK_INT8_FILE, options.threads)
        acc, logits = _package_accuracy(session, top, encoder, val, labels, options, progress)
        entry["accuracy"] = int8_accuracy_record(val, acc, logits, baseline)
    return entry


def int8_accuracy_record(
    val: TextDataset, acc: float, logits: np.ndarray, baseline: tuple[float, np.ndarray]
) -> dict[str, Any]:
    """An int8 trunk's ``accuracy`` record: its accuracy on ``val`` against the fp32 package's (``baseline``: its
    accuracy and logits) and how often the two give the same label."""
    fp32_acc, fp32_logits = baseline
    return {
        "data": val.source,
        "num_examples": len(val),
        "fp32": fp32_acc,
        "int8": acc,
        "delta_points": 100 * (acc - fp32_acc),
        "agreement": float((logits.argmax(1) == fp32_logits.argmax(1)).mean()),
    }


@dataclass
class Written:
    """What an export wrote into its staging directory, as the manifest describes it."""

    trunk: OnnxExport
    parity: Parity
    optimization: dict[str, Any] | None = None  # trunk_optimization (``--optimize``)
    trunk_int8: dict[str, Any] | None = None
    top_onnx: dict[str, Any] | None = None
    executorch: dict[str, Any] | None = None
    validation: dict[str, Any] | None = None


def build_manifest(
    plan: Plan,
    source: Source,
    fingerprint: str,
    skip: dict[str, Any] | None,
    head: dict[str, Any],
    encoder: TextEncoder,
    written: Written,
    warnings: list[str],
    directory: Path,
) -> dict[str, Any]:
    """The package's ``manifest.json`` (unsealed) for the files in ``directory``: what the model is, where it is
    cut, how texts are encoded, and every file with its interface, parity and hash (docs/package-format.md)."""
    classifier, trunk = source.classifier, written.trunk
    fused = bool(written.optimization and written.optimization["level"] == "fused")
    kept = [i + 1 for i in classifier.kept_layers(plan.cut)]  # blocks counted from 1
    return {
        "format": mf.FORMAT,
        "schema_version": mf.SCHEMA_VERSION,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "producer": _versions(),
        "source": {"kind": source.kind, "path": stable_model_id(source.path)},
        "backbone": {
            "id": stable_model_id(plan.model_id),
            "model_type": plan.model_type,
            "family": classifier.backbone.family.name,
            "num_layers": classifier.num_layers,
            "hidden_size": classifier.backbone.hidden_size,
            "pooling": classifier.backbone.pooling,
            "is_decoder": classifier.backbone.is_decoder,
            "hash": fingerprint,
            "plan_hash": plan.model_hash,
        },
        "cut": plan.cut,
        "trainable_layers": kept,
        "skip": skip,
        "labels": list(plan.labels),
        "head": head,
        "plan": plan.to_dict(),
        "tokenizer": {"tokenizer": "tokenizer.json", "encoder": "encoder.json", **encoder.config()},
        "trunk": {
            "file": TRUNK_FILE,
            "files": [f.name for f in trunk.files],
            "precision": "fp32",
            "opset": trunk.opset,
            "exporter": FUSED_EXPORTER if fused else DYNAMO,
            **trunk.io(),
            "parity": written.parity.to_dict(),
            "size": size_of(trunk.files),
        },
        "trunk_optimization": written.optimization,
        "trunk_int8": written.trunk_int8,
        "top": {
            "weights": f"{TOP_NAME}.safetensors",
            "spec": f"{TOP_NAME}.json",
            "blocks": kept,
            "inputs": trunk.outputs[:1] + trunk.inputs[1:],
            "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", len(plan.labels)]}],
        },
        "top_onnx": written.top_onnx,
        "executorch": written.executorch,
        "validation": written.validation,
        "warnings": warnings,
        "files": mf.file_table(directory),
    }


def _load_checked_source(model: str | Path | tuple[SequenceClassifier, TextEncoder], plan: Plan) -> tuple[Source, str]:
    """The model to export and its fingerprint, refused before any work when it is not the one ``plan`` was made for."""
    if isinstance(model, tuple):
        source = Source(model[0], model[1], "in-memory", {}, model[0].backbone.model_id)
    else:
        source = load_source(model, plan)
    return source, check_plan(source, plan)


def _load_data(
    data: str | Path | TextDataset | None, val_data: str | Path | TextDataset | None, plan: Plan, options: ExportOptions
) -> tuple[TextDataset | None, TextDataset | None]:
    """The fit and validation sets, checked against the plan's labels before the (slow) model load."""
    fit_data = _as_dataset(data, plan, options)
    val = _as_dataset(val_data, plan, options)
    for dataset in (fit_data, val):
        if dataset is not None:
            dataset.encoded_labels(LabelMap(tuple(plan.labels)))  # a label the plan does not know names its row
    return fit_data, val


def _write_trunk(
    classifier: SequenceClassifier,
    cut: int,
    encoder: TextEncoder,
    verify_texts: list[str],
    tmp: Path,
    options: ExportOptions,
    say: Callable[[str], None],
    warnings: list[str],
) -> tuple[OnnxExport, Parity, dict[str, Any] | None]:
    """Export the trunk (fused when asked and possible, else plain) and refuse it unless it matches torch."""
    trunk, optimization = None, None
    if options.optimize == "fused":
        fused = export_trunk_fused(
            classifier, cut, tmp / TRUNK_FILE, options.opset, options.external_data is not False, encoder.pad_id
        )
        trunk, optimization = fused.export, fused.record
        if fused.fused:
            say(f"trunk: fused ({', '.join(f'{op} x{n}' for op, n in optimization['fused_ops'].items())})")
        else:
            warnings.append(not_fused_message(optimization))
            say(warnings[-1])
    if trunk is None:
        trunk = export_trunk(
            classifier, cut, tmp / TRUNK_FILE, options.opset, options.external_data is not False, encoder.pad_id
        )
    parity = verify_trunk(classifier, cut, trunk.path, encoder, verify_texts, options.atol, options.threads)
    say(
        f"trunk: {TRUNK_FILE} {size_of(trunk.files) / 1e6:.1f} MB, parity max abs diff "
        f"{parity.max_abs_diff:.2e} (tolerance {options.atol:g}) in {trunk.seconds:.1f}s"
    )
    return trunk, parity, optimization


def _write_top_programs(
    tmp: Path,
    top: TopModel,
    session: Any,
    encoder: TextEncoder,
    verify_texts: list[str],
    trunk: tuple[SequenceClassifier, int],
    options: ExportOptions,
    say: Callable[[str], None],
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The top's optional ONNX and ExecuTorch programs, each verified against the safetensors top."""
    with_top_onnx = options.top_onnx or "executorch" in options.targets  # ExecuTorch devices score with it
    top_onnx = _write_top_onnx(tmp, top, session, encoder, verify_texts, options) if with_top_onnx else None
    if top_onnx:
        say(f"top: {TOP_ONNX_FILE} parity max abs diff {top_onnx['parity']['max_abs_diff']:.2e}")
    executorch = None
    if "executorch" in options.targets:
        executorch = _write_executorch(tmp, top, session, encoder, verify_texts, trunk, options)
        p = executorch["parity"]["max_abs_diff"]
        say(
            f"executorch: {' + '.join(executorch['files'])}, parity loss "
            f"{p['loss']:.2e}, gradients {p['gradients']:.2e}, logits {p['inference_logits']:.2e}, trunk "
            f"{executorch['trunk']['parity']['max_abs_diff']:.2e} "
            f"(tolerance {options.executorch_atol:g}) in {executorch['seconds']:.1f}s"
        )
        if executorch.get("trunk_int8"):
            q = executorch["trunk_int8"]
            say(
                f"executorch: {q['file']} {q['size'] / 1e6:.1f} MB ({q['size_ratio']:.2f}x trunk.pte), "
                f"relative error {q['parity']['relative_error']:.2e} (tolerance {q['parity']['rtol']:g})"
            )
    return top_onnx, executorch


def _measure_int8_program(
    tmp: Path,
    entry: dict[str, Any],
    top: TopModel,
    encoder: TextEncoder,
    val: TextDataset,
    baseline: tuple[float, np.ndarray],
    labels: Sequence[str],
    options: ExportOptions,
    progress: bool,
) -> dict[str, Any]:
    """``trunk.int8.pte``'s accuracy on ``val`` and its predictions' agreement with the fp32 package (the ONNX
    trunk, which ``trunk.pte`` matches within 1e-4), as ``trunk_int8.accuracy`` records the ONNX int8 trunk's."""
    from exporters.executorch import trunk_program_fn

    pte = (tmp / entry["file"]).read_bytes()
    fn = torch_top_fn(top, trunk_program_fn(pte, encoder.pad_id, entry["file"]))
    batch = min(options.batch_size, options.executorch_max_batch)
    logits = map_batches(encoder, val.texts, fn, batch, progress, "validation (int8 .pte)")
    return int8_accuracy_record(val, accuracy(logits, val.encoded_labels(LabelMap(tuple(labels)))), logits, baseline)


def _validate(
    session: Any,
    top: TopModel,
    encoder: TextEncoder,
    val: TextDataset | None,
    labels: list[str],
    options: ExportOptions,
    progress: bool,
    say: Callable[[str], None],
) -> tuple[dict[str, Any] | None, tuple[float, np.ndarray] | None]:
    """The package's accuracy on ``val`` (manifest record, raw result as the int8 baseline); none without data."""
    if val is None:
        return None, None
    baseline = _package_accuracy(session, top, encoder, val, labels, options, progress)
    say(f"validation: package accuracy {percent(baseline[0])} on {len(val)} examples")
    return {"data": val.source, "num_examples": len(val), "accuracy": baseline[0]}, baseline


def _write_int8_trunk(
    tmp: Path,
    trunk: OnnxExport,
    optimization: dict[str, Any] | None,
    top: TopModel,
    encoder: TextEncoder,
    val: TextDataset | None,
    baseline: tuple[float, np.ndarray] | None,
    labels: Sequence[str],
    options: ExportOptions,
    progress: bool,
    say: Callable[[str], None],
    warnings: list[str],
) -> dict[str, Any]:
    """The int8 trunk with its accuracy change, or a warning that the change went unmeasured (no labelled data)."""
    is_fused = bool(optimization and optimization["level"] == "fused")
    trunk_int8 = _write_int8(tmp, trunk, top, encoder, val, baseline, labels, options, progress, is_fused)
    mb, ratio = trunk_int8["size"] / 1e6, trunk_int8["size_ratio"]
    msg = f"int8: {TRUNK_INT8_FILE} {mb:.1f} MB ({ratio:.2f}x fp32)"
    if trunk_int8["accuracy"]:
        a = trunk_int8["accuracy"]
        msg += f", accuracy {percent(a['fp32'])} -> {percent(a['int8'])} ({a['delta_points']:+.2f} points)"
    else:
        warnings.append("--int8 without labelled data: the int8 accuracy change was not measured")
    say(msg)
    return trunk_int8


def export_package(
    model: str | Path | tuple[SequenceClassifier, TextEncoder],
    plan: Plan | str | Path,
    out: str | Path,
    data: str | Path | TextDataset | None = None,
    val_data: str | Path | TextDataset | None = None,
    options: ExportOptions | None = None,
    log: Callable[[str], None] | None = None,
    progress: bool = False,
) -> ExportResult:
    """Export ``model`` cut at ``plan.cut`` as a device package at ``out`` (a directory, or ``out.tar``).

    ``data``: labelled examples; for a plain Hugging Face model the head probe is fitted on them
    (on the part not held out for validation). ``val_data``: labelled validation examples for the
    package's accuracy (and the int8 accuracy change); without it, a ``val_fraction`` of ``data`` is
    held out for a plain model, and all of ``data`` validates a checkpoint's trained head.
    """
    start = time.perf_counter()
    options = options or ExportOptions()
    say = log or (lambda msg: None)
    warnings: list[str] = []
    plan = plan if isinstance(plan, Plan) else Plan.load(plan)
    out = _check_out(Path(out), options.tar)
    signing_key = load_signing_key(options.sign) if options.sign is not None else None  # a bad key fails first
    with output_lock(out):  # one export per output; what a killed export left next to it is swept
        recover(out.parent, [out.name])
        fit_data, val = _load_data(data, val_data, plan, options)  # bad data fails before the model is loaded
        source, fingerprint = _load_checked_source(model, plan)
        classifier, encoder = source.classifier.eval(), source.encoder
        skip = apply_skip_budget(classifier, options.skip_budget)
        if skip:
            say(f"skip: budget {skip['budget']:.2f}, blocks {skip['skipped_layers']} are not exported")
        say(f"model: {source.kind} {source.path} ({plan.model_type}, {plan.num_layers} layers), cut {plan.cut}")
        head, val = _prepare_head(source, plan, fit_data, val, options, progress, warnings)
        if head["init"] == "probe":
            n, acc = head["num_examples"], head["train_accuracy"]
            say(f"head: logistic probe on {n} examples (train accuracy {percent(acc)})")

        top = classifier.detached_top(plan.cut).eval()
        verify_texts = _verify_texts([fit_data, val], encoder)
        with _staging(out, options.tar) as tmp:
            trunk, parity, optimization = _write_trunk(
                classifier, plan.cut, encoder, verify_texts, tmp, options, say, warnings
            )
            top.save(tmp, TOP_NAME)
            encoder.save(tmp)
            session = ort_session(trunk.path, options.threads)
            top_onnx, executorch = _write_top_programs(
                tmp, top, session, encoder, verify_texts, (classifier, plan.cut), options, say
            )
            validation, baseline = _validate(session, top, encoder, val, plan.labels, options, progress, say)
            if executorch and executorch.get("trunk_int8") and val is not None and baseline is not None:
                q = executorch["trunk_int8"]
                q["accuracy"] = _measure_int8_program(
                    tmp, q, top, encoder, val, baseline, plan.labels, options, progress
                )
                a = q["accuracy"]
                say(f"executorch: {q['file']} accuracy {percent(a['fp32'])} -> {percent(a['int8'])} "
                    f"({a['delta_points']:+.2f} points), agreement {a['agreement']:.3f}")  # fmt: skip
            trunk_int8 = None
            if options.int8:
                trunk_int8 = _write_int8_trunk(
                    tmp, trunk, optimization, top, encoder, val, baseline, plan.labels, options, progress, say,
                    warnings,
                )  # fmt: skip
            written = Written(trunk, parity, optimization, trunk_int8, top_onnx, executorch, validation)
            manifest = build_manifest(plan, source, fingerprint, skip, head, encoder, written, warnings, tmp)
            if options.release:
                manifest["release"] = {"name": options.release, "version": int(options.release_version or 1)}
            manifest = mf.seal(manifest)
            atomic_write_json(tmp / mf.MANIFEST, manifest)  # last: a directory without it is no package
            if signing_key is not None:  # over the bytes just written, exactly as a device will read them
                signed = signature_document((tmp / mf.MANIFEST).read_bytes(), signing_key)
                atomic_write_bytes(tmp / mf.SIGNATURE, signed)
                say(f"signed with key {signing_key.key_id[:16]} (release {options.release} "
                    f"version {manifest['release']['version']})")  # fmt: skip
        say(f"wrote {out}")
        return ExportResult(out, manifest, warnings, time.perf_counter() - start)
