"""The package manifest: schema, file table, integrity seal, validation.

``manifest.json`` is the one file a device reads first. It says what the
package is (backbone, cut, labels, the plan), how to call it (input / output
names, dtypes, shapes, opset) and which files make it up, each with its
sha256 and size. It is sealed with the sha256 of its own canonical JSON (all
keys sorted, no whitespace, without the ``integrity`` entry), so an edited
manifest is detected like an edited file. The seal detects corruption and
accidental edits; it is not a signature (anyone who can write the file can
re-seal it), so authenticity is the transport's job.

The structure is the JSON Schema ``edgetune_format/schemas/manifest.schema.json``
(the field tables of docs/package-format.md list the same fields).

Block numbers count from 1 in every file of a version-2 package (block l is
the l-th transformer block; the trunk is blocks 1..cut). Version 1 wrote
``skip.skipped_layers``/``skip.kept_layers`` and ``top.json``'s ``layers``
from 0; such a package is still read: :func:`upgrade` and
:func:`upgrade_top_spec` renumber it in memory after its seal was checked.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetune.io import sha256_file
from edgetune_format import schema
from edgetune_format.errors import PackageError

FORMAT = "edgetune-device-package"
SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1: 0-based skip lists and top.json "layers" (converted on read)
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"  # the Ed25519 signature of manifest.json's bytes (edgetune_format.trust); never listed in it
# The most a package may declare in all (a 1B-parameter decoder's fp32 trunk is ~4 GB): an archive or a manifest
# that claims more is refused before a byte of it is written or read. EDGETUNE_MAX_PACKAGE_BYTES overrides it.
MAX_PACKAGE_BYTES = int(os.environ.get("EDGETUNE_MAX_PACKAGE_BYTES", 8 << 30))
MAX_MANIFEST_BYTES = schema.MAX_BYTES
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
REQUIRED = (
    "format",
    "schema_version",
    "backbone",
    "cut",
    "labels",
    "plan",
    "tokenizer",
    "trunk",
    "top",
    "files",
    "integrity",
)


def safe_name(name: str) -> bool:
    """A plain file name inside the package: no directories, no '..', no hidden or absolute paths."""
    return bool(_SAFE_NAME.match(name)) and name not in (MANIFEST, SIGNATURE) and ".." not in name


def file_entry(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "size": path.stat().st_size}


def file_table(directory: Path) -> dict[str, dict[str, Any]]:
    """``{name: {sha256, size}}`` for every file of a package directory except the manifest."""
    table = {}
    for path in sorted(directory.iterdir()):
        if path.name in (MANIFEST, SIGNATURE):
            continue
        if not path.is_file() or not safe_name(path.name):
            raise PackageError(f"{path.name}: not a plain file with a safe name; a package holds only flat files")
        table[path.name] = file_entry(path)
    return table


def canonical_bytes(manifest: dict[str, Any]) -> bytes:
    body = {k: v for k, v in manifest.items() if k != "integrity"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON without its ``integrity`` entry: what the seal records."""
    return hashlib.sha256(canonical_bytes(manifest)).hexdigest()


def seal(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest with its ``integrity`` entry (sha256 of its canonical JSON)."""
    return {**manifest, "integrity": {"algorithm": "sha256", "manifest_sha256": manifest_digest(manifest)}}


@dataclass(frozen=True)
class SealedDocument:
    """One kind of sealed JSON document a device reads: a package's ``manifest.json`` or a personal state's
    ``personal.json``. Both are read by :func:`read_sealed`, in the same order, with the same messages."""

    name: str  # the file name
    format: str  # the value of its "format" entry
    versions: tuple[int, ...]  # the schema versions this reader reads
    required: tuple[str, ...]  # entries checked before the seal (the rest is the JSON Schema's job)
    schema: str  # edgetune_format/schemas/<schema>.schema.json
    what: str  # "an edgetune device package manifest", ...
    redo: str  # what the user does about a version this reader cannot read
    remedy: str = ""  # what the user does about a damaged one (edited, corrupt)


PACKAGE_MANIFEST = SealedDocument(
    name=MANIFEST,
    format=FORMAT,
    versions=READABLE_VERSIONS,
    required=REQUIRED,
    schema=schema.MANIFEST,
    what="an edgetune device package manifest",
    redo="re-export the package with this edgetune version",
    remedy="download the package again, or re-export it (edgetune export)",
)


def read_sealed(
    raw: bytes,
    document: SealedDocument,
    where: str,
    error: type[Exception],
    upgrade: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Parse and check a sealed document: size and depth, JSON, format, schema version, required entries, the
    seal over the bytes as written, then (after ``upgrade`` to the current form) its JSON Schema. Any problem is
    ``error`` with one line that starts with ``where`` (the file, as the user knows it)."""
    try:
        value = schema.load_json(raw, where)
    except schema.SchemaError as err:
        raise error(str(err)) from None
    if not isinstance(value, dict) or value.get("format") != document.format:
        raise error(f"{where}: not {document.what} (format is not {document.format!r})")
    version = value.get("schema_version")
    if version not in document.versions:
        raise error(
            f"{where}: schema version {version!r} is not supported by this reader (it reads versions "
            f"{', '.join(map(str, document.versions))}); {document.redo}"
        )
    missing = [k for k in document.required if k not in value]
    if missing:
        raise error(f"{where}: missing entries {missing}")
    integrity = value["integrity"]
    if not isinstance(integrity, dict) or integrity.get("algorithm") != "sha256":
        raise error(f"{where}: integrity entry is missing or uses an unknown algorithm")
    try:
        want = manifest_digest(value)
    except ValueError as err:
        raise error(f"{where}: cannot be canonicalized ({err})") from None
    if integrity.get("manifest_sha256") != want:
        raise error(
            f"{where}: content does not match its integrity hash: edited or corrupted after it was written; "
            f"{document.remedy}"
        )
    if upgrade is not None:
        value = upgrade(value)
    try:
        schema.validate(value, document.schema)
    except schema.SchemaError as err:
        raise error(f"{where}: {err} (not the structure of {document.what})") from None
    return value


def parse(raw: bytes) -> dict[str, Any]:
    """Parse and validate ``manifest.json`` bytes: format, schema version, seal, structure."""
    manifest = read_sealed(raw, PACKAGE_MANIFEST, MANIFEST, PackageError, upgrade)
    _check_structure(manifest)
    return manifest


def upgrade(manifest: dict[str, Any]) -> dict[str, Any]:
    """A sealed manifest in the current numbering: version 1's 0-based ``skip`` lists become block numbers.

    The result keeps ``schema_version`` and ``integrity`` as read (the seal covers the bytes as written) and
    records ``read_as_version``; a version-2 manifest is returned unchanged."""
    if manifest.get("schema_version") != 1:
        return manifest
    manifest = {**manifest, "read_as_version": SCHEMA_VERSION}
    skip = manifest.get("skip")
    if isinstance(skip, dict):
        skip = dict(skip)
        for key in ("skipped_layers", "kept_layers"):
            if isinstance(skip.get(key), list):
                skip[key] = [i + 1 if isinstance(i, int) and not isinstance(i, bool) else i for i in skip[key]]
        manifest["skip"] = skip
    return manifest


def upgrade_top_spec(spec: Any) -> Any:
    """``top.json`` in the current form: version 1's 0-based ``layers`` become 1-based ``blocks``.

    A spec that has ``blocks`` is returned unchanged; one with neither gets the blocks ``cut+1..num_layers``."""
    if not isinstance(spec, dict) or "blocks" in spec:
        return spec
    spec = dict(spec)
    layers = spec.pop("layers", None)
    if isinstance(layers, list):
        spec["blocks"] = [i + 1 if isinstance(i, int) and not isinstance(i, bool) else i for i in layers]
    elif isinstance(spec.get("cut"), int) and isinstance(spec.get("num_layers"), int):
        spec["blocks"] = list(range(spec["cut"] + 1, spec["num_layers"] + 1))
    return spec


def training_call_rows(executorch: dict[str, Any], program: dict[str, Any]) -> int:
    """Rows per call of the training program whose entry is ``program`` (``executorch.train`` or ``train_lora``):
    its own ``max_batch``; packages exported before it said so, the programs' common ``executorch.max_batch``."""
    return int(program.get("max_batch", executorch["max_batch"]))


def referenced_files(manifest: dict[str, Any]) -> list[str]:
    """Every file name a component of the manifest points to."""
    names = [manifest["tokenizer"]["tokenizer"], manifest["tokenizer"]["encoder"]]
    names += list(manifest["trunk"]["files"])
    names += [manifest["top"]["weights"], manifest["top"]["spec"]]
    for key in ("trunk_int8", "top_onnx", "executorch"):
        if manifest.get(key):
            names += list(manifest[key]["files"])
    return names


def _check_structure(manifest: dict[str, Any]) -> None:
    files = manifest["files"]
    if not isinstance(files, dict) or not files:
        raise PackageError(f"{MANIFEST}: 'files' must map file names to their sha256 and size")
    for name, entry in files.items():
        if not isinstance(name, str) or not safe_name(name):
            raise PackageError(f"{MANIFEST}: unsafe file name {name!r} (only plain names inside the package)")
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("sha256"), str)
            or not isinstance(entry.get("size"), int)
        ):
            raise PackageError(f"{MANIFEST}: file entry for {name} needs a sha256 string and an integer size")
        if entry["size"] < 0:
            raise PackageError(f"{MANIFEST}: file entry for {name} has a negative size")
    total = sum(entry["size"] for entry in files.values())
    if total > MAX_PACKAGE_BYTES:
        raise PackageError(
            f"{MANIFEST}: its files add up to {total} bytes, more than the {MAX_PACKAGE_BYTES} a package may hold "
            "(EDGETUNE_MAX_PACKAGE_BYTES)"
        )
    try:
        names = referenced_files(manifest)
        labels, cut, num_layers = manifest["labels"], manifest["cut"], manifest["backbone"]["num_layers"]
    except (KeyError, TypeError) as err:
        raise PackageError(f"{MANIFEST}: malformed component entry ({err!r})") from None
    for name in names:
        if name not in files:
            raise PackageError(f"{MANIFEST}: refers to {name!r}, which is not in its file table")
    if not isinstance(labels, list) or not labels or len(set(labels)) != len(labels):
        raise PackageError(f"{MANIFEST}: 'labels' must be a non-empty list of distinct labels")
    if not isinstance(cut, int) or not isinstance(num_layers, int) or not 0 <= cut <= num_layers:
        raise PackageError(f"{MANIFEST}: cut {cut!r} is outside 0..{num_layers!r}")
