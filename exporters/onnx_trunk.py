"""The frozen trunk (embeddings + blocks 1..cut) as ONNX, verified against torch; the top too, on request.

Export goes through ``torch.onnx.export(dynamo=True)`` (the ``torch.export``
based exporter; the TorchScript one is deprecated) with dynamic batch and
sequence axes, at opset 18, which every onnxruntime >= 1.14 runs. The graph
takes ``input_ids`` and ``attention_mask`` (int64, right padded) and returns
the hidden state at the cut and the attention mask, which is exactly what the
device caches to train the top layers.

An export is only as good as its parity: :func:`verify_onnx` runs the ONNX
graph in onnxruntime and the torch module on the same real, padded batches and
raises :class:`ParityError` naming the max abs difference when it exceeds the
tolerance (1e-4 in fp32). Padding positions are left out of the comparison:
every consumer of the trunk output (attention of the top blocks, pooling)
masks them, so their values carry no information.

The top (blocks cut+1..L, norm, pooling, head) can be exported the same way
for devices that only run inference; it is verified on trunk outputs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from device_sim.runtime import TOP_INPUTS, TOP_OUTPUTS, TRUNK_INPUTS, TRUNK_OUTPUTS, ort_session
from edgetune.io import fsync_dir
from edgetune.modeling import SequenceClassifier, TopModel
from edgetune.tokenization import TextEncoder
from exporters.errors import ExportError, ParityError
from exporters.options import DEFAULT_ATOL, DEFAULT_OPSET

# Protobuf cannot hold more than 2 GiB: larger graphs keep their weights in a side file.
EXTERNAL_DATA_BYTES = 1_800_000_000

# Sentences of varied length for the parity check when no data is given.
DEFAULT_VERIFY_TEXTS = (
    "Hello.",
    "The market opened higher this morning after the central bank held interest rates.",
    "A short note",
    "She scored twice in the second half, and the crowd stayed on its feet until the final whistle blew "
    "at the end of a long and tense evening.",
    "New phone, same battery problems?",
    "Parliament will vote on the proposed law next week, ministers said on Tuesday.",
    "ok",
    "The film, which premiered at the festival last year, has been praised for its score and its cast.",
)


class TrunkModule(nn.Module):
    """``(input_ids, attention_mask) -> (h_cut, attention_mask)`` of a classifier: the exported graph."""

    def __init__(self, classifier: SequenceClassifier, cut: int) -> None:
        super().__init__()
        if not 0 <= cut <= classifier.num_layers:
            raise ExportError(f"cut must be in 0..{classifier.num_layers}, got {cut}")
        self.classifier = classifier
        self.cut = cut

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.classifier.trunk_forward(input_ids, attention_mask, self.cut), attention_mask


@dataclass
class OnnxExport:
    """What an export wrote: the graph file (+ its external weights file, if any) and its interface."""

    path: Path
    files: list[Path]
    opset: int
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    seconds: float

    def io(self) -> dict[str, Any]:
        return {"inputs": self.inputs, "outputs": self.outputs}


@dataclass
class Parity:
    """Result of an ONNX-vs-torch comparison."""

    max_abs_diff: float
    atol: float
    num_texts: int
    batch_shapes: list[list[int]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's informational logging and warnings (its errors still raise)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _sample_inputs(vocab_size: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch 2, length 8, second row padded: sizes > 1 so neither axis is specialized."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, max(2, min(vocab_size, 1000)), (2, 8), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    ids[1, 5:] = pad_id
    return ids, mask


def _module_bytes(modules: Sequence[nn.Module]) -> int:
    seen: set[int] = set()
    total = 0
    for m in modules:
        for t in [*m.parameters(), *m.buffers()]:
            if id(t) not in seen:
                seen.add(id(t))
                total += t.numel() * t.element_size()
    return total


def written_opset(path: Path) -> int:
    """The default-domain opset a written ONNX file declares (what the manifest records, never the request)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _export(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_shapes: dict[str, dict[int, Any]],
    path: Path,
    opset: int,
    external_data: bool,
) -> list[Path]:
    """torch.onnx (dynamo) export of ``module`` to ``path``; files are moved in only when complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _quiet_exporter(), torch.inference_mode(False), torch.no_grad():
        try:
            program = torch.onnx.export(
                module,
                args,
                None,
                input_names=list(input_names),
                output_names=list(output_names),
                opset_version=opset,
                dynamo=True,
                dynamic_shapes=dynamic_shapes,
                verbose=False,
            )
        except Exception as err:  # the exporter raises many types; name the module and the cause
            raise ExportError(f"torch.onnx could not export {type(module).__name__}: {err}") from err
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        with _quiet_exporter():
            program.save(tmp / path.name, external_data=external_data)
        return publish(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish(staging: Path, path: Path) -> list[Path]:
    """Move the files written in ``staging`` next to ``path``: side files first, ``path`` itself last,
    each durable before it is renamed, so ``path`` never names a graph whose weights are missing."""
    written = sorted(staging.iterdir(), key=lambda p: p.name == path.name)
    if not written or written[-1].name != path.name:
        raise ExportError(f"{path.name}: the exporter wrote no such file")
    for f in written:
        with open(f, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(f, path.parent / f.name)
    fsync_dir(path.parent)
    return [path.parent / f.name for f in written]


def _io(name: str, dtype: str, shape: list[Any]) -> dict[str, Any]:
    return {"name": name, "dtype": dtype, "shape": shape}


def export_trunk(
    classifier: SequenceClassifier,
    cut: int,
    path: str | Path,
    opset: int = DEFAULT_OPSET,
    external_data: bool | None = None,
    pad_id: int = 0,
) -> OnnxExport:
    """Export embeddings + blocks 1..``cut`` of ``classifier`` to ``path`` (not yet verified).

    ``external_data=None`` keeps the weights inside the graph unless they would
    pass protobuf's 2 GiB limit; the side file is then ``<path>.data``.
    """
    start = time.perf_counter()
    module = TrunkModule(classifier, cut).eval()
    backbone = classifier.backbone
    if external_data is None:
        parts = [backbone.embeddings, *list(backbone.blocks)[:cut]]
        if backbone.rotary is not None:
            parts.append(backbone.rotary)
        external_data = _module_bytes(parts) > EXTERNAL_DATA_BYTES
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    axes = {0: batch, 1: seq}
    files = _export(
        module,
        _sample_inputs(backbone.config.vocab_size, pad_id),
        TRUNK_INPUTS,
        TRUNK_OUTPUTS,
        {TRUNK_INPUTS[0]: axes, TRUNK_INPUTS[1]: axes},
        Path(path),
        opset,
        external_data,
    )
    inputs = [_io(n, "int64", ["batch", "sequence"]) for n in TRUNK_INPUTS]
    outputs = [
        _io(TRUNK_OUTPUTS[0], "float32", ["batch", "sequence", backbone.hidden_size]),
        _io(TRUNK_OUTPUTS[1], "int64", ["batch", "sequence"]),
    ]
    return OnnxExport(Path(path), files, written_opset(Path(path)), inputs, outputs, time.perf_counter() - start)


def top_tensor_names(top: TopModel) -> list[str]:
    """The top's trained tensors in graph-input order (the names they have in ``top.safetensors``)."""
    return [name for name, _ in top.named_parameters()]


def export_top_onnx(
    top: TopModel, path: str | Path, opset: int = DEFAULT_OPSET, external_data: bool | None = None
) -> OnnxExport:
    """Export the top (blocks cut+1..L, norm, pooling, head) with its tensors as graph **inputs**.

    Inputs: ``hidden_state``, ``attention_mask``, then every tensor of ``top.safetensors`` that the top trains,
    under its own name; output ``logits``. One graph serves the package's global top and any personal state:
    the runtime feeds the package's tensors with the personal ones in their place (:mod:`device_sim.apply`),
    nothing is re-exported on the device.
    """
    start = time.perf_counter()
    top = top.eval()
    names = top_tensor_names(top)
    hidden_size = int(top.spec["hidden_size"])
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 8, hidden_size, generator=gen)
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 5:] = 0
    if external_data is None:
        external_data = _module_bytes([top]) > EXTERNAL_DATA_BYTES

    class TensorsAsInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.top = top

        def forward(
            self, hidden: torch.Tensor, attention_mask: torch.Tensor, tensors: list[torch.Tensor]
        ) -> torch.Tensor:
            return torch.func.functional_call(self.top, dict(zip(names, tensors)), (hidden, attention_mask))

    tensors = [p.detach().clone() for p in top.parameters()]
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    files = _export(
        TensorsAsInputs(),
        (hidden, mask, tensors),
        [*TOP_INPUTS, *names],
        TOP_OUTPUTS,
        {"hidden": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}, "tensors": [None] * len(tensors)},
        Path(path),
        opset,
        external_data,
    )
    inputs = [
        _io(TOP_INPUTS[0], "float32", ["batch", "sequence", hidden_size]),
        _io(TOP_INPUTS[1], "int64", ["batch", "sequence"]),
        *(_io(n, "float32", list(t.shape)) for n, t in zip(names, tensors)),
    ]
    outputs = [_io(TOP_OUTPUTS[0], "float32", ["batch", int(top.spec["num_labels"])])]
    return OnnxExport(Path(path), files, written_opset(Path(path)), inputs, outputs, time.perf_counter() - start)


def verification_batches(encoder: TextEncoder, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """All texts in one right-padded batch (mixed lengths), and the shortest and longest alone (no padding)."""
    if not texts:
        raise ExportError("no texts to verify the export with")
    lengths = encoder.lengths(texts)
    singles = sorted({int(np.argmin(lengths)), int(np.argmax(lengths))})
    batches = [encoder(list(texts))]
    batches += [encoder([texts[i]]) for i in singles]
    return batches


def _max_diff(got: np.ndarray, want: np.ndarray, mask: np.ndarray | None) -> float:
    """Max abs difference (over real tokens when ``mask`` is given); inf if the graph produced NaN/inf."""
    if mask is not None:
        keep = mask.astype(bool)
        got, want = got[keep], want[keep]
    if got.size == 0:
        return 0.0
    if not np.isfinite(got).all():
        return float("inf")
    return float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max())


def verify_trunk(
    classifier: SequenceClassifier,
    cut: int,
    onnx_path: str | Path,
    encoder: TextEncoder,
    texts: Sequence[str] = DEFAULT_VERIFY_TEXTS,
    atol: float = DEFAULT_ATOL,
    threads: int | None = None,
) -> Parity:
    """Compare the ONNX trunk with ``classifier.trunk_forward`` on real, padded batches.

    Raises :class:`ParityError` (max abs diff, tolerance, file) when they differ by more than ``atol``.
    """
    session = ort_session(onnx_path, threads)
    worst, shapes = 0.0, []
    classifier.eval()
    for ids, mask in verification_batches(encoder, texts):
        with torch.inference_mode():
            want = classifier.trunk_forward(torch.from_numpy(ids), torch.from_numpy(mask), cut).float().numpy()
        got, mask_out = session.run(list(TRUNK_OUTPUTS), {TRUNK_INPUTS[0]: ids, TRUNK_INPUTS[1]: mask})
        if got.shape != want.shape or not np.array_equal(mask_out, mask):
            raise ParityError(
                f"{onnx_path}: ONNX trunk returned shapes {got.shape}/{mask_out.shape} for input {ids.shape}, "
                f"torch returned {want.shape}",
                float("inf"),
            )
        worst = max(worst, _max_diff(got, want, mask))
        shapes.append(list(ids.shape))
    if not worst <= atol:
        raise ParityError(
            f"{onnx_path}: ONNX trunk differs from the torch trunk by max abs diff {worst:.3g} "
            f"(tolerance {atol:g}) on {len(texts)} texts; the export is not usable",
            worst,
        )
    return Parity(worst, atol, len(texts), shapes)


def verify_top_onnx(
    top: TopModel,
    onnx_path: str | Path,
    hidden_batches: Sequence[tuple[np.ndarray, np.ndarray]],
    atol: float = DEFAULT_ATOL,
    threads: int | None = None,
) -> Parity:
    """Compare the ONNX top with the torch top on trunk outputs; :class:`ParityError` beyond ``atol``."""
    session = ort_session(onnx_path, threads)
    tensors = {n: p.detach().numpy() for n, p in top.named_parameters()}
    worst, shapes = 0.0, []
    top.eval()
    for hidden, mask in hidden_batches:
        with torch.inference_mode():
            want = top(torch.from_numpy(hidden), torch.from_numpy(mask)).float().numpy()
        got = session.run(list(TOP_OUTPUTS), {TOP_INPUTS[0]: hidden, TOP_INPUTS[1]: mask, **tensors})[0]
        if got.shape != want.shape:
            raise ParityError(f"{onnx_path}: ONNX top returned {got.shape}, torch {want.shape}", float("inf"))
        worst = max(worst, _max_diff(got, want, None))
        shapes.append(list(hidden.shape))
    if not worst <= atol:
        raise ParityError(
            f"{onnx_path}: ONNX top differs from the torch top by max abs diff {worst:.3g} (tolerance {atol:g})",
            worst,
        )
    return Parity(worst, atol, sum(s[0] for s in shapes), shapes)
