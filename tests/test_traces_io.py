import os

import numpy as np
import pytest

from edgetune.api import load_model
from edgetune.io import atomic_directory, atomic_write_bytes, atomic_write_json, sha256_file
from edgetune.traces import collect_traces


def test_traces_shape_and_order_independent_of_batching(tiny_model_dir):
    backbone, enc = load_model(tiny_model_dir("gpt2"), max_length=16)
    texts = ["apple", "goal match team score league the a of", "vote", "pear juice fruit today said new big"]
    batched = collect_traces(backbone, enc, texts, batch_size=3, progress=False).pooled
    assert batched.shape == (4, 4, 32) and batched.dtype == np.float32
    for i, t in enumerate(texts):
        single = collect_traces(backbone, enc, [t], batch_size=1, progress=False).pooled[:, 0]
        assert np.allclose(batched[:, i], single, atol=1e-5)
    with pytest.raises(ValueError):
        collect_traces(backbone, enc, [], progress=False)


def test_atomic_write_never_leaves_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "x.json"
    atomic_write_json(target, {"v": 1})

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"garbage")
    monkeypatch.undo()
    assert target.read_text().strip().startswith("{") and '"v": 1' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_atomic_directory_keeps_old_on_failure(tmp_path):
    target = tmp_path / "pkg"
    with atomic_directory(target) as d:
        (d / "a.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as d:
            (d / "a.txt").write_text("new")
            raise RuntimeError("crash mid-write")
    assert (target / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["pkg"]
    with atomic_directory(target) as d:
        (d / "b.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert len(sha256_file(target / "b.txt")) == 64
