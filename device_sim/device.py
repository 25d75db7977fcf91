"""``Device``: one device holding one package, personalizing it and predicting with it.

A device loads a package once (verified, see :mod:`device_sim.package`), then:

* ``personalize(data, out)`` trains the package's top on the user's texts and
  writes a personal state (:mod:`device_sim.personalize`);
* ``predict`` / ``evaluate`` / ``features`` run the trunk in onnxruntime and
  the top in torch, the package's own top or a personal one;
* ``predictor(personal)`` keeps the (personal) top loaded and answers one text
  at a time, for streaming input.

A personal state is applied by rebuilding the package's top, preparing the part
above the state's cut with the state's tuner, loading the tensors and merging
adapters: the result is a plain :class:`~edgetune.modeling.TopModel` that
reads the package's trunk output. A state trained for another package is
refused (:class:`~edgetune_format.personal.PersonalStateError`). A state of kind
``kept_global`` (the do-no-harm guard refused the personal top) applies as the
package's global top.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from device_sim.memory import prefer_mmap
from device_sim.package import DevicePackage, PackageError, load_package
from device_sim.profiles import DeviceProfile, get_profile
from device_sim.runtime import OnnxTop, run_trunk, torch_threads, torch_top_fn
from edgetune.data import LabelMap, TextDataset, load_dataset
from edgetune_format.personal import PersonalState, PersonalStateError, is_personal_state, load_personal_state

if TYPE_CHECKING:  # torch, transformers and the server trainer load only on the torch backend's path
    from device_sim.selection import PersonalizeResult
    from device_sim.settings import PersonalizeConfig
    from edgetune.modeling import TopModel

Personal = PersonalState | str | Path | None


@dataclass
class Prediction:
    """One text's answer: the label, its softmax probability, every label's probability, and the raw logits
    (float32, in the package's label order)."""

    label: str
    confidence: float
    scores: dict[str, float]
    logits: list[float] = field(default_factory=list)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


RUNTIMES = ("auto", "torch", "onnx")


def default_runtime() -> str:
    """The top's runtime when none is asked for: torch where it is installed, else onnxruntime alone."""
    import importlib.util

    return "torch" if importlib.util.find_spec("torch") is not None else "onnx"


def onnx_top(package: DevicePackage, personal: Personal = None, threads: int | None = None) -> OnnxTop:
    """The package's top in onnxruntime, torch-free, with ``personal`` applied to its tensors in numpy
    (:mod:`device_sim.apply`: every state kind the project writes; DSEE with stage-2 pruning needs torch)."""
    from device_sim.apply import apply_state
    from edgetune_format.personal import read_personal_state

    state = None
    if personal is not None:
        state = personal if isinstance(personal, PersonalState) else read_personal_state(personal, "np")
        state.check_package(package)
    spec = package.top_spec()
    return package.onnx_top(threads, apply_state(package.top_tensors(), spec, state))


PREDICT_TOKENS = 512  # most tokens (texts x padded length) per forward pass when predicting


def chunked(
    fn: Callable[[np.ndarray, np.ndarray], np.ndarray], tokens: int = PREDICT_TOKENS
) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """``fn(ids, mask)`` run on at most ``tokens`` tokens at a time (at least one text), rows concatenated.

    Activations grow with texts x length (x length for attention scores) and a device's memory peak is the
    forward pass: measured on MiniLM at 128 tokens per text, a predict process (trunk + top in onnxruntime)
    peaked at 325 MB with 32 texts per pass and 192 MB with 4, at the same speed per text. Rows are
    independent, so the result is that of one pass over the whole batch.
    """

    def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        step = max(1, tokens // max(1, ids.shape[1]))
        if len(ids) <= step:
            return fn(ids, mask)
        return np.concatenate([fn(ids[i : i + step], mask[i : i + step]) for i in range(0, len(ids), step)])

    return run


class Predictor:
    """A loaded (personal) top over the package's trunk: batch or one-text-at-a-time prediction.

    ``top``: the torch top (:meth:`Device.top`) or an :class:`OnnxTop` (torch-free). Trunk and top run on at
    most :data:`PREDICT_TOKENS` tokens at a time (:func:`chunked`), whatever the batch size."""

    def __init__(
        self, package: DevicePackage, top: TopModel | OnnxTop, precision: str = "fp32", threads: int | None = None
    ) -> None:
        self.package = package
        self.labels = package.labels
        self.threads = threads
        session = package.trunk_session(precision, threads)
        if isinstance(top, OnnxTop):
            self._fn = chunked(lambda ids, mask: top(run_trunk(session, ids, mask), mask))
            self._threads: Callable[[int | None], Any] = lambda threads: contextlib.nullcontext()
        else:
            self._fn = chunked(torch_top_fn(top, lambda ids, mask: run_trunk(session, ids, mask)))
            self._threads = torch_threads

    def logits(self, texts: Sequence[str], batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """Logits ``(n, labels)`` in input order (texts batched by length)."""
        from device_sim.runtime import map_batches

        with self._threads(self.threads):
            return map_batches(self.package.encoder, list(texts), self._fn, batch_size, progress, "predict")

    def predict(self, texts: Sequence[str], batch_size: int = 32, progress: bool = False) -> list[Prediction]:
        return [self._prediction(row) for row in self.logits(texts, batch_size, progress)]

    def __call__(self, text: str) -> Prediction:
        """One text, alone (batch of one, no padding): what a streaming consumer calls per line."""
        with self._threads(self.threads):
            ids, mask = self.package.encode([text])
            return self._prediction(self._fn(ids, mask)[0])

    def stream(self, texts: Iterable[str]) -> Iterator[Prediction]:
        """Predictions for texts as they arrive (e.g. lines of stdin), one at a time."""
        for text in texts:
            yield self(text)

    def _prediction(self, logits: np.ndarray) -> Prediction:
        probs = softmax(logits)
        i = int(probs.argmax())
        scores = {k: float(p) for k, p in zip(self.labels, probs)}
        return Prediction(self.labels[i], float(probs[i]), scores, [float(x) for x in logits])


class Device:
    """A device with one verified package; see the module docstring.

    ``profile``: a :class:`DeviceProfile` or a profile name; it bounds personalization jobs and sets the
    thread count (``threads`` overrides it). ``tokenizer``: ``auto``, ``tokenizers`` or ``onnx`` (the package's
    tokenizer as an onnxruntime-extensions graph, :mod:`device_sim.onnx_tokenizer`). Use as a context manager, or
    call :meth:`close`.
    """

    def __init__(
        self,
        package: str | Path | DevicePackage,
        profile: DeviceProfile | str | None = None,
        threads: int | None = None,
        tokenizer: str = "auto",
    ) -> None:
        self.profile = get_profile(profile) if isinstance(profile, str) else profile
        self.threads = threads if threads is not None else (self.profile.threads if self.profile else None)
        if not isinstance(package, DevicePackage) and is_personal_state(package):
            raise PackageError(f"{package}: is a personal state, not a package; pass it as the personal state")
        self._owns_package = not isinstance(package, DevicePackage)  # a package passed in is its owner's to close
        prefer_mmap()  # freed activations go back to the system: the job's peak is what it uses (device_sim.memory)
        if isinstance(package, DevicePackage):
            self.package = package
        else:
            self.package = load_package(package, threads=self.threads, tokenizer=tokenizer)

    @property
    def labels(self) -> list[str]:
        return self.package.labels

    # -- personal states -----------------------------------------------------------------------------------------
    def personalize(
        self,
        data: str | Path | TextDataset,
        out: str | Path,
        config: PersonalizeConfig | None = None,
        callbacks: Sequence[Callable[..., None]] = (),
        backend: str = "torch",
    ) -> PersonalizeResult:
        """Train this package's top on the user's labelled ``data``; write the personal state to ``out``.

        ``backend``: who trains, ``torch``, ``executorch`` or ``executorch-cpp`` (:mod:`device_sim.backends`; the
        ExecuTorch ones need the package's executorch export target); the job is :mod:`device_sim.personalize`."""
        from device_sim.personalize import personalize

        return personalize(self.package, data, out, config, self.profile, self.threads, callbacks, backend)

    def load_personal(self, path: str | Path) -> PersonalState:
        """A verified personal state that belongs to this package."""
        return load_personal_state(path, self.package)

    def top(self, personal: Personal = None, merged: bool = True) -> TopModel:
        """The package's top with ``personal`` applied, in eval mode; a fresh module. ``merged``: adapters (and a
        FaLA head) folded into plain weights; unmerged keeps them as modules (a second swap composes with the
        FaLA head as it is)."""
        from edgetune.tuners import tuner_from_dict

        top = self.package.top_model()
        if personal is None:
            return top.eval()
        if isinstance(personal, PersonalState):
            personal.check_package(self.package)
            state = personal
        else:
            state = self.load_personal(personal)
        if state.kept_global:  # the guard refused personalization: the package's own (global) top
            top.requires_grad_(False)
            return top.eval()
        trained = top.above(state.train_cut)
        try:
            tuner = tuner_from_dict(state.tuner)
            tuner.prepare(trained)
            tuner.load_delta(trained, state.tensors)
        except ValueError as err:
            raise PersonalStateError(f"{state.path}: does not fit this package's top ({err})") from None
        if merged:
            tuner.merge(trained)
        top.head = trained.head  # a state may replace the head module (FaLA's); the view shares everything else
        top.requires_grad_(False)
        return top.eval()

    # -- inference -----------------------------------------------------------------------------------------------
    def predictor(self, personal: Personal = None, precision: str = "fp32", backend: str = "torch") -> Predictor:
        """A predictor that keeps the (personal) top loaded; for many calls or streaming input.

        ``backend``: ``torch`` (the top as a torch module), ``onnx`` (the package's ONNX top, torch-free) or
        ``auto`` (:func:`default_runtime`)."""
        backend = default_runtime() if backend == "auto" else backend
        if backend == "onnx":
            return Predictor(self.package, onnx_top(self.package, personal, self.threads), precision, self.threads)
        if backend != "torch":
            raise ValueError(f"backend must be 'torch' or 'onnx', got {backend!r}")
        return Predictor(self.package, self.top(personal), precision, self.threads)

    def predict_logits(
        self,
        texts: Sequence[str],
        personal: Personal = None,
        batch_size: int = 32,
        precision: str = "fp32",
        backend: str = "torch",
    ) -> np.ndarray:
        return self.predictor(personal, precision, backend).logits(texts, batch_size)

    def predict(self, texts: Sequence[str], personal: Personal = None, **kwargs: Any) -> list[str]:
        """The predicted label of each text."""
        return [self.labels[i] for i in self.predict_logits(texts, personal, **kwargs).argmax(axis=1)]

    def evaluate(
        self,
        data: str | Path | TextDataset,
        personal: Personal = None,
        batch_size: int = 32,
        precision: str = "fp32",
        text_column: str | None = None,
        label_column: str | None = None,
        progress: bool = False,
        backend: str = "torch",
    ) -> dict[str, Any]:
        """Accuracy, macro-F1 and per-label F1 on labelled ``data`` (labels must be the package's); ``backend``
        as for :meth:`predictor`."""
        from edgetune.metrics import classification_metrics

        if not isinstance(data, TextDataset):
            plan = self.package.plan
            data = load_dataset(data, text_column or plan.text_column, label_column or plan.label_column)
        y = data.encoded_labels(LabelMap(tuple(self.labels)))
        logits = self.predictor(personal, precision, backend).logits(data.texts, batch_size, progress)
        return classification_metrics(y, logits.argmax(axis=1), self.labels)

    def features(self, texts: Sequence[str], personal: Personal = None, batch_size: int = 32) -> np.ndarray:
        """The pooled, normed features the head reads, ``(n, hidden)``: a text's embedding under this package
        (and personal top)."""
        import torch

        from device_sim.runtime import map_batches

        top = self.top(personal)
        session = self.package.trunk_session("fp32", self.threads)

        def fn(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
            hidden = torch.from_numpy(np.ascontiguousarray(run_trunk(session, ids, mask)))
            with torch.inference_mode():
                return top.features(hidden, torch.from_numpy(mask)).float().numpy()

        with torch_threads(self.threads):
            return map_batches(self.package.encoder, list(texts), fn, batch_size, False, "features")

    # -- lifetime ------------------------------------------------------------------------------------------------
    def close(self) -> None:
        if self._owns_package:
            self.package.close()

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        profile = self.profile.name if self.profile else "no profile"
        return f"Device({self.package!r}, {profile}, threads={self.threads})"
