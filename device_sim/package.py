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

import contextlib
import functools
import hashlib
import os
import stat
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from device_sim.onnx_tokenizer import load_encoder
from device_sim.runtime import (
    OnnxTop,
    check_threads,
    map_batches,
    onnx_top_fn,
    ort_session,
    run_trunk,
    torch_top_fn,
)
from edgetune.io import honour_umask, naming, private_tempdir
from edgetune.package_plan import PackagePlan
from edgetune_format import manifest as mf
from edgetune_format import schema
from edgetune_format.errors import PackageError, one_line

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
TEMP_PREFIX = "edgetune-package-"  # private snapshots in the temp dir; a killed run's are swept by the next one


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
    signer: str | None = None  # the key id a manifest.sig names (checked only against a trust store)
    trusted: bool = False  # the signature was checked against the device's trust store and held

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_for_problems(self) -> None:
        if self.problems:
            raise PackageError(f"{self.path}: " + "; ".join(self.problems) + f"; {mf.PACKAGE_MANIFEST.remedy}")


def _size_problem(name: str, actual: int, size: int) -> str:
    kind = "truncated" if actual < size else "longer than exported"
    return f"{name}: {actual} bytes, manifest says {size} ({kind})"


def _copy_hashing(src: BinaryIO, dst: BinaryIO, limit: int) -> tuple[int, str]:
    """Copy at most ``limit`` bytes, hashing them on the way: ``(bytes copied, sha256)``."""
    h = hashlib.sha256()
    copied = 0
    while copied < limit:
        block = src.read(min(1 << 20, limit - copied))
        if not block:
            break
        h.update(block)
        dst.write(block)
        copied += len(block)
    return copied, h.hexdigest()


def _copy_listed(root: Path, into: Path, name: str, entry: dict[str, Any]) -> FileCheck:
    """Copy one listed file of a package directory into the private snapshot, checking its size and sha256 on
    the bytes copied (what the job will use), never on a second read of the path."""
    size = int(entry["size"])
    try:
        fd = os.open(root / name, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return FileCheck(name, size, None, False, f"{name}: missing from the package")
    except OSError as err:
        what = "a link (refused)" if (root / name).is_symlink() else f"unreadable ({err.strerror})"
        return FileCheck(name, size, None, False, f"{name}: {what}")
    with os.fdopen(fd, "rb") as src:
        info = os.fstat(src.fileno())
        if not stat.S_ISREG(info.st_mode):
            return FileCheck(name, size, None, False, f"{name}: not a regular file")
        if info.st_size != size:
            return FileCheck(name, size, info.st_size, False, _size_problem(name, info.st_size, size))
        with open(into / name, "wb") as dst:
            copied, digest = _copy_hashing(src, dst, size + 1)  # one byte more: a file that grew is seen
    if copied != size:
        return FileCheck(name, size, copied, False, f"{name}: changed while it was read ({copied} bytes, not {size})")
    if digest != entry["sha256"]:
        return FileCheck(name, size, copied, False, f"{name}: sha256 does not match the manifest (tampered or corrupt)")
    return FileCheck(name, size, copied, True)


def _check_top_spec(root: Path, manifest: dict[str, Any]) -> list[str]:
    """The top spec must describe the manifest's cut and labels (a consistent package), and the parts must fit
    each other (:mod:`device_sim.fit`): every check a job makes before it runs anything."""
    from device_sim.fit import fit_problems

    name = manifest["top"]["spec"]
    try:
        spec = schema.load_json((root / name).read_bytes(), name)
    except (OSError, schema.SchemaError) as err:
        return [f"{name}: unreadable top spec ({err})"]
    if not isinstance(spec, dict) or spec.get("cut") != manifest["cut"] or spec.get("labels") != manifest["labels"]:
        return [f"{name}: cut/labels differ from the manifest"]
    spec = mf.upgrade_top_spec(spec)
    try:
        schema.validate(spec, schema.TOP)
    except schema.SchemaError as err:
        return [f"{name}: {err} (not the structure of a top spec)"]
    return fit_problems(root, manifest, spec)


def _trust_problem(raw: bytes, signature: bytes | None, manifest: dict[str, Any], result: Verification) -> None:
    """Record who signed the package, and refuse it when the device's trust store does not accept it."""
    from edgetune_format import trust

    if signature is not None:
        try:
            result.signer = trust.signer_of(signature)
        except trust.TrustError as err:
            result.problems.insert(0, str(err))
            return
    store = trust.active()
    if store is None:
        return
    try:
        store.check(raw, signature, manifest)
    except trust.TrustError as err:
        result.problems[:] = [str(err)]  # nothing else about an untrusted package is worth a user's reading
        return
    result.trusted = True


def _read_signature(path: Path) -> bytes | None:
    """``manifest.sig`` of a package directory (size-capped), or None when the package is unsigned."""
    from edgetune_format.trust import MAX_SIGNATURE_BYTES

    try:
        fd = os.open(path / mf.SIGNATURE, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    except OSError as err:
        raise PackageError(f"{mf.SIGNATURE}: cannot be read ({err.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise PackageError(f"{mf.SIGNATURE}: not a regular file")
        data = f.read(MAX_SIGNATURE_BYTES + 1)
    if len(data) > MAX_SIGNATURE_BYTES:
        raise PackageError(f"{mf.SIGNATURE}: more than {MAX_SIGNATURE_BYTES} bytes (not a signature)")
    return data


def _read_manifest(path: Path) -> bytes:
    """``manifest.json`` of a package directory, read once (size-capped)."""
    manifest_path = path / mf.MANIFEST
    if not manifest_path.is_file():
        raise PackageError(f"{mf.MANIFEST}: missing (not a device package)")
    with open(manifest_path, "rb") as f:
        raw = f.read(mf.MAX_MANIFEST_BYTES + 1)
    if len(raw) > mf.MAX_MANIFEST_BYTES:
        raise PackageError(f"{mf.MANIFEST}: more than {mf.MAX_MANIFEST_BYTES} bytes (not a real manifest)")
    return raw


def _verify_snapshot(root: Path, source: Path, manifest: dict[str, Any], checks: list[FileCheck]) -> Verification:
    problems = [c.problem for c in checks if not c.ok]
    if not problems:
        problems.extend(_check_top_spec(root, manifest))
    return Verification(source, manifest, checks, problems)


def verify_directory(root: Path, source: Path | None = None) -> Verification:
    """Check a package directory (on a private copy of what its manifest lists, removed afterwards); every
    problem is collected (for ``edgetune inspect``)."""
    source = source or root
    with private_tempdir(TEMP_PREFIX) as tmp:
        return _snapshot_directory(root, Path(tmp), source)


def _snapshot_directory(root: Path, into: Path, source: Path) -> Verification:
    """Copy the manifest and the files it lists (nothing else) into ``into``, verifying the copied bytes."""
    try:
        raw = _read_manifest(root)
        signature = _read_signature(root)
        manifest = mf.parse(raw)
    except PackageError as err:
        return Verification(source, None, [], [str(err)])
    (into / mf.MANIFEST).write_bytes(raw)
    if signature is not None:
        (into / mf.SIGNATURE).write_bytes(signature)
    checks = [_copy_listed(root, into, name, entry) for name, entry in manifest["files"].items()]
    result = _verify_snapshot(into, source, manifest, checks)
    _trust_problem(raw, signature, manifest, result)
    # The same rule as the tar form: a package is exactly what its manifest lists (a file added after the seal
    # may be harmless, but nothing vouches for it and a reader must not guess).
    own = (mf.MANIFEST, mf.SIGNATURE)
    unlisted = sorted(p.name for p in root.iterdir() if p.name not in own and p.name not in manifest["files"])
    result.problems.extend(f"{root / name}: not listed in {mf.MANIFEST} (refused)" for name in unlisted)
    return result


# -- tar form ---------------------------------------------------------------------------------------------------


def write_tar(directory: Path, dest: Path) -> Path:
    """Pack a package directory into one uncompressed ``.tar`` (manifest first), written atomically.

    Members are flat regular files with fixed owner and time, so the same package gives the same bytes.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    own = [name for name in (mf.MANIFEST, mf.SIGNATURE) if (directory / name).exists()]
    names = own + sorted(p.name for p in directory.iterdir() if p.name not in own)
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
        honour_umask(tmp)  # mkstemp's 0600 would keep a shared package from other users of the device
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


_REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE)


def _check_member(path: Path, m: tarfile.TarInfo, what: str) -> None:
    if m.type not in _REGULAR or not m.isreg():
        raise PackageError(f"{path}: member {m.name!r} is not a regular file (links and devices are refused)")
    if m.sparse is not None or any(k.startswith("GNU.sparse") for k in m.pax_headers):
        raise PackageError(f"{path}: member {m.name!r} is a sparse file (refused{': ' + what if what else ''})")


def _tar_members(path: Path, tar: tarfile.TarFile) -> tuple[bytes, bytes | None, dict[str, Any], list[tarfile.TarInfo]]:
    """The archive's manifest, its signature (the second member, when signed) and its members, checked before a
    byte is written: the manifest first, then only files it lists, each a regular member of exactly the size it
    declares, none twice."""
    from edgetune_format.trust import MAX_SIGNATURE_BYTES

    members = tar.getmembers()
    if len(members) > _TAR_MAX_MEMBERS:
        raise PackageError(f"{path}: {len(members)} members; a package has at most {_TAR_MAX_MEMBERS}")
    if not members or members[0].name != mf.MANIFEST:
        first = members[0].name if members else "nothing"
        raise PackageError(f"{path}: the first member must be {mf.MANIFEST}, found {first!r} (not a package archive)")
    head = members[0]
    _check_member(path, head, "a manifest is a few KB")
    if head.size > mf.MAX_MANIFEST_BYTES:
        raise PackageError(f"{path}: {mf.MANIFEST} declares {head.size} bytes (not a real manifest)")
    src = tar.extractfile(head)
    assert src is not None
    with src:
        raw = src.read(head.size)
    manifest = mf.parse(raw)
    files = manifest["files"]
    seen = {mf.MANIFEST}
    rest = members[1:]
    signature = None
    if rest and rest[0].name == mf.SIGNATURE:
        _check_member(path, rest[0], "a signature is a few hundred bytes")
        if rest[0].size > MAX_SIGNATURE_BYTES:
            raise PackageError(f"{path}: {mf.SIGNATURE} declares {rest[0].size} bytes (not a signature)")
        src = tar.extractfile(rest[0])
        assert src is not None
        with src:
            signature = src.read(rest[0].size)
        rest = rest[1:]
    for m in rest:
        if not mf.safe_name(m.name) or m.name in seen:
            raise PackageError(f"{path}: unsafe or duplicate member name {m.name!r}")
        _check_member(path, m, f"{mf.MANIFEST} lists {files[m.name]['size']} bytes" if m.name in files else "")
        if m.name not in files:
            raise PackageError(f"{path}: member {m.name!r} is not listed in {mf.MANIFEST} (refused)")
        if m.size != files[m.name]["size"]:
            raise PackageError(f"{path}: {_size_problem(m.name, m.size, files[m.name]['size'])}")
        seen.add(m.name)
    return raw, signature, manifest, rest


def extract_tar(path: Path, into: Path) -> Verification:
    """Extract a package ``.tar`` into ``into`` and verify what was written.

    Only what the manifest lists is accepted, as regular members of the size it declares (their sum is capped,
    :data:`edgetune_format.manifest.MAX_PACKAGE_BYTES`); the manifest must come first. Anything else (links, devices,
    sparse members, unlisted or oversized files, unsafe names) is refused before a byte is written, and
    members are copied by hand (at most their declared size each) rather than with ``extractall``.
    """
    try:
        with tarfile.open(path, mode="r:") as tar:
            raw, signature, manifest, members = _tar_members(path, tar)
            (into / mf.MANIFEST).write_bytes(raw)
            if signature is not None:
                (into / mf.SIGNATURE).write_bytes(signature)
            checks = []
            for m in members:
                entry = manifest["files"][m.name]
                src = tar.extractfile(m)
                assert src is not None
                with src, open(into / m.name, "wb") as out:
                    copied, digest = _copy_hashing(src, out, m.size)
                if copied != m.size:
                    raise PackageError(f"{path}: {m.name}: archive ends inside it (truncated)")
                ok = digest == entry["sha256"]
                problem = "" if ok else f"{m.name}: sha256 does not match the manifest (tampered or corrupt)"
                checks.append(FileCheck(m.name, m.size, copied, ok, problem))
    except (tarfile.TarError, EOFError) as err:
        raise PackageError(f"{path}: not a readable package archive ({err}); truncated or corrupted") from None
    present = {c.name for c in checks}
    for name, entry in manifest["files"].items():
        if name not in present:
            checks.append(FileCheck(name, int(entry["size"]), None, False, f"{name}: missing from the package"))
    result = _verify_snapshot(into, path, manifest, checks)
    _trust_problem(raw, signature, manifest, result)
    return result


# -- loading ----------------------------------------------------------------------------------------------------


def is_package(path: str | Path) -> bool:
    """Whether ``path`` looks like a package (a manifest is present); nothing is verified."""
    path = Path(path)
    if path.is_dir():
        return (path / mf.MANIFEST).is_file()
    if path.is_file() and tarfile.is_tarfile(path):
        try:
            with tarfile.open(path, mode="r:") as tar:
                first = tar.next()
                return first is not None and first.name == mf.MANIFEST
        except (tarfile.TarError, EOFError):
            return False
    return False


def _snapshot(path: Path) -> tuple[Verification, tempfile.TemporaryDirectory]:
    """A private copy of the package (its manifest and the files it lists, nothing else), verified on the copied
    bytes: what a job reads later cannot change when ``path`` does (a re-export into the same place)."""
    if not path.exists():
        raise PackageError(f"{path}: no such package (directory or .tar)")
    tmp = private_tempdir(TEMP_PREFIX)
    try:
        if path.is_dir():
            result = _snapshot_directory(path, Path(tmp.name), path)
        else:
            result = extract_tar(path, Path(tmp.name))
    except OSError as err:  # the temp directory is full or unwritable: name it (writes on a descriptor do not)
        tmp.cleanup()
        raise naming(err, tmp.name) from None
    except BaseException:
        tmp.cleanup()
        raise
    return result, tmp


def verify_package(path: str | Path) -> Verification:
    """Check a package directory or ``.tar`` without loading it; all problems are reported."""
    path = Path(path)
    try:
        result, tmp = _snapshot(path)
    except PackageError as err:
        return Verification(path, None, [], [str(err)])
    tmp.cleanup()
    return result


def load_package(
    path: str | Path, threads: int | None = None, record: bool = True, tokenizer: str = "auto"
) -> DevicePackage:
    """Open and fully verify a package (directory or ``.tar``); :class:`PackageError` names any bad file.

    The package is read once, into a private snapshot that the returned package uses for everything (the
    tokenizer, the trunk, the top): replacing ``path`` while a job runs cannot mix two versions.
    ``threads`` is the default onnxruntime intra-op thread count of the sessions it creates. With a trust store
    in force (:mod:`edgetune_format.trust`) the signature is checked too, and unless ``record`` is false the package's
    release version becomes the lowest this device accepts for its release name. ``tokenizer``: how texts become
    ids (:func:`device_sim.onnx_tokenizer.load_encoder`: ``auto``, ``tokenizers`` or ``onnx``).
    """
    path = Path(path)
    check_threads(threads)
    result, tmp = _snapshot(path)
    try:
        result.raise_for_problems()
        assert result.manifest is not None
        package = DevicePackage(path, Path(tmp.name), result.manifest, threads, tmp, tokenizer)
        if result.trusted and record:  # accepted for a job: from now on an older release of it is a rollback
            from edgetune_format import trust

            store = trust.active()
            assert store is not None
            store.record(result.manifest)
        package.signer, package.trusted = result.signer, result.trusted
        return package
    except BaseException:
        tmp.cleanup()
        raise


_LOCATION = b"\x0a\x08location\x12"


def external_data_locations(path: Path) -> list[str]:
    """The ``location`` of every external-data entry of an ONNX file (read from its bytes, without onnx).

    An entry is a protobuf ``StringStringEntryProto``: key ``location`` (field 1), then its value (field 2).
    """
    import mmap

    found: list[str] = []
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return found
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            at = data.find(_LOCATION)
            while at >= 0:
                i, length, shift = at + len(_LOCATION), 0, 0
                while i < len(data) and shift < 35:  # the value's length: a varint
                    byte = data[i]
                    length |= (byte & 0x7F) << shift
                    i += 1
                    shift += 7
                    if not byte & 0x80:
                        break
                found.append(bytes(data[i : i + min(length, 4096)]).decode("utf-8", "replace"))
                at = data.find(_LOCATION, i)
    return found


class PartSession:
    """An onnxruntime session that reports a failure while it runs as one :class:`PackageError` naming the
    package part (the graph file), instead of onnxruntime's multi-line message from deep inside a job."""

    def __init__(self, session: ort.InferenceSession, part: str) -> None:
        self._session = session
        self._part = part

    def run(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self._session.run(*args, **kwargs)
        except Exception as err:
            if not type(err).__module__.startswith("onnxruntime"):
                raise
            raise PackageError(
                f"{self._part}: onnxruntime failed while running it ({one_line(err)}); the package's parts do not "
                "fit each other: re-export it"
            ) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


class DevicePackage:
    """A verified package, as a device uses it. Close it (or use ``with``) to free an extracted ``.tar``."""

    def __init__(
        self,
        path: Path,
        root: Path,
        manifest: dict[str, Any],
        threads: int | None = None,
        tmp: tempfile.TemporaryDirectory | None = None,
        tokenizer: str = "auto",
    ) -> None:
        self.path = path
        self.root = root
        self.manifest = manifest
        self.threads = threads
        self._tmp = tmp
        self.signer: str | None = None  # set by load_package from the verification
        self.trusted = False
        self._sessions: dict[tuple[str, int | None], ort.InferenceSession] = {}
        with self.reading(manifest["tokenizer"]["tokenizer"], manifest["tokenizer"]["encoder"]):
            # tokenizers, or the same tokenizer as an onnxruntime-extensions graph (device_sim.onnx_tokenizer)
            self.encoder = load_encoder(root, tokenizer)

    @contextlib.contextmanager
    def reading(self, *names: str) -> Iterator[None]:
        """Turn a library's error on a verified file (its bytes match the manifest, yet it does not load: a
        package exported or re-sealed wrong) into one :class:`PackageError` that names the file."""
        try:
            yield
        except PackageError:
            raise
        except Exception as err:  # noqa: BLE001 (onnxruntime, safetensors, tokenizers and torch raise their own)
            raise PackageError(
                f"{self.path}: {' / '.join(names)}: matches the manifest but cannot be loaded ({one_line(err)}); "
                "the package was exported or sealed wrong: re-export it"
            ) from None

    # -- description -------------------------------------------------------------------------------------------
    @property
    def labels(self) -> list[str]:
        return list(self.manifest["labels"])

    @property
    def cut(self) -> int:
        return int(self.manifest["cut"])

    @functools.cached_property
    def plan(self) -> PackagePlan:
        """The plan the package was exported from, typed (its columns, tuner, architecture for the cost model)."""
        return PackagePlan.from_manifest(self.manifest)

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

    @property
    def trunk_optimization(self) -> str:
        """``fused`` when ``trunk.onnx`` carries onnxruntime's transformer fusions (the manifest's optional
        ``trunk_optimization``; its ``com.microsoft`` ops run in onnxruntime), else ``none``."""
        return str((self.manifest.get("trunk_optimization") or {}).get("level", "none"))

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
        """The trunk in onnxruntime (one session per precision and thread count, reused), without a memory arena:
        a device's memory peak is the trunk pass, and the arena would keep it for the session's life."""
        threads = self.threads if threads is None else threads
        key = (f"trunk-{precision}", threads)
        if key not in self._sessions:
            entry = self._trunk_entry(precision)
            self._sessions[key] = self._onnx_session(entry["file"], entry["files"], threads, arena=False)
        return self._sessions[key]

    def _onnx_session(
        self, name: str, files: list[str], threads: int | None, arena: bool = True
    ) -> ort.InferenceSession:
        """An onnxruntime session of a listed graph whose external data (if any) are the package's own files."""
        path = self.file(name)
        for location in external_data_locations(path):
            if location not in files or location not in self.manifest["files"]:
                raise PackageError(
                    f"{self.path}: {name}: external data {location!r} is not one of this component's files "
                    f"({', '.join(files)}); refused"
                )
        with self.reading(name):
            return PartSession(ort_session(path, threads, arena=arena), f"{self.path}: {name}")  # type: ignore[return-value]

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
        if top["spec"] != f"{name}.json" or top["weights"] != f"{name}.safetensors":
            raise PackageError(f"{self.path}: top weights {top['weights']} and spec {top['spec']} do not pair up")
        self.top_spec()  # its schema first: a wrong top.json is named as such, not as a torch error
        with self.reading(top["weights"], top["spec"]):
            return TopModel.load(self.root, name).eval()

    def top_spec(self) -> dict[str, Any]:
        """``top.json`` in the current form (family, Hugging Face config, cut, 1-based ``blocks``; a version-1
        package's 0-based ``layers`` are renumbered)."""
        name = self.manifest["top"]["spec"]
        with self.reading(name):
            spec = mf.upgrade_top_spec(schema.load_json(self.file(name).read_bytes(), name))
            schema.validate(spec, schema.TOP)  # edgetune_format/schemas/top.schema.json
            return spec

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

        name = self.manifest["top"]["weights"]
        with self.reading(name):
            return load_file(str(self.file(name)))

    def top_session(self, threads: int | None = None) -> ort.InferenceSession:
        """The ONNX top's onnxruntime session (one per thread count), without a memory arena like the trunk's:
        measured on MiniLM at 32 texts of 128 tokens, the arena kept ~115 MB for the session's life."""
        entry = self.onnx_top_entry()
        threads = self.threads if threads is None else threads
        key = ("top", threads)
        if key not in self._sessions:
            files = entry.get("files", [entry["file"]])
            self._sessions[key] = self._onnx_session(entry["file"], files, threads, arena=False)
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

    def check_runnable(self) -> None:
        """Open every graph and read every tensor a job may use (each precision's trunk, the ONNX top, the top's
        weights and spec): what ``inspect`` adds to verification so that it refuses what a job would."""
        for precision in self.precisions:
            self.trunk_session(precision)
        if self.manifest.get("top_onnx"):
            self.top_session()
        self.top_spec()
        self.top_tensors()
        self.release_sessions()

    # -- lifetime ------------------------------------------------------------------------------------------------
    def release_sessions(self) -> None:
        """Drop the onnxruntime sessions (their weights and arenas); a later call creates them again.

        A device that has cached the trunk's output trains without the trunk, so it gives the memory back: the
        freed heap is returned to the OS too (glibc keeps it for reuse otherwise, and the training that follows
        would run beside it).
        """
        import gc

        from device_sim.memory import trim

        self._sessions.clear()
        gc.collect()
        trim()

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
