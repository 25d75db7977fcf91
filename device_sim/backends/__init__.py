"""Training backends of the device: who trains the top on the cached trunk features.

* ``torch`` — the package's top as a plain-torch module (:mod:`edgetune.native`,
  no transformers) trained by :class:`edgetune.train.TopTrainer` in one
  process (no accelerate) (:mod:`device_sim.personalize`); every tuner, resumable.
* ``executorch`` — the package's ``top_train.pte`` (export target
  ``executorch``) run by ExecuTorch's Python bindings; AdamW (torch's) writes
  into the runtime's live weights (:mod:`device_sim.backends.executorch_py`).
* ``executorch-cpp`` — the same program run by a small C++ trainer on
  ExecuTorch's C++ runtime (``device_sim/cpp``); the Python side runs the ONNX
  trunk and never imports torch (:mod:`device_sim.backends.executorch_cpp`).

All three take the same :class:`~device_sim.settings.PersonalizeConfig`, use
the same guard and validation splits, candidate selection and do-no-harm guard
(:mod:`device_sim.selection`), epoch order, batch widths, AdamW groups,
schedule and clipping, and write the same personal state format. The ExecuTorch
backends train the exported top (tuner ``full``) or its head alone (the blocks
at learning rate 0), with dropout off (the exported program is deterministic);
candidates they cannot train (LoRA, other cuts) are listed as skipped in the
state's ``selection``; they do not resume interrupted jobs.

This module imports nothing heavy: the light backends are loaded by name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from device_sim.package import DevicePackage
    from device_sim.profiles import DeviceProfile
    from device_sim.selection import PersonalizeResult
    from device_sim.settings import PersonalizeConfig
    from edgetune.data import TextDataset

BACKENDS = ("torch", "executorch", "executorch-cpp")
_MODULES = {"executorch": "device_sim.backends.executorch_py", "executorch-cpp": "device_sim.backends.executorch_cpp"}


def check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown training backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return name


def personalize_light(
    backend: str,
    package: DevicePackage,
    data: str | Path | TextDataset,
    out: str | Path,
    config: PersonalizeConfig | None = None,
    profile: DeviceProfile | None = None,
    threads: int | None = None,
    callbacks: Sequence[Callable[[Any], None]] = (),
) -> PersonalizeResult:
    """Personalize with an ExecuTorch backend (``executorch`` or ``executorch-cpp``); see the module docstring.

    ``config``: the job's :class:`~device_sim.settings.PersonalizeConfig` (every backend takes the same).
    ``callbacks`` are called with ``(step, loss)`` after every optimizer step (``executorch``) or after training
    with every step's loss (``executorch-cpp``, whose steps run in another process).
    """
    if check_backend(backend) == "torch":
        raise ValueError("the torch backend is device_sim.personalize.personalize")
    return import_module(_MODULES[backend]).personalize(package, data, out, config, profile, threads, callbacks)
