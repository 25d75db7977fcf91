"""edgetune: plan where to fine-tune a transformer, export a device package, personalize on the device.

The top-level names are imported lazily so that light users (the device side)
do not pay for the server-side machinery they never call.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from edgetune.quiet import quiet_third_party

__version__ = "0.1.0"

# Before torch or transformers can be imported through this package (edgetune/quiet.py says why).
quiet_third_party()

_LAZY = {
    "plan": "edgetune.api",
    "load_model": "edgetune.api",
    "Backbone": "edgetune.backbones",
    "SequenceClassifier": "edgetune.modeling",
    "TopModel": "edgetune.modeling",
    "TextEncoder": "edgetune.tokenization",
    "Plan": "edgetune.planner.plan",
    "Budget": "edgetune.planner.cost",
    "CostConfig": "edgetune.planner.cost",
    "load_dataset": "edgetune.data",
    "apply_plan": "edgetune.freeze",
    "lora_config": "edgetune.freeze",
    "finetune": "edgetune.finetune",
    "Trainer": "edgetune.train",
    "TrainConfig": "edgetune.train",
    "FeatureCache": "edgetune.features",
    "get_tuner": "edgetune.tuners",
    "DataError": "edgetune.data",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edgetune' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
