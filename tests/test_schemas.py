"""The JSON Schemas shipped in edgetune_format/schemas/: every manifest.json, top.json and personal.json the project
writes fits them (checked with a plain draft 2020-12 validator, not only edgetune's), docs/package-format.md's
field tables list exactly their fields, and version-1 packages (0-based block lists) are still read."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from device_sim.device import Device
from device_sim.package import PackageError, load_package
from edgetune_format import manifest as mf
from edgetune_format import schema
from exporters.export import ExportOptions, export_package
from tests.devices import STATE_KINDS as KINDS
from tests.devices import fast, make_state, user_data
from tests.packages import dataset, make_plan
from tests.test_onnx_top import TEXTS

ROOT = Path(__file__).parent.parent
DOC = ROOT / "docs" / "package-format.md"
FILES = {"manifest": "manifest.schema.json", "top": "top.schema.json", "personal": "personal.schema.json"}


def _standard(document: str) -> jsonschema.Draft202012Validator:
    spec = json.loads((ROOT / "edgetune_format" / "schemas" / FILES[document]).read_text())
    jsonschema.Draft202012Validator.check_schema(spec)
    return jsonschema.Draft202012Validator(spec)


def _fits(value: dict, document: str) -> None:
    problems = [f"{list(e.absolute_path)}: {e.message}" for e in _standard(document).iter_errors(value)]
    assert problems == [], problems
    schema.validate(value, document)  # and edgetune's validator (strict integers) agrees


# -- the schema files ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("document", list(FILES))
def test_the_schemas_are_valid_draft_2020_12_and_ship_as_package_data(document):
    spec = schema.load_schema(document)
    assert spec["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(spec)
    assert schema.schema_path(document).name == FILES[document]
    pyproject = (ROOT / "pyproject.toml").read_text()  # (tomllib is not in Python 3.10)
    assert re.search(r'^edgetune_format = \[.*"schemas/\*\.schema\.json"', pyproject, re.M)
    assert re.search(r'^    "jsonschema>=', pyproject, re.M)


def _fields(node: dict, prefix: str = "") -> list[str]:
    """Every property path a schema node declares; a ``$ref`` is listed but not entered (its definition has its
    own table)."""
    out = []
    for name, sub in node.get("properties", {}).items():
        path = prefix + name
        out.append(path)
        if "$ref" in sub:
            continue
        if "properties" in sub:
            out += _fields(sub, path + ".")
        items = sub.get("items")
        if isinstance(items, dict) and "properties" in items:
            out += _fields(items, path + "[].")
        extra = sub.get("additionalProperties")
        if isinstance(extra, dict) and "properties" in extra:
            out += _fields(extra, path + ".*.")
    return out


def _doc_tables() -> dict[str, list[str]]:
    """``<!-- fields: FILE[#/$defs/NAME] -->`` -> the first-column field names of the table that follows (several
    tables with one marker add up)."""
    tables: dict[str, list[str]] = {}
    lines = DOC.read_text().splitlines()
    for i, line in enumerate(lines):
        marker = re.fullmatch(r"<!-- fields: (\S+) -->", line.strip())
        if not marker:
            continue
        names = tables.setdefault(marker.group(1), [])
        for row in lines[i + 3 :]:  # past the header and the separator
            if not row.startswith("|"):
                break
            names.append(re.match(r"\| `([^`]+)` \|", row).group(1))
    return tables


def test_the_docs_field_tables_list_exactly_the_schema_fields():
    tables = _doc_tables()
    expected = {}
    for document, name in FILES.items():
        spec = schema.load_schema(document)
        expected[name] = _fields(spec)
        for key, node in spec.get("$defs", {}).items():
            if _fields(node):
                expected[f"{name}#/$defs/{key}"] = _fields(node)
    assert sorted(tables) == sorted(expected)
    for key, want in expected.items():
        got = tables[key]
        assert len(got) == len(set(got)), f"{key}: a field is listed twice"
        assert sorted(got) == sorted(want), (key, sorted(set(want) - set(got)), sorted(set(got) - set(want)))


def test_the_specification_names_no_internal_code_as_a_definition():
    text = DOC.read_text()
    for internal in ("TopModel", "device_sim.", "edgetune.native", "edgetune/native", "PackageError", "from_spec",
                     "tuner.prepare", "load_delta"):  # fmt: skip
        assert internal not in text, internal


# -- what the project writes fits ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def written(device_packages, tiny_model_dir, tmp_path_factory):
    """Packages (BERT with top.onnx; GPT-2 with int8, as a tar) and personal states of every kind."""
    root = tmp_path_factory.mktemp("schemas")
    model = tiny_model_dir("gpt2")
    options = ExportOptions(threads=1, top_onnx=False, int8=True, tar=True)
    tar = export_package(model, make_plan(model, k=2), root / "gpt2", data=dataset(60, seed=5), options=options).path
    with Device(device_packages["main"], threads=1) as device:
        states = {kind: make_state(device, kind, root / kind) for kind in KINDS}
        # with the do-no-harm guard and the device's selection on: their full records
        device.personalize(user_data(60, seed=4), root / "guarded", fast(epochs=2, guard_fraction=0.3, select=True))
        states["guarded"] = root / "guarded"
    return {"packages": [device_packages["main"], tar], "states": states}


def test_every_manifest_and_top_json_written_fits_the_schema(written):
    for package in written["packages"]:
        with load_package(package) as pkg:
            raw = json.loads((pkg.root / mf.MANIFEST).read_text())
            assert raw["schema_version"] == mf.SCHEMA_VERSION == 2
            _fits(raw, "manifest")
            top = json.loads((pkg.root / raw["top"]["spec"]).read_text())
            _fits(top, "top")
            assert "layers" not in top and top["blocks"] == raw["top"]["blocks"] == raw["trainable_layers"]
            assert top["blocks"] == list(range(raw["cut"] + 1, raw["backbone"]["num_layers"] + 1))


def test_an_executorch_package_manifest_fits_the_schema(executorch_package):
    """The ``executorch`` entry (programs, parameters, parity) as the executorch target writes it (the package
    fixture is shared with the ExecuTorch tests)."""
    raw = json.loads((Path(executorch_package) / mf.MANIFEST).read_text())
    assert raw["executorch"]["train"]["parameters"]
    _fits(raw, "manifest")


@pytest.mark.parametrize("kind", [*KINDS, "guarded"])
def test_every_personal_state_written_fits_the_schema(written, kind):
    state = json.loads((written["states"][kind] / "personal.json").read_text())
    _fits(state, "personal")
    if kind == "guarded":
        assert {"p_value", "wins", "losses", "keep_personal", "kept"} <= set(state["guard"])


def test_a_trunk_optimization_entry_with_more_fields_is_accepted_and_a_bad_level_is_not(device_packages):
    raw = json.loads((Path(device_packages["main"]) / mf.MANIFEST).read_text())
    raw["trunk_optimization"] = {"level": "fused", "fused_ops": {"Attention": 1}, "more": {"x": 1}}
    _fits(raw, "manifest")
    raw["trunk_optimization"]["level"] = "all"
    with pytest.raises(schema.SchemaError, match=r"trunk_optimization\.level"):
        schema.validate(raw, "manifest")


@pytest.mark.parametrize(
    ("document", "edit", "message"),
    [
        ("top", lambda d: d.pop("blocks"), r"^blocks: missing$"),
        ("top", lambda d: d.update(blocks=[0, 1]), r"^blocks\[0\]: must be at least 1"),
        ("top", lambda d: d.update(pooling="max"), r"^pooling: must be one of \['mean', 'last'\]"),
        ("manifest", lambda d: d["backbone"].update(hash=7), r"^backbone\.hash: must be a string, got int$"),
        ("manifest", lambda d: d.update(cut=1.0), r"^cut: must be an integer, got float$"),
        ("manifest", lambda d: d["files"]["top.json"].pop("size"), r"^files\.top\.json\.size: missing$"),
        ("manifest", lambda d: d.update(labels=[]), r"^labels: must not be empty$"),
        ("personal", lambda d: d["tuner"].pop("name"), r"^tuner\.name: missing$"),
    ],
)
def test_schema_errors_are_one_line_naming_the_field(written, device_packages, document, edit, message):
    if document == "personal":
        value = json.loads((written["states"]["lora"] / "personal.json").read_text())
    else:
        raw = json.loads((Path(device_packages["main"]) / mf.MANIFEST).read_text())
        value = raw if document == "manifest" else json.loads((Path(device_packages["main"]) / "top.json").read_text())
    edit(value)
    with pytest.raises(schema.SchemaError, match=message) as err:
        schema.validate(value, document)
    assert "\n" not in str(err.value)


def test_a_wrong_top_json_is_named_when_the_package_is_loaded(device_packages, tmp_path):
    package = _copy(device_packages["main"], tmp_path / "pkg")
    top = json.loads((package / "top.json").read_text())
    top["blocks"] = [0, 1]
    _rewrite(package, {"top.json": json.dumps(top).encode()})
    with pytest.raises(PackageError, match=r"top\.json.*blocks\[0\]: must be at least 1"):
        load_package(package)  # verification checks top.json's schema, as inspect does


# -- version 1 -------------------------------------------------------------------------------------------------


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _rewrite(package: Path, files: dict[str, bytes], edit=None) -> None:
    """Replace files of a package directory and re-seal its manifest (``edit``: change the manifest too)."""
    raw = json.loads((package / mf.MANIFEST).read_text())
    for name, data in files.items():
        (package / name).write_bytes(data)
        raw["files"][name] = mf.file_entry(package / name)
    if edit:
        edit(raw)
    raw.pop("integrity")
    (package / mf.MANIFEST).write_text(json.dumps(mf.seal(raw)))


def test_a_version_1_package_is_read_with_its_blocks_renumbered(device_packages, tmp_path):
    """A version-1 package as the old exporter wrote it: ``top.json`` ``layers`` from 0, schema_version 1. It
    loads, verifies and predicts exactly as the version-2 package it was made from; the torch-free runtime reads
    its renumbered top.json too."""
    package = _copy(device_packages["main"], tmp_path / "v1")
    top = json.loads((package / "top.json").read_text())
    top["layers"] = [b - 1 for b in top.pop("blocks")]
    _rewrite(package, {"top.json": json.dumps(top).encode()}, lambda m: m.update(schema_version=1))
    with load_package(package) as old, load_package(device_packages["main"]) as new:
        assert old.manifest["schema_version"] == 1
        assert old.top_spec()["blocks"] == new.top_spec()["blocks"] == [2, 3]
        for backend in ("torch", "onnx"):
            got = old.predict_logits(TEXTS, backend=backend)
            want = new.predict_logits(TEXTS, backend=backend)
            assert np.abs(got - want).max() < 1e-6


def test_version_1_skip_lists_become_block_numbers():
    v1 = {"schema_version": 1, "skip": {"budget": 0.5, "skipped_layers": [1, 2], "kept_layers": [0, 3]}}
    v2 = mf.upgrade(v1)
    assert v2["skip"]["skipped_layers"] == [2, 3] and v2["skip"]["kept_layers"] == [1, 4]
    assert v1["skip"]["skipped_layers"] == [1, 2]  # the document as read (and sealed) is left alone
    assert mf.upgrade({"schema_version": 2, "skip": {"skipped_layers": [2]}})["skip"]["skipped_layers"] == [2]
    assert mf.upgrade_top_spec({"layers": [2, 4], "cut": 2, "num_layers": 5})["blocks"] == [3, 5]
    assert mf.upgrade_top_spec({"cut": 1, "num_layers": 3})["blocks"] == [2, 3]


def test_an_unknown_version_is_refused_with_one_line(device_packages, tmp_path):
    package = _copy(device_packages["main"], tmp_path / "v3")
    _rewrite(package, {}, lambda m: m.update(schema_version=3))
    with pytest.raises(PackageError, match=r"schema version 3 is not supported .* re-export the package"):
        load_package(package)
