"""Training backends of the device, by name: who trains the top on the cached trunk features.

* ``torch`` — the package's top as a plain-torch module (:mod:`edgetune.native`,
  no transformers) trained by :class:`edgetune.top_trainer.TopTrainer` in one
  process (no accelerate) (:mod:`device_sim.backends.torch_backend`); every
  tuner, every cut, resumable.
* ``executorch`` — the package's ``top_train.pte`` (export target
  ``executorch``) run by ExecuTorch's Python bindings; AdamW (torch's) writes
  into the runtime's live weights (:mod:`device_sim.backends.executorch_py`).
* ``executorch-cpp`` — the whole job (trunk, candidates, choice, guard, the
  state's write) in ``libedgetune_device``, the C library an app embeds
  (``native/``); this process only prepares the job and never imports torch
  (:mod:`device_sim.backends.executorch_cpp`).

Every backend runs inside the one personalization job (:mod:`device_sim.personalize`):
the same settings, splits, candidates, pricing, selection, guard and personal
state format. The ExecuTorch backends train the exported top (tuner ``full``)
or its head alone (the blocks at learning rate 0), with dropout off (the
exported program is deterministic); candidates they cannot train (LoRA, other
cuts) are listed as skipped in the state's ``selection``; they do not resume
interrupted jobs.

A backend is a :class:`~device_sim.backends.base.Backend` subclass in a module
of its own, decorated with :func:`register`. The built-in ones are imported by
name when first asked for (:data:`BUILT_IN`), so this module imports nothing heavy.
"""

from __future__ import annotations

from importlib import import_module

from device_sim.backends.base import Backend, BackendError, Candidate, StaleWorkError  # noqa: F401 (re-exported)

# name -> the module that defines and registers it, imported on first use
BUILT_IN = {
    "torch": "device_sim.backends.torch_backend",
    "executorch": "device_sim.backends.executorch_py",
    "executorch-cpp": "device_sim.backends.executorch_cpp",
}
REGISTRY: dict[str, type[Backend]] = {}


def register(cls: type[Backend]) -> type[Backend]:
    """Class decorator: make ``cls`` available as ``--trainer cls.name``."""
    REGISTRY[cls.name] = cls
    return cls


def backend_names() -> tuple[str, ...]:
    """Every backend a job can ask for: the built-in ones, then those registered since."""
    return tuple(dict.fromkeys([*BUILT_IN, *REGISTRY]))


def get_backend(name: str) -> type[Backend]:
    """The backend class registered as ``name``; an unknown name is a ValueError that lists the known ones."""
    if name not in REGISTRY and name in BUILT_IN:
        import_module(BUILT_IN[name])  # registers itself
    if name not in REGISTRY:
        raise ValueError(f"unknown training backend {name!r}; choose one of {', '.join(backend_names())}")
    return REGISTRY[name]
