"""int8 trunk: onnxruntime dynamic quantization.

Weights become int8 ahead of time; activations are quantized on the fly per
batch (``DynamicQuantizeLinear`` + ``MatMulInteger``), so no calibration data
is needed. Two op types are quantized:

* ``MatMul`` with a constant weight (every projection of every block);
* ``Gather`` (the token, position and type embedding tables): for a small
  encoder the word-embedding table is about half the fp32 trunk, so leaving it
  in fp32 caps the size ratio near 0.65x.

Weights are quantized per output channel by default: one scale per column
keeps the error of the large embedding table and of outlier columns small.
``reduce_range`` (7-bit weights) is for x86 CPUs without VNNI, where
``u8s8`` products can saturate.

The accuracy change is measured by the exporter (fp32 package vs int8 package
on labelled validation data) and recorded in the manifest.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from exporters.errors import ExportError
from exporters.onnx_trunk import publish
from exporters.options import Int8Config


class _DropPreprocessHint(logging.Filter):
    """The quantizer suggests its shape-inference pre-pass, which cannot infer the dynamic shapes of these
    graphs ("Incomplete symbolic shape inference"); quantization does not need it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@contextlib.contextmanager
def _no_preprocess_hint() -> Iterator[None]:
    root = logging.getLogger()
    hint = _DropPreprocessHint()
    root.addFilter(hint)
    try:
        yield
    finally:
        root.removeFilter(hint)


def quantize_trunk(
    src: str | Path, dst: str | Path, config: Int8Config | None = None, external_data: bool = False
) -> list[Path]:
    """Write the int8 version of the ONNX graph ``src`` to ``dst``; with ``external_data`` (a graph past
    protobuf's 2 GiB) the weights go to a side file next to ``dst``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    config = config or Int8Config()
    src, dst = Path(src), Path(dst)
    try:
        weight_type = QuantType[config.weight_type]
    except KeyError:
        raise ExportError(f"unknown int8 weight type {config.weight_type!r} (use QInt8 or QUInt8)") from None
    staging = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent))
    try:
        with _no_preprocess_hint():
            quantize_dynamic(
                src,
                staging / dst.name,
                op_types_to_quantize=list(config.op_types),
                per_channel=config.per_channel,
                reduce_range=config.reduce_range,
                weight_type=weight_type,
                use_external_data_format=external_data,
                extra_options=dict(config.extra),
            )
        return publish(staging, dst)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def size_of(files: Sequence[Path]) -> int:
    return sum(Path(f).stat().st_size for f in files)
