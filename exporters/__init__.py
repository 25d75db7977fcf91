"""Exporters: a model + a plan -> a verified device package, and the reader a device loads it with.

Names are imported lazily: a device that only reads packages
(``exporters.package``) never imports the export machinery (torch.onnx,
onnxruntime.quantization, transformers' model loading).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "export_package": "exporters.export",
    "ExportOptions": "exporters.export",
    "ExportResult": "exporters.export",
    "Int8Config": "exporters.quantize",
    "export_trunk": "exporters.onnx_trunk",
    "verify_trunk": "exporters.onnx_trunk",
    "load_package": "exporters.package",
    "verify_package": "exporters.package",
    "DevicePackage": "exporters.package",
    "PackageError": "exporters.errors",
    "ExportError": "exporters.errors",
    "ParityError": "exporters.errors",
    "PlanMismatchError": "exporters.errors",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'exporters' has no attribute {name!r}")


__all__ = list(_LAZY)
