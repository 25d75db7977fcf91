"""Reading a device package: verify everything, then hand the device what it runs.

A package is a directory of flat files (or the same files in one ``.tar``):
``manifest.json``, ``trunk.onnx`` (+ ``trunk.int8.onnx``), ``top.safetensors``
+ ``top.json``, ``tokenizer.json`` + ``encoder.json``, ``top.onnx`` (the top with its tensors as inputs).
:func:`load_package` checks the manifest (format, schema version, integrity
seal, structure), then every listed file (present, size, sha256) before
anything is run; a problem is a :class:`PackageError` that names the file. A
wrong answer from a damaged package is never silent.

What a device needs comes from :class:`DevicePackage`: the text encoder (from
the package's ``tokenizer.json``), the trunk as an onnxruntime session, the
trainable top as a torch module rebuilt from its spec, and ``predict``. This
module imports neither torch nor transformers at import time; the top model
(torch + transformers' model classes, no training machinery) is loaded only
when asked for.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from device_sim import manifest as mf
from device_sim.errors import PackageError
from device_sim.runtime import OnnxTop, map_batches, onnx_top_fn, ort_session, run_trunk, torch_top_fn
from edgetune.io import sha256_file
from edgetune.tokenization import TextEncoder

if TYPE_CHECKING:
    import onnxruntime as ort

    from edgetune.modeling import TopModel

__all__ = [
    "DevicePackage",
    "FileCheck",
    "PackageError",
    "Verification",
    "is_package",
    "load_package",
    "verify_package",
    "write_tar",
]

_TAR_MAX_MEMBERS = 64


@dataclass
class FileCheck:
    """One listed file: what the manifest promises and what is on disk."""

    name: str
    size: int
    actual_size: int | None
    ok: bool
    problem: str = ""


@dataclass
class Verification:
    """The outcome of checking a package; ``problems`` is empty when it may be used."""

    path: Path
    manifest: dict[str, Any] | None
    files: list[FileCheck] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_for_problems(self) -> None:
        if self.problems:
            raise PackageError(f"{self.path}: " + "; ".join(self.problems))


def _check_file(root: Path, name: str, entry: dict[str, Any]) -> FileCheck:
    path = root / name
    size = int(entry["size"])
    if not path.is_file():
        return FileCheck(name, size, None, False, f"{name}: missing from the package")
    actual = path.stat().st_size
    if actual != size:
        kind = "truncated" if actual < size else "longer than exported"
        return FileCheck(name, size, actual, False, f"{name}: {actual} bytes, manifest says {size} ({kind})")
    if sha256_file(path) != entry["sha256"]:
        return FileCheck(name, size, actual, False, f"{name}: sha256 does not match the manifest (tampered or corrupt)")
    return FileCheck(name, size, actual, True)


def _check_top_spec(root: Path, manifest: dict[str, Any]) -> str | None:
    """The top spec must describe the manifest's cut and labels (a consistent package)."""
    name = manifest["top"]["spec"]
    try:
        spec = json.loads((root / name).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"{name}: unreadable top spec ({err})"
    if spec.get("cut") != manifest["cut"] or spec.get("labels") != manifest["labels"]:
        return f"{name}: cut/labels differ from the manifest"
    return None


def verify_directory(root: Path, source: Path | None = None) -> Verification:
    """Check a package directory; every problem is collected (for ``edgetune inspect``)."""
    source = source or root
    manifest_path = root / mf.MANIFEST
    if not manifest_path.is_file():
        return Verification(source, None, [], [f"{mf.MANIFEST}: missing (not a device package)"])
    try:
        manifest = mf.parse(manifest_path.read_bytes())
    except PackageError as err:
        return Verification(source, None, [], [str(err)])
    checks = [_check_file(root, name, entry) for name, entry in manifest["files"].items()]
    problems = [c.problem for c in checks if not c.ok]
    if not problems:
        spec_problem = _check_top_spec(root, manifest)
        if spec_problem:
            problems.append(spec_problem)
    return Verification(source, manifest, checks, problems)


# -- tar form ---------------------------------------------------------------------------------------------------


def write_tar(directory: Path, dest: Path) -> Path:
    """Pack a package directory into one uncompressed ``.tar`` (manifest first), written atomically.

    Members are flat regular files with fixed owner and time, so the same package gives the same bytes.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    names = [mf.MANIFEST] + sorted(p.name for p in directory.iterdir() if p.name != mf.MANIFEST)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            with tarfile.open(fileobj=handle, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for name in names:
                    info = tar.gettarinfo(str(directory / name), arcname=name)
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    info.mtime = 0
                    info.mode = 0o644
                    with open(directory / name, "rb") as member:
                        tar.addfile(info, member)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def extract_tar(path: Path, into: Path) -> None:
    """Extract a package ``.tar`` into ``into``, refusing anything but flat regular files with safe names.

    Names are checked before a byte is written (no ``../``, absolute paths, links, devices or duplicates),
    and members are copied by hand rather than with ``extractall``.
    """
    try:
        with tarfile.open(path, mode="r:") as tar:
            members = tar.getmembers()
            if len(members) > _TAR_MAX_MEMBERS:
                raise PackageError(f"{path}: {len(members)} members; a package has at most {_TAR_MAX_MEMBERS}")
            seen: set[str] = set()
            for m in members:
                if not m.isreg():
                    raise PackageError(f"{path}: member {m.name!r} is not a regular file (links are refused)")
                if not (m.name == mf.MANIFEST or mf.safe_name(m.name)) or m.name in seen:
                    raise PackageError(f"{path}: unsafe or duplicate member name {m.name!r}")
                seen.add(m.name)
            for m in members:
                src = tar.extractfile(m)
                assert src is not None
                with src, open(into / m.name, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
    except (tarfile.TarError, EOFError) as err:
        raise PackageError(f"{path}: not a readable package archive ({err}); truncated or corrupted") from None


# -- loading ----------------------------------------------------------------------------------------------------


def is_package(path: str | Path) -> bool:
    """Whether ``path`` looks like a package (a manifest is present); nothing is verified."""
    path = Path(path)
    if path.is_dir():
        return (path / mf.MANIFEST).is_file()
    if path.is_file() and tarfile.is_tarfile(path):
        try:
            with tarfile.open(path, mode="r:") as tar:
                return mf.MANIFEST in tar.getnames()
        except (tarfile.TarError, EOFError):
            return False
    return False


def _open_root(path: Path) -> tuple[Path, tempfile.TemporaryDirectory | None]:
    if path.is_dir():
        return path, None
    if not path.exists():
        raise PackageError(f"{path}: no such package (directory or .tar)")
    tmp = tempfile.TemporaryDirectory(prefix="edgetune-package-")
    try:
        extract_tar(path, Path(tmp.name))
    except BaseException:
        tmp.cleanup()
        raise
    return Path(tmp.name), tmp


def verify_package(path: str | Path) -> Verification:
    """Check a package directory or ``.tar`` without loading it; all problems are reported."""
    path = Path(path)
    try:
        root, tmp = _open_root(path)
    except PackageError as err:
        return Verification(path, None, [], [str(err)])
    try:
        return verify_directory(root, path)
    finally:
        if tmp is not None:
            tmp.cleanup()


def load_package(path: str | Path, threads: int | None = None) -> DevicePackage:
    """Open and fully verify a package (directory or ``.tar``); :class:`PackageError` names any bad file.

    ``threads`` is the default onnxruntime intra-op thread count of the sessions it creates.
    """
    path = Path(path)
    root, tmp = _open_root(path)
    try:
        result = verify_directory(root, path)
        result.raise_for_problems()
    except BaseException:
        if tmp is not None:
            tmp.cleanup()
        raise
    assert result.manifest is not None
    return DevicePackage(path, root, result.manifest, threads, tmp)


class DevicePackage:
    """A verified package, as a device uses it. Close it (or use ``with``) to free an extracted ``.tar``."""

    def __init__(
        self,
        path: Path,
        root: Path,
        manifest: dict[str, Any],
        threads: int | None = None,
        tmp: tempfile.TemporaryDirectory | None = None,
    ) -> None:
        self.path = path
        self.root = root
        self.manifest = manifest
        self.threads = threads
        self._tmp = tmp
        self._sessions: dict[tuple[str, int | None], ort.InferenceSession] = {}
        self.encoder = TextEncoder.from_dir(root)

    # -- description -------------------------------------------------------------------------------------------
    @property
    def labels(self) -> list[str]:
        return list(self.manifest["labels"])

    @property
    def cut(self) -> int:
        return int(self.manifest["cut"])

    @property
    def num_layers(self) -> int:
        return int(self.manifest["backbone"]["num_layers"])

    @property
    def hidden_size(self) -> int:
        return int(self.manifest["backbone"]["hidden_size"])

    @property
    def precisions(self) -> list[str]:
        """Trunk precisions in the package: ``fp32`` always, ``int8`` when exported with it."""
        return ["fp32"] + (["int8"] if self.manifest.get("trunk_int8") else [])

    def file(self, name: str) -> Path:
        if name not in self.manifest["files"]:
            raise PackageError(f"{self.path}: no file {name!r} in this package")
        return self.root / name

    # -- trunk ---------------------------------------------------------------------------------------------------
    def _trunk_entry(self, precision: str) -> dict[str, Any]:
        if precision == "fp32":
            return self.manifest["trunk"]
        if precision == "int8" and self.manifest.get("trunk_int8"):
            return self.manifest["trunk_int8"]
        raise PackageError(f"{self.path}: no {precision} trunk in this package (has: {', '.join(self.precisions)})")

    def trunk_session(self, precision: str = "fp32", threads: int | None = None) -> ort.InferenceSession:
        """The trunk in onnxruntime (one session per precision and thread count, reused)."""
        threads = self.threads if threads is None else threads
        key = (f"trunk-{precision}", threads)
        if key not in self._sessions:
            self._sessions[key] = ort_session(self.file(self._trunk_entry(precision)["file"]), threads)
        return self._sessions[key]

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Right-padded int64 ``(input_ids, attention_mask)``, exactly as the server encoded them."""
        return self.encoder(texts)

    def run_trunk(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, precision: str = "fp32", threads: int | None = None
    ) -> np.ndarray:
        """The hidden state at the cut, ``(batch, sequence, hidden)`` float32: what the device caches."""
        return run_trunk(self.trunk_session(precision, threads), input_ids, attention_mask)

    # -- top -----------------------------------------------------------------------------------------------------
    def top_model(self) -> TopModel:
        """A fresh torch copy of the trainable top (blocks cut+1..L, norm, pooling, head) from its safetensors."""
        from edgetune.modeling import TopModel

        top = self.manifest["top"]
        name = Path(top["weights"]).stem
        if top["spec"] != f"{name}.json":
            raise PackageError(f"{self.path}: top weights {top['weights']} and spec {top['spec']} do not pair up")
        return TopModel.load(self.root, name).eval()

    def top_spec(self) -> dict[str, Any]:
        """``top.json``: the spec that rebuilds the top (family, Hugging Face config, cut, layers)."""
        return json.loads(self.file(self.manifest["top"]["spec"]).read_text())

    def onnx_top_entry(self) -> dict[str, Any]:
        """The manifest's entry of the ONNX top (tensors as inputs); a package exported without it says so."""
        entry = self.manifest.get("top_onnx") or (self.manifest.get("executorch") or {}).get("predict")
        if not entry or not entry.get("tensors_as_inputs", entry.get("file") == "top_fn.onnx"):
            raise PackageError(
                f"{self.path}: exported without the ONNX top (tensors as inputs); re-export with --top-onnx to "
                "predict without torch, or predict with the torch top"
            )
        return entry

    def top_tensors(self) -> dict[str, np.ndarray]:
        """The top's tensors (``top.safetensors``) as numpy arrays."""
        from safetensors.numpy import load_file

        return load_file(str(self.file(self.manifest["top"]["weights"])))

    def top_session(self, threads: int | None = None) -> ort.InferenceSession:
        """The ONNX top's onnxruntime session (one per thread count)."""
        entry = self.onnx_top_entry()
        threads = self.threads if threads is None else threads
        key = ("top", threads)
        if key not in self._sessions:
            self._sessions[key] = ort_session(self.file(entry["file"]), threads)
        return self._sessions[key]

    def onnx_top(self, threads: int | None = None, tensors: dict[str, np.ndarray] | None = None) -> OnnxTop:
        """The top in onnxruntime alone, with ``tensors`` (default: the package's own, the global top)."""
        return OnnxTop(self.top_session(threads), self.top_tensors() if tensors is None else tensors)

    # -- prediction ----------------------------------------------------------------------------------------------
    def predict_logits(
        self,
        texts: Sequence[str],
        batch_size: int = 32,
        precision: str = "fp32",
        backend: str = "torch",
        top: TopModel | None = None,
        threads: int | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """Logits ``(n, num_labels)``: trunk in onnxruntime, top in torch (``backend="torch"``, optionally a
        personalized ``top``) or in onnxruntime (``backend="onnx"``)."""
        session = self.trunk_session(precision, threads)

        def trunk(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
            return run_trunk(session, ids, mask)

        if backend == "torch":
            fn = torch_top_fn(top if top is not None else self.top_model(), trunk)
        elif backend == "onnx":
            if top is not None:
                raise ValueError("a torch top model cannot run with backend='onnx'")
            fn = onnx_top_fn(self.onnx_top(threads), trunk)
        else:
            raise ValueError(f"backend must be 'torch' or 'onnx', got {backend!r}")
        return map_batches(self.encoder, list(texts), fn, batch_size, progress, "predict")

    def predict(self, texts: Sequence[str], **kwargs: Any) -> list[str]:
        """Predicted label of each text (see :meth:`predict_logits` for the options)."""
        logits = self.predict_logits(texts, **kwargs)
        return [self.labels[i] for i in logits.argmax(axis=1)]

    # -- lifetime ------------------------------------------------------------------------------------------------
    def release_sessions(self) -> None:
        """Drop the onnxruntime sessions (their weights and arenas); a later call creates them again.

        A device that has cached the trunk's output trains without the trunk, so it gives the memory back: the
        freed heap is returned to the OS too (glibc keeps it for reuse otherwise, and the training that follows
        would run beside it).
        """
        import ctypes
        import gc

        self._sessions.clear()
        gc.collect()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc: nothing to trim
            pass

    def close(self) -> None:
        self._sessions.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> DevicePackage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        b = self.manifest["backbone"]
        return (
            f"DevicePackage({str(self.path)!r}, {b['model_type']} {b['num_layers']} layers, cut {self.cut}, "
            f"{len(self.labels)} labels, trunk {'+'.join(self.precisions)})"
        )
