"""JSON that strict parsers accept: no NaN, Infinity or -Infinity, which Python's json writes by default.

A number that does not exist (a ratio over zero, the mean of nothing) is written as ``null``; the readers of
this project's files and its tables show it as such ("n/a", "-"), never as ``inf``.
"""

from __future__ import annotations

import json
import math
from typing import Any


def finite(obj: Any) -> Any:
    """``obj`` with every non-finite float (also numpy's) replaced by ``None``; containers copied, tuples as lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    if hasattr(obj, "dtype") and hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:  # a numpy scalar
        return finite(obj.item())
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """:func:`json.dumps` of :func:`finite` ``(obj)``, refusing anything non-finite left (``allow_nan=False``)."""
    return json.dumps(finite(obj), allow_nan=False, **kwargs)
