"""libedgetune_device opens a package as the spec says a reader must: a package edgetune exported opens with
its cut, labels and encoder settings; every corruption the Python reader refuses, the C library refuses too,
with an error code and a message naming the file; its seal matches Python's canonical JSON on awkward
values; and a package with a WordPiece tokenizer encodes texts as the package's encoder does."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from device_sim.native import DRIVER, NativeError, NativePackage, library_path
from device_sim.package import load_package
from edgetune.datasets import bbc_news, minilm_path
from edgetune_format import manifest as mf
from exporters.errors import PackageError
from exporters.export import ExportOptions, export_package
from tests.conftest import LABELS, synthetic_rows, write_csv
from tests.packages import MAX_LENGTH, dataset, make_checkpoint, make_plan

pytestmark = [pytest.mark.timeout(900), pytest.mark.usefixtures("native_library")]


@pytest.fixture(scope="module")
def package(tiny_model_dir, tmp_path_factory):
    """A tiny BERT package (int8 trunk and top ONNX: every optional part listed)."""
    root = tmp_path_factory.mktemp("native-pkg")
    model_dir = tiny_model_dir("bert")
    checkpoint = make_checkpoint(model_dir, root / "ckpt")
    options = ExportOptions(int8=True, top_onnx=True, threads=1)
    return export_package(checkpoint, make_plan(model_dir), root / "pkg", val_data=dataset(30, 3), options=options).path


@pytest.fixture()
def copy(package, tmp_path):
    dst = tmp_path / "pkg"
    shutil.copytree(package, dst)
    return dst


def test_an_exported_package_opens_with_its_settings(package):
    python = load_package(package)
    with NativePackage(package) as native:
        assert native.labels == list(python.labels) == list(LABELS)
        assert (native.cut, native.num_layers) == (python.cut, python.num_layers)
        assert native.max_length == MAX_LENGTH and native.family == "bert"
        with pytest.raises(NativeError, match=r"model WordLevel is not supported.*\[unsupported\]"):
            native.tokenizer()  # the tiny test tokenizer is word-level: the app passes ids instead


def _rewrite(path, edit, reseal: bool) -> None:
    m = json.loads((path / "manifest.json").read_text())
    edit(m)
    (path / "manifest.json").write_text(json.dumps(mf.seal(m) if reseal else m))


def _flip_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _truncate(path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _link(path) -> None:
    target = path.parent.parent / "elsewhere.onnx"
    shutil.move(path, target)
    os.symlink(target, path)


def _nest(path) -> None:
    m = json.loads((path / "manifest.json").read_text())
    m["deep"] = json.loads("[" * 40 + "]" * 40)
    (path / "manifest.json").write_text(json.dumps(m))


DAMAGES = {
    "missing-trunk": (lambda p: (p / "trunk.onnx").unlink(), r"trunk\.onnx: missing"),
    "missing-manifest": (lambda p: (p / "manifest.json").unlink(), r"manifest\.json: missing"),
    "truncated-int8": (lambda p: _truncate(p / "trunk.int8.onnx"), r"trunk\.int8\.onnx: \d+ bytes, manifest says"),
    "truncated-manifest": (lambda p: _truncate(p / "manifest.json"), r"manifest\.json.*(JSON|json)"),
    "tampered-top": (lambda p: _flip_byte(p / "top.safetensors"), r"top\.safetensors: sha256 does not match"),
    "tampered-tokenizer": (lambda p: _flip_byte(p / "tokenizer.json"), r"tokenizer\.json: sha256 does not match"),
    "linked-trunk": (lambda p: _link(p / "trunk.onnx"), r"trunk\.onnx: a link"),
    "unlisted-file": (lambda p: (p / "extra.bin").write_bytes(b"x"), r"extra\.bin: not listed"),
    "wrong-version": (lambda p: _rewrite(p, lambda m: m.update(schema_version=3), True), r"schema version"),
    "labels-edited": (lambda p: _rewrite(p, lambda m: m.update(labels=["a", "b", "c"]), False), r"integrity hash"),
    "cut-edited": (lambda p: _rewrite(p, lambda m: m.update(cut=0), False), r"integrity hash"),
    "wrong-format": (lambda p: _rewrite(p, lambda m: m.update(format="other"), False), r"not an edgetune device"),
    "drops-file": (lambda p: _rewrite(p, lambda m: m["files"].pop("top.json"), True), r"top\.json"),
    "unsafe-name": (
        lambda p: _rewrite(p, lambda m: m["files"].update({"../x": m["files"]["top.json"]}), True),
        r"'\.\./x'",
    ),
    "inconsistent-labels": (
        lambda p: _rewrite(p, lambda m: m.update(labels=["x", "y", "z"]), True),
        r"top\.json: (cut/)?labels",
    ),
    "too-deep": (_nest, r"nested"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_every_corruption_is_refused_like_the_python_reader(copy, damage):
    do, message = DAMAGES[damage]
    do(copy)
    with pytest.raises(PackageError):
        load_package(copy)
    with pytest.raises(NativeError, match=message) as refused:
        NativePackage(copy)
    assert refused.value.status in ("format", "io")


def test_bad_paths_are_errors(tmp_path):
    with pytest.raises(NativeError, match=r"no such package \[io\]"):
        NativePackage(tmp_path / "nothing")
    (tmp_path / "file.tar").write_bytes(b"x")
    with pytest.raises(NativeError, match=r"file\.tar: not a package directory .*\[unsupported\]"):
        NativePackage(tmp_path / "file.tar")


AWKWARD = {
    "floats": [0.1, 1e-05, 1.5e16, 1e16, 123456789012345.6, 2.5e-300, -0.0, 1.0, 100.0, 0.0001, 1e22, 5e-324],
    "ints": [0, -7, 12345678901234567890123, 2**53 + 1],
    "text": 'naïve \u00e9\u4e2d\U0001f970 "quoted" back\\slash \t\n\r\b\f \u0001 \u007f',
    "nested": {"b": [True, False, None], "a": {"\u00e9": 1, "z": 2, "A": 3}},
}


def test_the_seal_is_pythons_canonical_json(copy):
    """Values whose canonical form is easy to get wrong (shortest floats in Python's repr, big integers,
    escapes, non-ASCII and surrogate pairs, key order) sealed by Python are accepted; one digit changed is not."""
    _rewrite(copy, lambda m: m.update(x_awkward=AWKWARD), True)
    with NativePackage(copy) as native:  # would raise "does not match its integrity hash"
        assert native.labels == list(LABELS)
    text = (copy / "manifest.json").read_text().replace("1.5e+16", "1.6e+16")
    (copy / "manifest.json").write_text(text)
    with pytest.raises(NativeError, match=r"integrity hash"):
        NativePackage(copy)


def test_a_wordpiece_package_encodes_like_the_package_encoder(tmp_path):
    """A tiny BERT with MiniLM's real tokenizer: the C library's ids and mask are the Python encoder's."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    model_dir = tmp_path / "model"
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    BertModel(config).save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(model_dir)
    checkpoint = make_checkpoint(model_dir, tmp_path / "ckpt")
    options = ExportOptions(threads=1)
    pkg = export_package(checkpoint, make_plan(model_dir), tmp_path / "pkg", val_data=dataset(20, 3), options=options)
    texts = bbc_news().texts[:200] + [t for t, _ in synthetic_rows(20, seed=5)] + ["", "naïve [SEP] 中文"]
    want_ids, want_mask = load_package(pkg.path).encode(texts)
    with NativePackage(pkg.path) as native:
        ids, mask = native.encode(texts)
    assert (ids == want_ids).all() and (mask == want_mask).all()


def test_the_driver_and_the_example_app_are_c_programs_without_python(package, copy):
    """``edgetune-device`` and ``examples/device_app.c``, built beside the library: no libpython, no libtorch;
    inspect verifies (exit 2 on a tampered package, with the file named), encode needs a WordPiece tokenizer."""
    build = library_path().parent
    driver, app = build / DRIVER, build / "device_app"
    for program in (driver, app):
        linked = subprocess.run(["ldd", str(program)], capture_output=True, text=True, check=True).stdout
        assert "libedgetune_device" in linked and "libpython" not in linked and "libtorch" not in linked
    shown = subprocess.run([str(driver), "inspect", str(package)], capture_output=True, text=True)
    assert shown.returncode == 0 and "(verified)" in shown.stdout and " ".join(LABELS) in shown.stdout
    as_json = subprocess.run([str(driver), "inspect", str(package), "--json"], capture_output=True, text=True)
    assert json.loads(as_json.stdout)["labels"] == list(LABELS)
    _flip_byte(copy / "top.safetensors")
    refused = subprocess.run([str(driver), "inspect", str(copy)], capture_output=True, text=True)
    assert refused.returncode == 2 and "top.safetensors: sha256 does not match" in refused.stderr
    encode = subprocess.run([str(driver), "encode", "--package", str(package), "hi"], capture_output=True, text=True)
    assert encode.returncode == 2 and "WordLevel is not supported" in encode.stderr
    usage = subprocess.run([str(driver), "frobnicate"], capture_output=True, text=True)
    assert usage.returncode == 1 and "usage:" in usage.stderr
    user = write_csv(copy.parent / "user.csv", synthetic_rows(20, seed=3))
    ran = subprocess.run([str(app), str(package), str(user), str(copy.parent / "state"), "hello"],
                         capture_output=True, text=True)  # fmt: skip
    assert ran.returncode == 2 and "bert package, 3 labels" in ran.stdout and "cannot personalize" in ran.stderr
