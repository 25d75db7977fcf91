"""Device packages: round trip against the source model, every corruption case, tar form, model/plan checks."""

import json
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch

from device_sim.package import load_package, verify_package
from edgetune.modeling import SequenceClassifier
from edgetune.tokenization import TextEncoder
from edgetune_format import manifest as mf
from exporters.errors import ExportError, PackageError, PlanMismatchError
from exporters.export import ExportOptions, export_package
from tests.conftest import LABELS, synthetic_rows
from tests.packages import dataset, make_checkpoint, make_plan, source_logits

TEXTS = [t for t, _ in synthetic_rows(24, seed=7)] + ["apple", "the match the team the league score goal"]
CORE = ("bert", "gpt2", "llama")


@pytest.fixture(scope="module")
def packages(tiny_model_dir, tmp_path_factory):
    """Per family: (checkpoint dir, package dir) with int8 + top ONNX, validated on labelled data."""
    root = tmp_path_factory.mktemp("packages")
    out = {}
    for family in CORE:
        model_dir = tiny_model_dir(family)
        checkpoint = make_checkpoint(model_dir, root / f"ckpt-{family}")
        options = ExportOptions(int8=True, top_onnx=True, threads=1)
        result = export_package(checkpoint, make_plan(model_dir), root / f"pkg-{family}", val_data=dataset(30, 3),
                                options=options)  # fmt: skip
        out[family] = (checkpoint, result.path)
    return out


@pytest.fixture()
def bert_copy(packages, tmp_path):
    dst = tmp_path / "pkg"
    shutil.copytree(packages["bert"][1], dst)
    return dst


@pytest.mark.parametrize("family", CORE)
def test_package_predicts_like_the_source_model(family, packages):
    checkpoint, path = packages[family]
    want = source_logits(checkpoint, TEXTS).numpy()
    with load_package(path, threads=1) as pkg:
        got = pkg.predict_logits(TEXTS, batch_size=8)
        assert np.abs(got - want).max() <= 1e-4
        assert pkg.predict(TEXTS) == [LABELS[i] for i in want.argmax(1)]
        onnx_top = pkg.predict_logits(TEXTS, backend="onnx")  # inference-only path
        assert np.abs(onnx_top - want).max() <= 1e-4
        # the device's own pieces compose to the same answer: trunk (onnxruntime) -> top (torch)
        ids, mask = pkg.encode(TEXTS[:3])
        hidden = pkg.run_trunk(ids, mask)
        assert hidden.shape == (3, ids.shape[1], pkg.hidden_size) and hidden.dtype == np.float32
        with torch.inference_mode():
            logits = pkg.top_model()(torch.from_numpy(hidden), torch.from_numpy(mask)).numpy()
        assert np.abs(logits - want[:3]).max() <= 1e-4
        assert pkg.labels == list(LABELS)
        assert pkg.precisions == ["fp32", "int8"]


@pytest.mark.parametrize("family", CORE)
def test_manifest_describes_the_package(family, packages):
    _, path = packages[family]
    m = json.loads((path / "manifest.json").read_text())
    assert m["schema_version"] == mf.SCHEMA_VERSION and m["format"] == mf.FORMAT
    assert m["backbone"]["hash"] == m["backbone"]["plan_hash"] == m["plan"]["model_hash"]
    assert m["cut"] == 1 and m["trainable_layers"] == [2, 3] and m["labels"] == list(LABELS)
    assert m["trunk"]["opset"] == 18 and m["trunk"]["parity"]["max_abs_diff"] <= 1e-4
    assert [i["name"] for i in m["trunk"]["inputs"]] == ["input_ids", "attention_mask"]
    assert m["trunk"]["outputs"][0]["shape"] == ["batch", "sequence", 32]
    assert set(m["files"]) == {p.name for p in path.iterdir()} - {"manifest.json"}
    for name, entry in m["files"].items():
        assert entry["size"] == (path / name).stat().st_size
    q = m["trunk_int8"]
    assert q["size"] < m["trunk"]["size"] and q["size_ratio"] == pytest.approx(q["size"] / m["trunk"]["size"])
    assert q["accuracy"]["num_examples"] == 30
    assert q["accuracy"]["delta_points"] == pytest.approx(100 * (q["accuracy"]["int8"] - q["accuracy"]["fp32"]))
    assert m["validation"]["accuracy"] == q["accuracy"]["fp32"]


def test_int8_trunk_runs_and_agrees(packages):
    _, path = packages["bert"]
    with load_package(path) as pkg:
        fp32 = pkg.predict_logits(TEXTS)
        int8 = pkg.predict_logits(TEXTS, precision="int8")
    assert not np.array_equal(fp32, int8)  # really a different graph
    assert (fp32.argmax(1) == int8.argmax(1)).mean() >= 0.8


# -- corruption: every case is a PackageError naming the file ----------------------------------------------------


def _rewrite_manifest(path, edit, reseal: bool) -> None:
    m = json.loads((path / "manifest.json").read_text())
    edit(m)
    if reseal:
        m = mf.seal(m)
    (path / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: (p / "trunk.onnx").unlink(), r"trunk\.onnx: missing"),
        (lambda p: (p / "top.safetensors").unlink(), r"top\.safetensors: missing"),
        (lambda p: (p / "manifest.json").unlink(), r"manifest\.json: missing"),
        (lambda p: _truncate(p / "trunk.int8.onnx"), r"trunk\.int8\.onnx: \d+ bytes, manifest says \d+ \(truncated\)"),
        (lambda p: _truncate(p / "manifest.json"), r"manifest\.json: not valid JSON"),
        (lambda p: _flip_byte(p / "top.safetensors"), r"top\.safetensors: sha256 does not match"),
        (lambda p: _flip_byte(p / "tokenizer.json"), r"tokenizer\.json: sha256 does not match"),
        (lambda p: _flip_byte(p / "trunk.onnx"), r"trunk\.onnx: sha256 does not match"),
        (lambda p: _rewrite_manifest(p, lambda m: m.update(schema_version=3), False), r"schema version 3 is not"),
        (lambda p: _rewrite_manifest(p, lambda m: m.update(schema_version=3), True), r"schema version 3 is not"),
        (
            lambda p: _rewrite_manifest(p, lambda m: m.update(labels=["a", "b", "c"]), False),
            r"manifest\.json: .*edited",
        ),
        (lambda p: _rewrite_manifest(p, lambda m: m.update(cut=0), False), r"manifest\.json: .*edited"),
        (lambda p: _rewrite_manifest(p, lambda m: m["files"].pop("top.json"), True), r"refers to 'top\.json'"),
        (lambda p: _rewrite_manifest(p, lambda m: m.update(format="other"), False), r"not an edgetune device"),
        (
            lambda p: _rewrite_manifest(p, lambda m: m["files"].update({"../x": m["files"]["top.json"]}), True),
            r"unsafe file name '\.\./x'",
        ),
        (lambda p: _rewrite_manifest(p, lambda m: m.update(labels=["x", "y", "z"]), True), r"top\.json: cut/labels"),
    ],
    ids=[
        "missing-trunk",
        "missing-top",
        "missing-manifest",
        "truncated-int8",
        "truncated-manifest",
        "tampered-top",
        "tampered-tokenizer",
        "tampered-trunk",
        "wrong-version",
        "wrong-version-resealed",
        "manifest-labels-edited",
        "manifest-cut-edited",
        "manifest-drops-file",
        "wrong-format",
        "path-traversal-name",
        "resealed-inconsistent-labels",
    ],
)
def test_every_corruption_is_a_clear_error(bert_copy, damage, message):
    damage(bert_copy)
    with pytest.raises(PackageError, match=message):
        load_package(bert_copy)
    result = verify_package(bert_copy)
    assert not result.ok and any(__import__("re").search(message, p) for p in result.problems)


def _truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_all_problems_are_reported_at_once(bert_copy):
    _flip_byte(bert_copy / "top.safetensors")
    (bert_copy / "encoder.json").unlink()
    result = verify_package(bert_copy)
    assert {p.split(":")[0] for p in result.problems} == {"top.safetensors", "encoder.json"}
    assert {f.name for f in result.files if f.ok} == {"tokenizer.json", "top.json", "top.onnx", "trunk.onnx",
                                                      "trunk.onnx.data", "trunk.int8.onnx",
                                                      "trunk.int8.onnx.data"}  # fmt: skip


# -- tar form ----------------------------------------------------------------------------------------------------


def test_tar_round_trip(packages, tiny_model_dir, tmp_path):
    checkpoint, path = packages["llama"]
    result = export_package(checkpoint, make_plan(tiny_model_dir("llama")), tmp_path / "pkg",
                            options=ExportOptions(tar=True, top_onnx=False))  # fmt: skip
    assert result.path == tmp_path / "pkg.tar" and result.path.is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["pkg.tar"]  # no staging left behind
    with tarfile.open(result.path) as tar:
        assert tar.getnames()[0] == "manifest.json"
    with load_package(result.path) as from_tar, load_package(path) as from_dir:
        assert np.abs(from_tar.predict_logits(TEXTS) - from_dir.predict_logits(TEXTS)).max() <= 1e-6
        extracted = from_tar.root
        assert extracted.exists()
    assert not extracted.exists()  # closing frees the extracted copy
    assert verify_package(result.path).ok


def _tar_with(path, members: dict[str, bytes], link: str | None = None) -> None:
    import io

    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo(link)
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc/passwd"
            tar.addfile(info)


def test_tar_guards(bert_copy, tmp_path):
    names = ["manifest.json"] + sorted(p.name for p in bert_copy.iterdir() if p.name != "manifest.json")
    files = {name: (bert_copy / name).read_bytes() for name in names}  # the manifest first, as export writes it
    traversal = tmp_path / "traversal.tar"
    _tar_with(traversal, {**files, "../escaped.txt": b"x"})
    with pytest.raises(PackageError, match=r"unsafe or duplicate member name '\.\./escaped\.txt'"):
        load_package(traversal)
    assert not (tmp_path.parent / "escaped.txt").exists()
    linked = tmp_path / "linked.tar"
    _tar_with(linked, files, link="tokenizer2.json")
    with pytest.raises(PackageError, match="not a regular file"):
        load_package(linked)
    truncated = tmp_path / "truncated.tar"
    _tar_with(truncated, files)
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(PackageError, match="truncated|missing|manifest"):
        load_package(truncated)
    tampered = tmp_path / "tampered.tar"
    _tar_with(tampered, {**files, "top.json": files["top.json"].replace(b'"cut": 1', b'"cut": 2')})
    with pytest.raises(PackageError, match=r"top\.json: \d+ bytes|top\.json: sha256"):
        load_package(tampered)


# -- the model and the plan --------------------------------------------------------------------------------------


def test_plan_for_another_model_is_refused(tiny_model_dir, tmp_path):
    plan = make_plan(tiny_model_dir("bert", seed=0))
    other = tiny_model_dir("bert", seed=1)  # same architecture, other weights
    with pytest.raises(PlanMismatchError, match="plan was made for another model") as err:
        export_package(other, plan, tmp_path / "pkg")
    assert plan.model_id in str(err.value) and plan.model_hash[:12] in str(err.value)
    assert not (tmp_path / "pkg").exists()


def test_fine_tuned_checkpoint_names_its_base_model(tiny_model_dir, tmp_path):
    model_dir = tiny_model_dir("gpt2")
    plan = make_plan(model_dir)
    checkpoint = make_checkpoint(model_dir, tmp_path / "ckpt")
    clf = SequenceClassifier.from_pretrained(checkpoint)
    encoder = TextEncoder.from_dir(checkpoint / "backbone")
    with torch.no_grad():  # the top block was fine-tuned: the weights no longer hash like the plan's model
        clf.backbone.blocks[2].mlp.c_fc.weight.add_(0.05)
    clf.save_pretrained(checkpoint, encoder)
    with pytest.raises(PlanMismatchError, match="base_model_hash"):
        export_package(checkpoint, plan, tmp_path / "pkg")
    meta = json.loads((checkpoint / "edgetune.json").read_text())
    (checkpoint / "edgetune.json").write_text(json.dumps({**meta, "base_model_hash": plan.model_hash}))
    result = export_package(checkpoint, plan, tmp_path / "pkg")
    assert result.manifest["backbone"]["hash"] != plan.model_hash
    assert result.manifest["backbone"]["plan_hash"] == plan.model_hash
    with load_package(result.path) as pkg:  # the fine-tuned top is what ships
        with torch.inference_mode():
            want = clf.eval()(*[torch.from_numpy(a) for a in pkg.encode(TEXTS)]).numpy()
        assert np.abs(pkg.predict_logits(TEXTS) - want).max() <= 1e-4


def test_plain_model_gets_a_probe_head(tiny_model_dir, tmp_path):
    model_dir = tiny_model_dir("bert")
    result = export_package(model_dir, make_plan(model_dir), tmp_path / "pkg", data=dataset(90))
    head = result.manifest["head"]
    assert head["init"] == "probe" and head["num_examples"] == 72  # 20% held out for validation
    assert result.manifest["validation"]["num_examples"] == 18
    assert head["train_accuracy"] > 0.6  # topic words reveal the label: far above chance (1/3)
    assert not result.warnings


def test_plain_model_without_data_warns_and_zeroes_the_head(tiny_model_dir, tmp_path):
    model_dir = tiny_model_dir("llama")
    result = export_package(model_dir, make_plan(model_dir), tmp_path / "pkg")
    assert result.manifest["head"]["init"] == "zeros"
    assert any("zero-initialized" in w for w in result.warnings)
    with load_package(result.path) as pkg:
        logits = pkg.predict_logits(TEXTS)
    assert np.all(logits == 0)


def test_checkpoint_without_tokenizer_is_a_clear_error(tiny_model_dir, tmp_path):
    model_dir = tiny_model_dir("gpt2")
    checkpoint = make_checkpoint(model_dir, tmp_path / "ckpt")
    for name in ("tokenizer.json", "encoder.json"):
        (checkpoint / "backbone" / name).unlink()
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        export_package(checkpoint, make_plan(model_dir), tmp_path / "pkg")


def test_never_overwrites_what_is_not_a_package(tiny_model_dir, tmp_path):
    model_dir = tiny_model_dir("bert")
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    with pytest.raises(ExportError, match="not an edgetune package directory"):
        export_package(model_dir, make_plan(model_dir), out)
    assert (out / "notes.txt").read_text() == "precious"


# -- the device side stays light ---------------------------------------------------------------------------------


def test_reader_imports_without_torch_or_transformers_training(packages):
    _, path = packages["bert"]
    code = (
        "import sys, device_sim.package as p\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'\n"
        f"pkg = p.load_package({str(path)!r})\n"
        "ids, mask = pkg.encode(['apple juice'])\n"
        "h = pkg.run_trunk(ids, mask)\n"
        "assert 'torch' not in sys.modules, 'the trunk needs onnxruntime only'\n"
        "print(pkg.predict(['apple juice']))\n"
        # the torch top needs transformers' block classes (whose modeling_utils imports accelerate), never its Trainer
        "assert not any(m.startswith(('transformers.trainer', 'peft')) for m in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().strip("[]'") in LABELS
