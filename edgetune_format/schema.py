"""One validator for the JSON documents a device reads: package manifests and personal states.

A document is checked in three steps, before any field of it is used:

1. size and nesting depth of the raw bytes (a deeply nested document cannot
   exhaust the parser's recursion, :data:`MAX_DEPTH` levels at most);
2. JSON parsing;
3. the document's JSON Schema (draft 2020-12), shipped in ``edgetune_format/schemas/``
   (``manifest.schema.json``, ``top.schema.json``, ``personal.schema.json``):
   the type of every field a reader uses, and the keys that must be present at
   every level (``backbone.hash``, ``plan.arch``...). The same files are the
   published specification (docs/package-format.md), so what the docs promise
   and what the reader checks cannot drift apart.

A sealed document that passes the seal but misses a nested key is therefore
refused with one line that names the key (``manifest.json: backbone.hash:
missing``), by ``edgetune inspect`` and by every loader alike, instead of a
``KeyError`` halfway through a job.

Validation uses the ``jsonschema`` library with one change: an integer is a
JSON number without a fraction *as written* (``1.0`` is not an integer, and
``true`` is never a number). Of the fields that fail, the one whose location
sorts first is reported (the same document always gives the same message),
as one line: ``cut: must be an integer, got str``.
"""

from __future__ import annotations

import json
import re
from functools import cache
from importlib import resources
from typing import Any

MAX_DEPTH = 32
MAX_BYTES = 16 << 20  # a manifest or personal.json is a few KB; 16 MB is far beyond any real one

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")


class SchemaError(ValueError):
    """A document does not have the structure its reader needs; the message names the field."""


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


# -- the documents' JSON Schemas ----------------------------------------------------------------------------------

MANIFEST = "manifest"
TOP = "top"
PERSONAL_STATE = "personal"
DOCUMENTS = (MANIFEST, TOP, PERSONAL_STATE)

_TYPE_NAMES = {
    "integer": "an integer",
    "number": "a number",
    "string": "a string",
    "boolean": "true/false",
    "object": "an object",
    "array": "a list",
    "null": "null",
}


def schema_path(document: str) -> Any:
    """The shipped schema file of ``document`` (``manifest``, ``top`` or ``personal``) as an importlib resource."""
    if document not in DOCUMENTS:
        raise ValueError(f"no schema for {document!r}; one of {DOCUMENTS}")
    return resources.files("edgetune_format").joinpath("schemas", f"{document}.schema.json")


def load_schema(document: str) -> dict[str, Any]:
    """The parsed JSON Schema of ``document`` (a fresh copy)."""
    return json.loads(schema_path(document).read_text(encoding="utf-8"))


@cache
def _validator(document: str) -> Any:
    import jsonschema

    base = jsonschema.Draft202012Validator
    strict = base.TYPE_CHECKER.redefine(
        "integer", lambda _checker, value: isinstance(value, int) and not isinstance(value, bool)
    )
    cls = jsonschema.validators.extend(base, type_checker=strict)
    spec = load_schema(document)
    base.check_schema(spec)
    return cls(spec)


def _where(path: Any) -> str:
    where = ""
    for part in path:
        if isinstance(part, int):
            where += f"[{part}]"
        elif where:
            where += f".{part}"
        else:
            where = str(part)
    return where


def _message(error: Any) -> str:
    where = _where(error.absolute_path)
    name = where or "(top level)"
    value, kind = error.instance, error.validator
    if kind == "required":
        missing = next(k for k in error.validator_value if isinstance(value, dict) and k not in value)
        return f"{where + '.' if where else ''}{missing}: missing"
    if kind == "type":
        types = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        wanted = " or ".join(_TYPE_NAMES.get(t, t) for t in types)
        return f"{name}: must be {wanted}, got {type(value).__name__}"
    if kind == "minItems" and error.validator_value == 1:
        return f"{name}: must not be empty"
    if kind == "const":
        return f"{name}: must be {error.validator_value!r}, got {value!r}"
    if kind == "enum":
        return f"{name}: must be one of {error.validator_value}, got {value!r}"
    if kind == "minimum":
        return f"{name}: must be at least {error.validator_value}, got {value!r}"
    if kind == "uniqueItems":
        return f"{name}: must not repeat an item"
    return f"{name}: {error.message}"


def _order(error: Any) -> tuple:
    """Sort key of an error's location (list positions before keys); the smallest is the one reported."""
    return tuple((0, p) if isinstance(p, int) else (1, str(p)) for p in error.absolute_path)


def validate(value: Any, document: str) -> None:
    """Raise :class:`SchemaError` (one line naming the field) at the first field of ``value`` that does not fit
    the shipped schema of ``document``."""
    errors = list(_validator(document).iter_errors(value))
    if errors:
        first = min(errors, key=lambda e: (_order(e), e.validator != "required"))
        raise SchemaError(_message(first))
