"""Exporters: a model + a plan -> a verified device package.

The exporter writes packages; the device runtime (``device_sim.package``)
reads and verifies them, as ExecuTorch's exporter and runtime are split. The
reader's names are re-exported here for convenience. Names are imported
lazily, so ``import exporters`` loads none of the export machinery (torch.onnx,
onnxruntime.quantization, transformers' model loading).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "export_package": "exporters.export",
    "ExportOptions": "exporters.options",
    "ExportResult": "exporters.export",
    "Int8Config": "exporters.options",
    "export_trunk": "exporters.onnx_trunk",
    "verify_trunk": "exporters.onnx_trunk",
    "load_package": "device_sim.package",
    "verify_package": "device_sim.package",
    "DevicePackage": "device_sim.package",
    "PackageError": "edgetune_format.errors",
    "ExportError": "exporters.errors",
    "ParityError": "exporters.errors",
    "PlanMismatchError": "exporters.errors",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'exporters' has no attribute {name!r}")


__all__ = list(_LAZY)
