"""The personal state: what a device keeps after personalizing a package.

A directory of two flat files, written in one atomic step (a crash leaves the
previous state or the new one, never half of one):

* ``delta.safetensors`` — only the tensors training changed: the tuner's
  trainable tensors (every weight of the trained blocks for ``full``, the
  adapter matrices for ``lora``, always the head), named as in the trained top
  (``blocks.0`` is block ``train_cut + 1``); after a FaLA backbone swap
  (kind ``fala``), the personal matrix and the old personal head that reads
  its output (``matrix.linear.*``, ``head.*``, see :mod:`device_sim.swap`);
  none when the do-no-harm guard refused the personal top (kind
  ``kept_global``: the device keeps using the package's global top, and the
  manifest's ``guard`` entry holds both scores, see :mod:`device_sim.guard`);
* ``personal.json``     — what the tensors are and which package they belong
  to: the package's identity (backbone hash, cut, labels and the sha256 of
  every file that determines the features and the base weights), the cut the
  device trained above, the tuner, how training went, the file table (sha256
  and size) and an integrity seal over the JSON itself.

Reading verifies everything before a tensor is used: format, schema version,
seal, file sizes and hashes, and the tensors listed. Using a state with a
package checks that it is *that* package; anything else is a
:class:`PersonalStateError` that says what differs. The seal detects damage and
accidental edits, not a deliberate forgery (see docs/package-format.md).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from edgetune.errors import EdgetuneError
from edgetune.io import atomic_directory, atomic_write_bytes, atomic_write_json, sha256_file
from edgetune_format import schema
from edgetune_format.errors import one_line
from edgetune_format.manifest import SealedDocument, read_sealed, seal
from edgetune_format.trust import PERSONAL_MAC, check_personal_mac, device_key, personal_mac

if TYPE_CHECKING:
    import torch


class DevicePackage(Protocol):
    """What a personal state reads of the package it belongs to (a loaded ``device_sim.package.DevicePackage``)."""

    path: Path
    manifest: dict[str, Any]

    @property
    def cut(self) -> int: ...

    @property
    def num_layers(self) -> int: ...


FORMAT = "edgetune-personal-state"
SCHEMA_VERSION = 1
MANIFEST = "personal.json"
WEIGHTS = "delta.safetensors"
KINDS = ("top_delta", "fala", "kept_global")


class PersonalStateError(EdgetuneError):
    """A personal state is missing, damaged, of another schema, or belongs to another package."""


def package_identity(package: DevicePackage) -> dict[str, Any]:
    """What a personal state must match: the backbone, cut, labels, and the hashes of the files that make the
    features (trunk, tokenizer, encoder settings) and the base top (weights, spec).

    The int8 trunk and ``top.onnx`` are left out: they are other renderings of the same weights, and a
    re-export of the same model and plan keeps its identity even though its manifest (timestamps) changes.
    """
    m = package.manifest
    names = [*m["trunk"]["files"], m["top"]["weights"], m["top"]["spec"]]
    names += [m["tokenizer"]["tokenizer"], m["tokenizer"]["encoder"]]
    return {
        "backbone_id": m["backbone"]["id"],
        "backbone_hash": m["backbone"]["hash"],
        "cut": int(m["cut"]),
        "num_layers": int(m["backbone"]["num_layers"]),
        "labels": list(m["labels"]),
        "files": {name: m["files"][name]["sha256"] for name in sorted(names)},
    }


# What must be equal for a state to belong to a package. ``backbone_id`` is recorded too but only for messages:
# it is where the model was read from (a path), and the same weights exported from elsewhere are the same model.
# ``files`` is compared as a whole, so an empty or partial table in a state never matches.
IDENTITY_KEYS = ("backbone_hash", "cut", "num_layers", "labels", "files")


def identity_digest(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


@dataclass
class PersonalState:
    """A verified personal state: its manifest and tensors (CPU)."""

    path: Path
    manifest: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    @property
    def kind(self) -> str:
        return str(self.manifest["kind"])

    @property
    def kept_global(self) -> bool:
        """Whether this state records that the guard kept the global model (it holds no tensor)."""
        return self.kind == "kept_global"

    @property
    def train_cut(self) -> int:
        return int(self.manifest["train_cut"])

    @property
    def tuner(self) -> dict[str, Any]:
        return dict(self.manifest["tuner"])

    @property
    def package(self) -> dict[str, Any]:
        return dict(self.manifest["package"])

    def check_package(self, package: DevicePackage) -> None:
        """Refuse a package this state was not trained for, saying what differs (the spec's identity rule: the
        keys of :data:`IDENTITY_KEYS`, the file table naming exactly the package's feature and top files), and a
        ``train_cut`` outside the package's top (both runtimes refuse it here, before either applies the state)."""
        mine, theirs = self.package, package_identity(package)
        differ = [key for key in IDENTITY_KEYS if mine.get(key) != theirs.get(key)]
        if not differ:
            if not package.cut <= self.train_cut <= package.num_layers:
                raise PersonalStateError(
                    f"{self.path}: train cut {self.train_cut} is outside this package's top (blocks "
                    f"{package.cut + 1}..{package.num_layers}, train cut {package.cut}..{package.num_layers})"
                )
            return
        if "files" in differ:
            names = sorted(mine["files"].keys() | theirs["files"].keys())
            files = [n for n in names if mine["files"].get(n) != theirs["files"].get(n)]
            differ[differ.index("files")] = "files " + ", ".join(files)
        raise PersonalStateError(
            f"{self.path}: personal state belongs to another package (it was trained on {mine['backbone_id']!r}, "
            f"backbone {mine['backbone_hash'][:12]}, cut {mine['cut']}; {package.path} is "
            f"{theirs['backbone_id']!r}, backbone {theirs['backbone_hash'][:12]}, cut {theirs['cut']}; differs in: "
            f"{'; '.join(differ)}); personalize again for this package (or swap the personal state to it)"
        )


def is_personal_state(path: str | Path) -> bool:
    """Whether ``path`` looks like a personal state directory (nothing is verified)."""
    return (Path(path) / MANIFEST).is_file()


def write_personal_state(
    out: str | Path,
    tensors: dict[str, torch.Tensor] | dict[str, np.ndarray],
    package: DevicePackage,
    *,
    train_cut: int,
    tuner: dict[str, Any],
    training: dict[str, Any] | None = None,
    kind: str = "top_delta",
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a personal state for ``package`` at ``out`` in one atomic step (see the module docstring).

    ``out`` may be absent, empty, or an older personal state (replaced only when the new one is complete);
    anything else is refused, so a mistyped path never destroys a directory of other files.
    """
    out = Path(out)
    check_writable(out)
    if kind not in KINDS:
        raise ValueError(f"unknown personal state kind {kind!r}; known: {', '.join(KINDS)}")
    if all(isinstance(t, np.ndarray) for t in tensors.values()):  # the torch-free backends
        from safetensors.numpy import save_file

        cpu: dict[str, Any] = {name: np.ascontiguousarray(t) for name, t in sorted(tensors.items())}
    else:
        from safetensors.torch import save_file

        cpu = {name: t.detach().cpu().contiguous() for name, t in sorted(tensors.items())}
    with atomic_directory(out) as tmp:
        save_file(cpu, str(tmp / WEIGHTS), metadata={"format": FORMAT})
        manifest = {
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "kind": kind,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "package": package_identity(package),
            "train_cut": int(train_cut),
            "tuner": tuner,
            "weights": WEIGHTS,
            "tensors": {name: list(t.shape) for name, t in cpu.items()},
            "num_params": int(sum(int(np.prod(t.shape)) for t in cpu.values())),
            "training": training or {},
            **(extra or {}),
            "files": {WEIGHTS: {"sha256": sha256_file(tmp / WEIGHTS), "size": (tmp / WEIGHTS).stat().st_size}},
        }
        atomic_write_json(tmp / MANIFEST, seal(manifest))
        key = device_key()
        if key is not None:  # bound to this device: another device's (or an edited) state is refused on read
            atomic_write_bytes(tmp / PERSONAL_MAC, personal_mac(key, (tmp / MANIFEST).read_bytes()))
    return out


def check_writable(out: Path) -> None:
    """``out`` may become a personal state: absent, an empty directory, or a personal state already."""
    if not out.exists():
        return
    if not out.is_dir():
        raise PersonalStateError(f"{out}: exists and is not a directory; refusing to replace it with a personal state")
    if any(out.iterdir()) and not is_personal_state(out):
        raise PersonalStateError(f"{out}: directory is not empty and holds no personal state; refusing to overwrite it")


def read_personal_state(path: str | Path, framework: str = "pt") -> PersonalState:
    """Read and verify a personal state (format, version, seal, file sizes and hashes, tensor list).

    ``framework``: ``"pt"`` gives torch tensors, ``"np"`` numpy arrays (a torch-free device)."""
    path = Path(path)
    if not path.exists():
        raise PersonalStateError(f"{path}: no such personal state directory")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        what = (
            "a device package, not a personal state" if (path / "manifest.json").is_file() else "not a personal state"
        )
        raise PersonalStateError(f"{path}: {MANIFEST} missing ({what})")
    raw = manifest_path.read_bytes()
    check_personal_mac(path, raw)
    manifest = _parse(path, raw)
    entry = manifest["files"].get(WEIGHTS)
    weights = path / WEIGHTS
    if not isinstance(entry, dict) or not weights.is_file():
        raise PersonalStateError(f"{path}: {WEIGHTS} missing")
    size = weights.stat().st_size
    if size != entry.get("size"):
        raise PersonalStateError(f"{path}: {WEIGHTS}: {size} bytes, {MANIFEST} says {entry.get('size')} (truncated?)")
    if sha256_file(weights) != entry.get("sha256"):
        raise PersonalStateError(
            f"{path}: {WEIGHTS}: sha256 does not match {MANIFEST} (tampered or corrupt); {PERSONAL_STATE.remedy}"
        )
    if framework == "np":
        from safetensors.numpy import load_file
    else:
        from safetensors.torch import load_file

    try:
        tensors = load_file(str(weights))
    except Exception as err:  # noqa: BLE001 (safetensors raises its own and several builtin errors)
        raise PersonalStateError(f"{path}: {WEIGHTS}: not readable safetensors ({one_line(err)})") from None
    listed = {name: list(shape) for name, shape in manifest["tensors"].items()}
    if {name: list(t.shape) for name, t in tensors.items()} != listed:
        raise PersonalStateError(f"{path}: {WEIGHTS} holds other tensors than {MANIFEST} lists")
    return PersonalState(path, manifest, tensors)


def load_personal_state(path: str | Path, package: DevicePackage) -> PersonalState:
    """Read and verify a personal state, and check that it belongs to ``package``."""
    state = read_personal_state(path)
    state.check_package(package)
    return state


PERSONAL_STATE = SealedDocument(
    name=MANIFEST,
    format=FORMAT,
    versions=(SCHEMA_VERSION,),
    required=("kind", "package", "train_cut", "tuner", "weights", "tensors", "files", "integrity"),
    schema=schema.PERSONAL_STATE,
    what="a personal state",
    redo="personalize again",
    remedy="personalize again to rewrite it",
)


def _parse(path: Path, raw: bytes) -> dict[str, Any]:
    manifest = read_sealed(raw, PERSONAL_STATE, f"{path}: {MANIFEST}", PersonalStateError)
    if manifest["kind"] not in KINDS:
        raise PersonalStateError(f"{path}: personal state kind {manifest['kind']!r} is not known to this reader")
    return manifest
