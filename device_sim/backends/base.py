"""The interface of a training backend: who trains a candidate top on the cached trunk features.

The personalization job (:mod:`device_sim.personalize`) does everything that
does not depend on how the top is trained: it reads and splits the user's data,
resolves and prices the candidate configurations, opens the work directory,
chooses a candidate, applies the do-no-harm guard and writes the personal
state. A backend supplies the rest, in the order the job calls it:

1. :meth:`Backend.check`: refuse, before any work, a package or a setting it
   cannot run (no exported program, a batch larger than the program's);
2. :meth:`Backend.unsupported`: which candidates it can train (a reason for
   each one it cannot); :meth:`Backend.price_basis` and
   :meth:`Backend.validate`: what a candidate costs on it and whether its
   settings fit the package's top;
3. :meth:`Backend.features`: the trunk once over the job's splits;
4. :meth:`Backend.train`: one candidate, into a :class:`~device_sim.selection.Trained`;
5. :meth:`Backend.logits`: the global top's or a trained candidate's logits on a split.

A backend is one module that defines a subclass and decorates it with
:func:`device_sim.backends.register`. Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from edgetune.costs import CutCost, TunerCost
from edgetune.errors import EdgetuneError
from edgetune.training_config import TrainError

if TYPE_CHECKING:
    from device_sim.package import DevicePackage
    from device_sim.personalize import Job
    from device_sim.profiles import DeviceProfile
    from device_sim.selection import PersonalizeResult, Trained
    from device_sim.settings import PersonalizeConfig


class BackendError(EdgetuneError, ValueError):
    """A backend cannot run this job (package without the program, unsupported setting, failed run)."""


class StaleWorkError(TrainError):
    """The work directory holds a checkpoint that no run of this job wrote: the job starts over without it."""


@dataclass
class Candidate:
    """One configuration a job trains (``kind="train"``) or computes (``kind="prior"``: the global head moved to
    the user's label prior), resolved from its spec (:data:`device_sim.settings.DEFAULT_CANDIDATES`)."""

    name: str
    kind: str  # "train" | "prior"
    cut: int  # the block it trains above (the head alone: the model's number of blocks)
    tuner: str  # the tuner's name; the backend resolves its parameters from ``config``
    config: PersonalizeConfig  # the job's settings with this candidate's cut, tuner and learning rates
    checkpoint: str  # its checkpoint directory inside the work directory
    head_only: bool
    estimate: CutCost | None = None  # its price, once the job has priced it


class Backend(ABC):
    """A training backend for one job; see the module docstring. Subclasses set :attr:`name`."""

    name: ClassVar[str]
    resumes: ClassVar[bool] = False  # an interrupted job resumes from the checkpoints in its work directory
    cache: ClassVar[str | None] = None  # where its features go ("memory" | "mmap"); None: the job decides

    def __init__(
        self,
        package: DevicePackage,
        config: PersonalizeConfig,
        profile: DeviceProfile | None,
        threads: int | None,
        callbacks: Sequence[Callable[..., None]] = (),
    ) -> None:
        self.package = package
        self.config = config
        self.profile = profile
        self.threads = threads
        self.callbacks = list(callbacks)

    def running(self) -> contextlib.AbstractContextManager[Any]:
        """The context the whole job runs in (a thread count, say)."""
        return contextlib.nullcontext()

    def check(self) -> None:
        """Refuse, before any work, a package or settings this backend cannot run."""
        return None  # a backend that runs every package and setting

    def unsupported(self, candidate: Candidate, configured: bool) -> str | None:
        """Why this backend cannot train ``candidate`` (``None``: it can). ``configured``: the job's one configured
        candidate (the reason is then the job's error message, else a ``skipped`` entry)."""
        return None

    def price_basis(self, candidate: Candidate) -> tuple[int, TunerCost]:
        """The cut and the tuner's cost the cost model prices ``candidate`` at on this backend."""
        return (candidate.cut if candidate.kind == "train" else self.package.num_layers), TunerCost()

    def validate(self, candidate: Candidate) -> None:
        """Refuse a trainable candidate whose settings do not fit the package's top (before any work)."""
        return None  # a backend whose candidates fit every top

    @abstractmethod
    def features(self, job: Job, work: Path) -> dict[str, float]:
        """Run the trunk once over the job's train, validation and guard splits (at ``job.cut``; files, if any,
        in ``work``); returns the seconds each split took."""

    @abstractmethod
    def train(self, candidate: Candidate, job: Job, work: Path) -> Trained:
        """Train ``candidate`` on the cached features (checkpoints, if any, in ``work``)."""

    @abstractmethod
    def logits(self, split: str, trained: Trained | None = None) -> np.ndarray:
        """Logits on ``split`` (``train``, ``val`` or ``guard``) of the global top, or of ``trained``."""

    @abstractmethod
    def prior_tensors(self, shift: np.ndarray) -> dict[str, Any]:
        """The tensors of the global head with ``shift`` added to its bias, as a personal state holds them."""

    def record(self, chosen: Trained) -> dict[str, Any]:
        """What this backend adds to the state's ``training`` record."""
        return {}


class WholeJobBackend(Backend):
    """A backend that runs steps 3-6 of the job itself, given the checked and priced job (steps 1-2): the trunk,
    every candidate, the choice, the guard and the state's atomic write. The C library (``executorch-cpp``) is
    one: the whole device job in one implementation, which this process only prepares and reads back. The
    per-step methods of :class:`Backend` are never called on it."""

    @abstractmethod
    def run_whole(self, job: Job, out: Path, config: PersonalizeConfig, started: float) -> PersonalizeResult:
        """Run ``job`` and write its personal state at ``out`` (``started``: when the job began, for its timings)."""

    def features(self, job: Job, work: Path) -> dict[str, float]:
        raise TypeError(f"backend {self.name} runs the whole job (run_whole), not its steps")

    def train(self, candidate: Candidate, job: Job, work: Path) -> Trained:
        raise TypeError(f"backend {self.name} runs the whole job (run_whole), not its steps")

    def logits(self, split: str, trained: Trained | None = None) -> np.ndarray:
        raise TypeError(f"backend {self.name} runs the whole job (run_whole), not its steps")

    def prior_tensors(self, shift: np.ndarray) -> dict[str, Any]:
        raise TypeError(f"backend {self.name} runs the whole job (run_whole), not its steps")
