"""One validator for the JSON documents a device reads: package manifests and personal states.

A document is checked in three steps, before any field of it is used:

1. size and nesting depth of the raw bytes (a deeply nested document cannot
   exhaust the parser's recursion, :data:`MAX_DEPTH` levels at most);
2. JSON parsing;
3. a declarative schema: the type of every field a reader uses, and the keys
   that must be present at every level (``backbone.hash``, ``plan.arch``...).

A sealed document that passes the seal but misses a nested key is therefore
refused with one line that names the key (``manifest.json: backbone.hash:
missing``), by ``edgetune inspect`` and by every loader alike, instead of a
``KeyError`` halfway through a job.

Specs are plain Python values: a type (``int``, ``float`` accepts ints too,
``bool`` is never an int here), a tuple of types, :class:`Obj` (required and
optional keys; other keys are allowed, newer writers may add some),
:class:`ListOf`, :class:`MapOf` and :class:`Opt` (``None`` allowed).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

MAX_DEPTH = 32
MAX_BYTES = 16 << 20  # a manifest or personal.json is a few KB; 16 MB is far beyond any real one

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")


class SchemaError(ValueError):
    """A document does not have the structure its reader needs; the message names the field."""


@dataclass(frozen=True)
class Obj:
    required: dict[str, Any]
    optional: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ListOf:
    item: Any
    nonempty: bool = False


@dataclass(frozen=True)
class MapOf:
    value: Any


@dataclass(frozen=True)
class Opt:
    spec: Any


def nesting_depth(raw: bytes, limit: int | None = None) -> int:
    """The deepest ``[``/``{`` nesting of a JSON text, counted without parsing it (strings are skipped); the
    count stops once it passes ``limit``."""
    brackets = _NOT_BRACKET.sub(b"", _STRING.sub(b'""', raw))
    depth = deepest = 0
    for byte in brackets:
        if byte in b"[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if limit is not None and deepest > limit:
                    break
        else:
            depth -= 1
    return deepest


def load_json(raw: bytes, what: str, max_depth: int = MAX_DEPTH, max_bytes: int = MAX_BYTES, joiner: str = ": ") -> Any:
    """Parse ``raw`` after checking its size and depth; :class:`SchemaError` names ``what`` (then ``joiner``)
    on any problem."""
    if len(raw) > max_bytes:
        raise SchemaError(f"{what}{joiner}{len(raw)} bytes, more than {max_bytes} (not a real one)")
    depth = nesting_depth(raw, max_depth)
    if depth > max_depth:
        raise SchemaError(f"{what}{joiner}nested more than {max_depth} levels deep (not a real one)")
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise SchemaError(f"{what}{joiner}not valid JSON ({err}); truncated or corrupted") from None


def _type_name(spec: Any) -> str:
    if isinstance(spec, tuple):
        return " or ".join(_type_name(s) for s in spec)
    if isinstance(spec, Obj | MapOf):
        return "an object"
    if isinstance(spec, ListOf):
        return "a list"
    if isinstance(spec, Opt):
        return f"{_type_name(spec.spec)} or null"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false", dict: "an object",
            list: "a list"}.get(spec, str(spec))  # fmt: skip


def _is(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind is float:
        return isinstance(value, int | float)
    return isinstance(value, kind)


def check(value: Any, spec: Any, where: str = "") -> None:
    """Raise :class:`SchemaError` at the first field of ``value`` that does not fit ``spec``."""
    name = where or "(top level)"
    if isinstance(spec, Opt):
        if value is not None:
            check(value, spec.spec, where)
        return
    if isinstance(spec, tuple):
        if not any(_is(value, s) for s in spec):
            raise SchemaError(f"{name}: must be {_type_name(spec)}, got {type(value).__name__}")
        return
    if isinstance(spec, type):
        if not _is(value, spec):
            raise SchemaError(f"{name}: must be {_type_name(spec)}, got {type(value).__name__}")
        return
    if isinstance(spec, Obj):
        if not isinstance(value, dict):
            raise SchemaError(f"{name}: must be an object, got {type(value).__name__}")
        for key, sub in spec.required.items():
            if key not in value:
                raise SchemaError(f"{where + '.' if where else ''}{key}: missing")
            check(value[key], sub, f"{where + '.' if where else ''}{key}")
        for key, sub in spec.optional.items():
            if key in value:
                check(value[key], sub, f"{where + '.' if where else ''}{key}")
        return
    if isinstance(spec, ListOf):
        if not isinstance(value, list):
            raise SchemaError(f"{name}: must be a list, got {type(value).__name__}")
        if spec.nonempty and not value:
            raise SchemaError(f"{name}: must not be empty")
        for i, item in enumerate(value):
            check(item, spec.item, f"{where}[{i}]")
        return
    if isinstance(spec, MapOf):
        if not isinstance(value, dict):
            raise SchemaError(f"{name}: must be an object, got {type(value).__name__}")
        for key, item in value.items():
            check(item, spec.value, f"{where}[{key!r}]")
        return
    raise TypeError(f"not a schema spec: {spec!r}")


# -- the documents ----------------------------------------------------------------------------------------------

_IO = ListOf(Obj({"name": str, "dtype": str, "shape": ListOf((str, int))}))
_FILES = MapOf(Obj({"sha256": str, "size": int}))
_INTEGRITY = Obj({"algorithm": str, "manifest_sha256": str})
_PARITY = Obj({"max_abs_diff": float})

ARCH = Obj(
    {
        "num_layers": int,
        "hidden_size": int,
        "intermediate_size": int,
        "num_heads": int,
        "block_params": ListOf(int),
        "embedding_params": int,
        "norm_params": int,
        "num_labels": int,
    },
    {
        "gated_mlp": bool,
        "act_hidden": float,
        "act_intermediate": Opt(float),
        "act_probs": float,
        "input_proj_params": int,
        "pre_norm": bool,
    },
)

MANIFEST = Obj(
    {
        "format": str,
        "schema_version": int,
        "backbone": Obj(
            {"id": str, "model_type": str, "num_layers": int, "hidden_size": int, "hash": str, "plan_hash": str}
        ),
        "cut": int,
        "labels": ListOf(str, nonempty=True),
        "plan": Obj(
            {"arch": ARCH},
            {"text_column": str, "label_column": str, "tuner": str, "tuner_params": Opt(dict), "max_length": int},
        ),
        "tokenizer": Obj({"tokenizer": str, "encoder": str}),
        "trunk": Obj(
            {
                "file": str,
                "files": ListOf(str, nonempty=True),
                "opset": int,
                "inputs": _IO,
                "outputs": _IO,
                "parity": _PARITY,
            }  # fmt: skip
        ),
        "top": Obj({"weights": str, "spec": str, "outputs": _IO}),
        "files": _FILES,
        "integrity": _INTEGRITY,
    },
    {
        "created_at": str,
        "trainable_layers": ListOf(int),
        "head": Obj({}, {"init": Opt(str)}),
        "validation": Opt(Obj({"accuracy": float, "num_examples": int})),
        "trunk_int8": Opt(
            Obj(
                {"file": str, "files": ListOf(str, nonempty=True), "size_ratio": float},
                {"accuracy": Opt(Obj({"fp32": float, "int8": float, "delta_points": float}))},
            )
        ),
        "top_onnx": Opt(Obj({"file": str, "files": ListOf(str, nonempty=True), "parity": _PARITY})),
        "trunk_optimization": Opt(Obj({"level": str}, {"fused_ops": MapOf(int), "reason": Opt(str)})),
        "executorch": Opt(
            Obj(
                {
                    "files": ListOf(str, nonempty=True),
                    "max_batch": int,
                    "train": Obj({"file": str, "parameters": ListOf(Obj({"name": str, "shape": ListOf(int)}))}),
                    "inference": Obj({"file": str}),
                    "parity": Obj({"max_abs_diff": Obj({"loss": float, "gradients": float})}),
                },
                {"predict": Opt(Obj({"file": str}))},
            )
        ),
    },
)

PERSONAL_STATE = Obj(
    {
        "format": str,
        "schema_version": int,
        "kind": str,
        "package": Obj(
            {
                "backbone_id": str,
                "backbone_hash": str,
                "cut": int,
                "num_layers": int,
                "labels": ListOf(str),
                "files": MapOf(str),
            }
        ),
        "train_cut": int,
        "tuner": Obj({"name": str}, {"params": Opt(dict)}),
        "weights": str,
        "tensors": MapOf(ListOf(int)),
        "files": _FILES,
        "integrity": _INTEGRITY,
    },
    {"training": dict, "guard": dict, "selection": dict, "num_params": int},
)
