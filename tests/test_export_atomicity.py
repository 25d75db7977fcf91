"""A crash at any point of an export leaves the previous package (or nothing), never half a package."""

import json
import subprocess
import sys
import tarfile

import pytest

from device_sim.package import load_package, verify_package
from exporters.export import ExportOptions, export_package
from tests.conftest import kill_at_marker
from tests.packages import make_checkpoint, make_plan


@pytest.fixture(scope="module")
def source(tiny_model_dir, tmp_path_factory):
    model_dir = tiny_model_dir("bert")
    root = tmp_path_factory.mktemp("atomic")
    plan = make_plan(model_dir)
    plan.save(root / "plan.json")
    return make_checkpoint(model_dir, root / "ckpt"), root / "plan.json"


def _manifest(path):
    return (path / "manifest.json").read_bytes()


def test_failure_mid_write_keeps_the_previous_package(source, tmp_path, monkeypatch):
    checkpoint, plan = source
    out = tmp_path / "pkg"
    export_package(checkpoint, plan, out)
    before = _manifest(out)

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("exporters.export.quantize_trunk", boom)  # after trunk, top and tokenizer are written
    with pytest.raises(RuntimeError, match="disk full"):
        export_package(checkpoint, plan, out, options=ExportOptions(int8=True, top_onnx=False))
    assert _manifest(out) == before
    with load_package(out) as pkg:
        assert pkg.precisions == ["fp32"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]  # the staging directory is gone


def test_failure_mid_tar_keeps_the_previous_archive(source, tmp_path, monkeypatch):
    checkpoint, plan = source
    out = tmp_path / "pkg.tar"
    export_package(checkpoint, plan, out, options=ExportOptions(tar=True, top_onnx=False))
    before = out.read_bytes()
    calls = []
    real_addfile = tarfile.TarFile.addfile

    def addfile(self, info, fileobj=None):
        calls.append(info.name)
        if len(calls) == 3:
            raise OSError("connection lost")
        return real_addfile(self, info, fileobj)

    monkeypatch.setattr(tarfile.TarFile, "addfile", addfile)
    with pytest.raises(OSError, match="connection lost"):
        export_package(checkpoint, plan, out, options=ExportOptions(tar=True, top_onnx=False))
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg.tar"]
    monkeypatch.undo()
    assert verify_package(out).ok


KILLED_EXPORT = """
import sys, time
from pathlib import Path
import exporters.export as ex

checkpoint, plan, out, marker = sys.argv[1:5]
real = ex.atomic_write_json

def slow_manifest(path, obj):
    Path(marker).write_text("writing the manifest")
    time.sleep(120)
    real(path, obj)

ex.atomic_write_json = slow_manifest
ex.export_package(checkpoint, plan, out)
"""


def _kill_mid_write(checkpoint, plan, out, tmp_path) -> None:
    marker = tmp_path / "marker"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_EXPORT, str(checkpoint), str(plan), str(out), str(marker)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    kill_at_marker(proc, marker, "the export")  # the marker: it is writing the manifest


def test_killed_export_leaves_no_package_that_loads(source, tmp_path):
    checkpoint, plan = source
    out = tmp_path / "pkg"
    _kill_mid_write(checkpoint, plan, out, tmp_path)
    assert not out.exists()
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".pkg.") and p.name.endswith(".tmp")]
    assert leftovers and (leftovers[0] / "trunk.onnx").exists()  # killed with most files written...
    for left in leftovers:  # ...yet nothing there verifies as a package
        assert not verify_package(left).ok


def test_killed_export_keeps_the_previous_package(source, tmp_path):
    checkpoint, plan = source
    out = tmp_path / "pkg"
    export_package(checkpoint, plan, out)
    before = json.loads(_manifest(out))
    _kill_mid_write(checkpoint, plan, out, tmp_path)
    with load_package(out) as pkg:
        assert pkg.manifest == before
