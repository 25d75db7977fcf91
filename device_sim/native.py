"""``libedgetune_device`` from Python: the C library of ``native/`` (``include/edgetune_device.h``) through ctypes.

The library is found at ``$EDGETUNE_DEVICE_LIB`` (a built ``libedgetune_device.so``), or built once with
CMake into a cache directory keyed by its sources (``$EDGETUNE_CACHE``, default ``~/.cache/edgetune``), the
same way as the C++ trainer (:mod:`device_sim.backends.build`). ``python -m device_sim.native [BUILD_DIR]``
builds it and prints its path. Torch-free.

What the library does so far: open a package, verifying it as the spec says a reader must
(:class:`NativePackage`), the WordPiece tokenizer (:class:`NativeTokenizer`), which gives the ids of the
``tokenizers`` library on a package's ``tokenizer.json`` for the BERT, DistilBERT, ELECTRA and MPNet families,
the user's data (:func:`read_dataset`), and prediction with the package's ExecuTorch programs, with or without a
personal state (:class:`NativeModel`).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from device_sim.backends.build import (
    BuildError,
    build_command,
    cmake_build,
    executorch_prefix,
    given_or_cached,
    source_key,
)
from edgetune.errors import EdgetuneError
from edgetune.tokenization import pad_batch

NATIVE_DIR = Path(__file__).resolve().parent.parent / "native"
LIBRARY = "libedgetune_device.so"
DRIVER = "edgetune-device"
EXAMPLE_APP = NATIVE_DIR.parent / "examples" / "device_app.c"  # built beside the library in a source checkout

# edgetune_status (include/edgetune_device.h)
STATUS_NAMES = {
    0: "ok",
    1: "argument",
    2: "io",
    3: "format",
    4: "unsupported",
    5: "data",
    6: "capacity",
    7: "internal",
}


class NativeError(EdgetuneError, RuntimeError):
    """A call into libedgetune_device failed: ``status`` is its edgetune_status name, the message its own."""

    def __init__(self, status: int, message: str) -> None:
        self.status = STATUS_NAMES.get(status, str(status))
        super().__init__(f"{message} [{self.status}]")


def build_library(build_dir: str | Path, quiet: bool = True) -> Path:
    """Configure and build ``native/`` in ``build_dir``; returns the shared library. Raises BuildError."""
    if not (NATIVE_DIR / "CMakeLists.txt").is_file():
        raise BuildError(f"{NATIVE_DIR}: the library's sources are not here (a source checkout has them)")
    args = [f"-DEXECUTORCH_PREFIX={executorch_prefix()}"]
    return cmake_build(NATIVE_DIR, build_dir, LIBRARY, "libedgetune_device", args, quiet)


def library_path() -> Path:
    """The library to load: ``$EDGETUNE_DEVICE_LIB``, else the cached build of these sources (built if missing)."""
    key = lambda: source_key(NATIVE_DIR, extra=(EXAMPLE_APP,))  # noqa: E731
    return given_or_cached("EDGETUNE_DEVICE_LIB", "device-lib", key, LIBRARY, build_library)


class PackageInfo(ctypes.Structure):
    """``edgetune_package_info``."""

    _fields_ = [
        ("cut", ctypes.c_int32),
        ("num_layers", ctypes.c_int32),
        ("num_labels", ctypes.c_int32),
        ("max_length", ctypes.c_int32),
        ("pad_id", ctypes.c_int64),
        ("family", ctypes.c_char_p),
    ]


class PersonalizeSettings(ctypes.Structure):
    """``edgetune_personalize_settings`` (the C library's defaults are PersonalizeConfig's)."""

    _fields_ = [
        ("epochs", ctypes.c_int32),
        ("batch_size", ctypes.c_int32),
        ("lr", ctypes.c_double),
        ("head_lr", ctypes.c_double),
        ("weight_decay", ctypes.c_double),
        ("warmup_ratio", ctypes.c_double),
        ("max_grad_norm", ctypes.c_double),
        ("patience", ctypes.c_int32),
        ("seed", ctypes.c_uint64),
        ("val_fraction", ctypes.c_double),
        ("guard_fraction", ctypes.c_double),
        ("guard_alpha", ctypes.c_double),
        ("head_only", ctypes.c_int32),
        ("threads", ctypes.c_int32),
        ("select", ctypes.c_int32),
        ("candidates", ctypes.c_void_p),
        ("num_candidates", ctypes.c_size_t),
        ("skipped", ctypes.c_void_p),
        ("num_skipped", ctypes.c_size_t),
        ("int8_trunk", ctypes.c_int32),
        ("tuner", ctypes.c_char_p),
    ]


class CandidateSpec(ctypes.Structure):
    """``edgetune_candidate``."""

    _fields_ = [
        ("name", ctypes.c_char_p),
        ("prior", ctypes.c_int32),
        ("head_only", ctypes.c_int32),
        ("lr", ctypes.c_double),
        ("head_lr", ctypes.c_double),
        ("estimated_seconds", ctypes.c_double),
        ("tuner", ctypes.c_char_p),
    ]


class SkippedCandidate(ctypes.Structure):
    """``edgetune_skipped_candidate``."""

    _fields_ = [("name", ctypes.c_char_p), ("reason", ctypes.c_char_p)]


class PersonalizeResult(ctypes.Structure):
    """``edgetune_personalize_result``."""

    _fields_ = [
        ("kept_personal", ctypes.c_int32),
        ("num_train", ctypes.c_int32),
        ("num_val", ctypes.c_int32),
        ("num_guard", ctypes.c_int32),
        ("num_candidates", ctypes.c_int32),
        ("chosen", ctypes.c_int32),
        ("chosen_name", ctypes.c_char * 64),
        ("epochs_run", ctypes.c_int32),
        ("best_epoch", ctypes.c_int32),
        ("best_val_accuracy", ctypes.c_double),
        ("global_val_accuracy", ctypes.c_double),
        ("guard_personal_accuracy", ctypes.c_double),
        ("guard_global_accuracy", ctypes.c_double),
        ("guard_p_value", ctypes.c_double),
        ("guard_wins", ctypes.c_int32),
        ("guard_losses", ctypes.c_int32),
        ("resumed", ctypes.c_int32),
    ]


# edgetune_progress_fn: (user, stage, candidate, done, total, loss)
ProgressFn = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_double
)

_loaded: ctypes.CDLL | None = None


def load_library() -> ctypes.CDLL:
    """The loaded library with its functions' signatures declared (loaded once per process)."""
    global _loaded
    if _loaded is None:
        lib = ctypes.CDLL(str(library_path()))
        lib.edgetune_last_error.restype = ctypes.c_char_p
        lib.edgetune_version.restype = ctypes.c_char_p
        lib.edgetune_tokenizer_open.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
        lib.edgetune_tokenizer_encode.argtypes = [
            ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t,
            ctypes.POINTER(ctypes.c_int64), ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t),
        ]  # fmt: skip
        lib.edgetune_tokenizer_close.argtypes = [ctypes.c_void_p]
        lib.edgetune_tokenizer_close.restype = None
        lib.edgetune_package_open.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
        lib.edgetune_package_info_get.argtypes = [ctypes.c_void_p, ctypes.POINTER(PackageInfo)]
        lib.edgetune_package_label.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        lib.edgetune_package_label.restype = ctypes.c_char_p
        lib.edgetune_package_tokenizer.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)]
        lib.edgetune_package_close.argtypes = [ctypes.c_void_p]
        lib.edgetune_package_close.restype = None
        lib.edgetune_dataset_read.argtypes = [
            ctypes.c_char_p, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int,
            ctypes.POINTER(ctypes.c_void_p),
        ]  # fmt: skip
        lib.edgetune_dataset_size.argtypes = [ctypes.c_void_p]
        lib.edgetune_dataset_size.restype = ctypes.c_size_t
        for name, restype in (("text", ctypes.c_char_p), ("label", ctypes.c_int64),
                              ("label_name", ctypes.c_char_p), ("row", ctypes.c_int64)):  # fmt: skip
            function = getattr(lib, f"edgetune_dataset_{name}")
            function.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
            function.restype = restype
        lib.edgetune_dataset_close.argtypes = [ctypes.c_void_p]
        lib.edgetune_dataset_close.restype = None
        lib.edgetune_model_open.argtypes = [
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.POINTER(ctypes.c_void_p),
        ]
        lib.edgetune_model_state_kind.argtypes = [ctypes.c_void_p]
        lib.edgetune_model_state_kind.restype = ctypes.c_char_p
        lib.edgetune_model_logits.argtypes = [
            ctypes.c_void_p, ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_int64), ctypes.c_size_t,
            ctypes.c_size_t, ctypes.POINTER(ctypes.c_float),
        ]  # fmt: skip
        lib.edgetune_model_predict.argtypes = [
            ctypes.c_void_p, ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_size_t), ctypes.c_size_t,
            ctypes.POINTER(ctypes.c_float),
        ]  # fmt: skip
        lib.edgetune_model_close.argtypes = [ctypes.c_void_p]
        lib.edgetune_model_close.restype = None
        lib.edgetune_personalize_defaults.argtypes = [ctypes.POINTER(PersonalizeSettings)]
        lib.edgetune_personalize_defaults.restype = None
        lib.edgetune_personalize.argtypes = [
            ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(PersonalizeSettings), ctypes.c_void_p,
            ctypes.c_void_p, ctypes.POINTER(PersonalizeResult),
        ]  # fmt: skip
        lib.edgetune_personalize_texts.argtypes = [
            ctypes.c_void_p, ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_size_t),
            ctypes.POINTER(ctypes.c_int64), ctypes.c_size_t, ctypes.c_char_p, ctypes.c_char_p,
            ctypes.POINTER(PersonalizeSettings), ProgressFn, ctypes.c_void_p, ctypes.POINTER(PersonalizeResult),
        ]  # fmt: skip
        _loaded = lib
    return _loaded


def check(lib: ctypes.CDLL, status: int) -> None:
    if status != 0:
        raise NativeError(status, lib.edgetune_last_error().decode("utf-8", "replace"))


class _Handle:
    """An object of the C library owned by Python: closed once, by ``close``, ``with`` or garbage collection."""

    _close = ""  # the C function that frees it

    def close(self) -> None:
        if getattr(self, "_handle", None):
            getattr(self._lib, self._close)(self._handle)
            self._handle = None

    def __enter__(self) -> _Handle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


class NativeTokenizer(_Handle):
    """A package's ``tokenizer.json`` in the C library: ``encode`` gives the ids of ``tokenizers``."""

    _close = "edgetune_tokenizer_close"

    def __init__(self, tokenizer_json: str | Path | None = None, *, _handle: ctypes.c_void_p | None = None) -> None:
        self._lib = load_library()
        if _handle is None:
            _handle = ctypes.c_void_p()
            check(self._lib, self._lib.edgetune_tokenizer_open(os.fsencode(tokenizer_json), ctypes.byref(_handle)))
        self._handle = _handle

    def encode(self, text: str | bytes, max_length: int = 0) -> list[int]:
        """One text's ids, special tokens included, at most ``max_length`` of them (0: no limit)."""
        data = text.encode("utf-8") if isinstance(text, str) else text
        capacity = max_length if max_length > 0 else len(data) + 8
        count = ctypes.c_size_t()
        while True:
            ids = (ctypes.c_int64 * capacity)()
            status = self._lib.edgetune_tokenizer_encode(
                self._handle, data, len(data), max_length, ids, capacity, ctypes.byref(count)
            )
            if STATUS_NAMES.get(status) == "capacity" and count.value > capacity:  # the size needed is known now
                capacity = count.value
                continue
            check(self._lib, status)
            return list(ids[: count.value])

    def encode_batch(self, texts: Sequence[str], max_length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Right-padded int64 ``(input_ids, attention_mask)``, as a package's encoder gives them."""
        return pad_batch([self.encode(t, max_length) for t in texts], pad_id)


def _open_dataset(
    lib: ctypes.CDLL,
    path: str | Path,
    package: NativePackage | None,
    text_column: str | None,
    label_column: str | None,
    labelled: bool,
) -> ctypes.c_void_p:
    """``edgetune_dataset_read``'s handle (the caller closes it); a refusal is :class:`NativeError`."""
    handle = ctypes.c_void_p()
    encode = lambda v: None if v is None else v.encode()  # noqa: E731
    status = lib.edgetune_dataset_read(
        os.fsencode(path), package._handle if package is not None else None, encode(text_column),
        encode(label_column), int(labelled), ctypes.byref(handle),
    )  # fmt: skip
    check(lib, status)
    return handle


def read_dataset(
    path: str | Path,
    package: NativePackage | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
    labelled: bool = True,
) -> tuple[list[str], list[str], list[int], list[int]]:
    """The C library's reading of a user's data file: ``(texts, label names, label indices, rows)`` (indices
    among ``package``'s labels; -1 without a package or labels). Refusals are :class:`NativeError`."""
    lib = load_library()
    handle = _open_dataset(lib, path, package, text_column, label_column, labelled)
    try:
        n = lib.edgetune_dataset_size(handle)
        texts = [lib.edgetune_dataset_text(handle, i).decode() for i in range(n)]
        names = [lib.edgetune_dataset_label_name(handle, i).decode() for i in range(n)]
        indices = [lib.edgetune_dataset_label(handle, i) for i in range(n)]
        rows = [lib.edgetune_dataset_row(handle, i) for i in range(n)]
    finally:
        lib.edgetune_dataset_close(handle)
    return texts, names, indices, rows


class NativePackage(_Handle):
    """A package directory opened (and verified, as the spec says a reader must) by the C library."""

    _close = "edgetune_package_close"

    def __init__(self, directory: str | Path) -> None:
        self._lib = load_library()
        handle = ctypes.c_void_p()
        check(self._lib, self._lib.edgetune_package_open(os.fsencode(directory), ctypes.byref(handle)))
        self._handle = handle
        info = PackageInfo()
        check(self._lib, self._lib.edgetune_package_info_get(handle, ctypes.byref(info)))
        self.cut, self.num_layers, self.max_length, self.pad_id = (
            info.cut,
            info.num_layers,
            info.max_length,
            info.pad_id,
        )
        self.family = info.family.decode()
        self.labels = [self._lib.edgetune_package_label(handle, i).decode() for i in range(info.num_labels)]

    def tokenizer(self) -> NativeTokenizer:
        """The package's tokenizer, from the bytes verified when the package was opened."""
        handle = ctypes.c_void_p()
        check(self._lib, self._lib.edgetune_package_tokenizer(self._handle, ctypes.byref(handle)))
        return NativeTokenizer(_handle=handle)

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Right-padded ``(input_ids, attention_mask)`` at the package's length: a package encoder's output."""
        with self.tokenizer() as tok:
            return tok.encode_batch(texts, self.max_length, self.pad_id)


class NativeModel(_Handle):
    """The package's ExecuTorch programs in the C library (``trunk.pte`` + ``top.pte``), with the personal state
    at ``personal`` applied (verified, and checked to belong to the package), or the global model."""

    _close = "edgetune_model_close"

    def __init__(
        self, package: NativePackage, personal: str | Path | None = None, threads: int = 0, int8_trunk: bool = False
    ) -> None:
        self._lib = load_library()
        self.package = package  # the model reads it: keep it open as long
        handle = ctypes.c_void_p()
        where = None if personal is None else os.fsencode(personal)
        status = self._lib.edgetune_model_open(package._handle, where, threads, int(int8_trunk), ctypes.byref(handle))
        check(self._lib, status)
        self._handle = handle
        self.state_kind = self._lib.edgetune_model_state_kind(handle).decode()

    def logits(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Logits ``(n, labels)`` of right-padded ``ids`` (the mask gives each row's length)."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        lengths = np.ascontiguousarray(mask.sum(axis=1), dtype=np.int64)
        out = np.zeros((len(ids), len(self.package.labels)), np.float32)
        i64 = ctypes.POINTER(ctypes.c_int64)
        status = self._lib.edgetune_model_logits(
            self._handle, ids.ctypes.data_as(i64), lengths.ctypes.data_as(i64), len(ids),
            ids.shape[1] if ids.ndim == 2 else 0, out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
        )  # fmt: skip
        check(self._lib, status)
        return out

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        """Logits ``(n, labels)`` of ``texts``, tokenized by the library."""
        data = [t.encode("utf-8") for t in texts]
        out = np.zeros((len(data), len(self.package.labels)), np.float32)
        status = self._lib.edgetune_model_predict(
            self._handle, (ctypes.c_char_p * len(data))(*data), (ctypes.c_size_t * len(data))(*map(len, data)),
            len(data), out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
        )  # fmt: skip
        check(self._lib, status)
        return out


class _JobSettings:
    """``edgetune_personalize_settings`` with the candidate and skipped arrays it points to kept alive."""

    def __init__(
        self,
        lib: ctypes.CDLL,
        candidates: Sequence[dict] | None,
        skipped: Sequence[dict] | None,
        settings: dict[str, float | int | bool | str],
    ) -> None:
        self.struct = PersonalizeSettings()
        lib.edgetune_personalize_defaults(ctypes.byref(self.struct))
        for name, value in settings.items():
            if name not in dict(PersonalizeSettings._fields_) or name in ("candidates", "skipped"):
                raise TypeError(f"unknown personalize setting {name!r}")
            setattr(self.struct, name, value.encode() if isinstance(value, str) else value)
        self._candidates = (CandidateSpec * len(candidates or ()))(
            *(
                CandidateSpec(
                    c["name"].encode(),
                    int(c.get("prior", False)),
                    int(c.get("head_only", False)),
                    float(c.get("lr", 0.0)),
                    float(c.get("head_lr", 0.0)),
                    float(c.get("estimated_seconds", -1.0)),
                    str(c.get("tuner", "full")).encode(),
                )  # fmt: skip
                for c in candidates or ()
            )
        )
        self._skipped = (SkippedCandidate * len(skipped or ()))(
            *(SkippedCandidate(k["name"].encode(), k["reason"].encode()) for k in skipped or ())
        )
        if candidates:
            self.struct.candidates = ctypes.cast(self._candidates, ctypes.c_void_p)
            self.struct.num_candidates = len(candidates)
        if skipped:
            self.struct.skipped = ctypes.cast(self._skipped, ctypes.c_void_p)
            self.struct.num_skipped = len(skipped)


def _result(result: PersonalizeResult) -> dict[str, float | int | str]:
    out: dict[str, float | int | str] = {name: getattr(result, name) for name, _ in PersonalizeResult._fields_}
    out["chosen_name"] = result.chosen_name.decode()
    return out


def personalize(
    package: NativePackage,
    data: str | Path,
    out: str | Path,
    text_column: str | None = None,
    label_column: str | None = None,
    candidates: Sequence[dict] | None = None,
    skipped: Sequence[dict] | None = None,
    **settings: float | int | bool,
) -> dict[str, float | int | str]:
    """The C library's personalization job on ``data`` (read by the library, labels checked against the
    package), writing the personal state at ``out``; ``settings``: fields of ``edgetune_personalize_settings``
    (the others keep the library's defaults); ``candidates``/``skipped``: ``edgetune_candidate`` and
    ``edgetune_skipped_candidate`` fields as dicts (None: the library's defaults). Returns
    ``edgetune_personalize_result`` as a dict."""
    lib = load_library()
    job = _JobSettings(lib, candidates, skipped, settings)
    handle = _open_dataset(lib, data, package, text_column, label_column, labelled=True)
    result = PersonalizeResult()
    try:
        status = lib.edgetune_personalize(
            package._handle, handle, os.fsencode(out), ctypes.byref(job.struct), None, None, ctypes.byref(result)
        )
    finally:
        lib.edgetune_dataset_close(handle)
    check(lib, status)
    return _result(result)


def personalize_texts(
    package: NativePackage,
    texts: Sequence[str],
    labels: Sequence[int],
    out: str | Path,
    data_name: str = "",
    candidates: Sequence[dict] | None = None,
    skipped: Sequence[dict] | None = None,
    progress: Callable[[str, str, int, int, float], None] | None = None,
    **settings: float | int | bool,
) -> dict[str, float | int | str]:
    """:func:`personalize` on texts and their labels' indices among the package's labels
    (``edgetune_personalize_texts``); ``progress(stage, candidate, done, total, loss)`` while it runs."""
    lib = load_library()
    job = _JobSettings(lib, candidates, skipped, settings)
    data = [t.encode("utf-8") for t in texts]
    n = len(data)
    callback = ProgressFn(
        (lambda _u, stage, cand, done, total, loss: progress(stage.decode(), cand.decode(), done, total, loss))
        if progress is not None
        else (lambda *_: None)
    )
    result = PersonalizeResult()
    status = lib.edgetune_personalize_texts(
        package._handle, (ctypes.c_char_p * n)(*data), (ctypes.c_size_t * n)(*map(len, data)),
        (ctypes.c_int64 * n)(*map(int, labels)), n, data_name.encode(), os.fsencode(out), ctypes.byref(job.struct),
        callback, None, ctypes.byref(result),
    )  # fmt: skip
    check(lib, status)
    return _result(result)


def main(argv: list[str] | None = None) -> int:
    return build_command(argv, build_library, library_path)


if __name__ == "__main__":
    raise SystemExit(main())
