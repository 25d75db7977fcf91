"""Tuners: how to train inside the layers a plan chose (one folder per method, one interface).

``get_tuner("lora", r=8)`` -> a :class:`Tuner`; see :mod:`edgetune.tuners.base`
for the interface shared by the server trainer and on-device personalization.
"""

from __future__ import annotations

from typing import Any

from edgetune.tuners.base import Tuner, TunerConfig, as_top
from edgetune.tuners.dsee import DseeConfig, DseeTuner
from edgetune.tuners.fala import FalaConfig, FalaTuner
from edgetune.tuners.full import FullConfig, FullTuner
from edgetune.tuners.lora import LoraConfig, LoraTuner
from edgetune.tuners.roselora import RoseLoraConfig, RoseLoraTuner

TUNERS: dict[str, type[Tuner]] = {cls.name: cls for cls in (FullTuner, LoraTuner, RoseLoraTuner, DseeTuner)}
# What a personal state can hold: every tuner's delta, and the head a FaLA backbone swap writes (a swap fits it;
# no training loop offers it).
STATE_TUNERS: dict[str, type[Tuner]] = {**TUNERS, FalaTuner.name: FalaTuner}


def get_tuner(name: str | Tuner, **params: Any) -> Tuner:
    """A registered tuner by name, configured with ``params`` (a Tuner instance is returned as is)."""
    if isinstance(name, Tuner):
        return name
    try:
        cls = TUNERS[name]
    except KeyError:
        raise ValueError(f"unknown tuner {name!r}; choose one of {', '.join(TUNERS)}") from None
    try:
        return cls(**params)
    except TypeError as err:
        raise ValueError(f"bad parameters for tuner {name!r}: {err}") from None


def tuner_from_dict(d: dict[str, Any]) -> Tuner:
    """Rebuild a tuner from :meth:`Tuner.to_dict` (a personal state's ``tuner``; FaLA's included)."""
    name, params = d["name"], d.get("params", {})
    if name not in STATE_TUNERS:
        raise ValueError(f"unknown tuner {name!r}; choose one of {', '.join(STATE_TUNERS)}")
    try:
        return STATE_TUNERS[name](**params)
    except TypeError as err:
        raise ValueError(f"bad parameters for tuner {name!r}: {err}") from None


__all__ = [
    "TUNERS",
    "DseeConfig",
    "DseeTuner",
    "FalaConfig",
    "FalaTuner",
    "FullConfig",
    "FullTuner",
    "LoraConfig",
    "LoraTuner",
    "RoseLoraConfig",
    "RoseLoraTuner",
    "STATE_TUNERS",
    "Tuner",
    "TunerConfig",
    "as_top",
    "get_tuner",
    "tuner_from_dict",
]
