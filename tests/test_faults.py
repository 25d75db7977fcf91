"""Fault injection: a package that changes under a running job, hostile archives, outputs that would overwrite
inputs, interrupted runs, re-sealed but wrong files, numeric flags out of range.

Every case must end in the correct result or one line with exit code 2 (``inspect``: exit 2 and FAILED lines):
never a traceback, never a silent mix of two versions, never a lost input, and a re-run after a kill completes.
docs/reliability.md's table summarizes what this module tries.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from device_sim.device import Device
from device_sim.package import load_package, verify_package, write_tar
from device_sim.personalize import work_dir
from edgetune.checkpoint import TrainState, load_checkpoint, previous_dir, save_checkpoint
from edgetune.data import load_dataset
from edgetune.io import output_lock, private_tempdir, recover, sweep_temp
from edgetune_cli import app
from edgetune_format import manifest as mf
from edgetune_format.errors import PackageError
from edgetune_format.personal import PersonalStateError, read_personal_state
from tests.conftest import Crash, crash_at, kill_at_marker, synthetic_rows, write_csv
from tests.devices import SWAP, export_probe_package, fast, user_data

runner = CliRunner()
TEXTS = [t for t, _ in synthetic_rows(12, seed=11)]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _one_line_exit_2(result) -> None:
    """A refused command: exit 2, no traceback, an error message (the CLI's red line or click's usage box)."""
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert "error" in result.output.lower()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _reseal(pkg: Path, edit=None, files: dict[str, bytes] | None = None) -> None:
    """Rewrite files of ``pkg`` and re-seal its manifest so that every hash matches (a forged-but-consistent
    package: verification passes, the content is wrong)."""
    m = json.loads((pkg / mf.MANIFEST).read_text())
    for name, data in (files or {}).items():
        (pkg / name).write_bytes(data)
        m["files"][name] = {"sha256": _sha(data), "size": len(data)}
    if edit is not None:
        edit(m)
    m.pop("integrity", None)
    (pkg / mf.MANIFEST).write_text(json.dumps(mf.seal(m)))


@pytest.fixture()
def pkg(device_packages, tmp_path) -> Path:
    dst = tmp_path / "pkg"
    shutil.copytree(device_packages["main"], dst)
    return dst


@pytest.fixture()
def user_csv(tmp_path) -> Path:
    return write_csv(tmp_path / "user.csv", [(t, SWAP.get(y, y)) for t, y in synthetic_rows(60, seed=3)])


# -- 1. a package is opened once -------------------------------------------------------------------------------


CANDIDATES = ({"name": "head", "cut": "head", "head_lr": 0.1}, {"name": "block", "lr": 3e-3, "head_lr": 0.1})


def test_a_reexport_during_personalize_cannot_mix_versions(device_packages, tiny_model_dir, tmp_path):
    """While the job trains, the vendor re-exports another model into the same path (atomically, as export
    does). The personal state must be exactly the one a job on the old package alone produces."""
    pkg = tmp_path / "pkg"
    shutil.copytree(device_packages["main"], pkg)
    stale = tmp_path / ".pkg.k1ll3dXY.tmp"  # an export killed earlier left its staging directory
    stale.mkdir()
    (stale / "trunk.onnx").write_bytes(b"half")
    data = user_data(80, seed=3)
    # two candidates, each rebuilt from the package: the second one starts after the re-export
    config = fast(epochs=2, select=True, candidates=CANDIDATES)
    with Device(device_packages["main"], threads=1) as reference:
        reference.personalize(data, tmp_path / "clean", config)
    replaced = []

    def reexport(event) -> None:
        if event.global_step == 2 and not replaced:
            rng, threads = torch.get_rng_state(), torch.get_num_threads()  # the export draws from torch's RNG
            export_probe_package(tiny_model_dir("bert", seed=1), pkg)  # another model, same path
            torch.set_rng_state(rng)
            torch.set_num_threads(threads)
            replaced.append(True)

    with Device(pkg, threads=1) as device:
        result = device.personalize(data, tmp_path / "personal", config, callbacks=[reexport])
    assert [c["name"] for c in result.selection["candidates"]] == ["head", "block"]
    assert replaced and not stale.exists()  # the re-export swept the killed export's staging
    new_manifest = json.loads((pkg / mf.MANIFEST).read_text())
    assert new_manifest["backbone"]["hash"] != result.manifest["package"]["backbone_hash"]  # it really changed
    state = read_personal_state(tmp_path / "personal")
    assert _same(state.tensors, read_personal_state(tmp_path / "clean").tensors)  # the old version, only
    assert state.package == read_personal_state(tmp_path / "clean").package
    with Device(pkg, threads=1) as new, pytest.raises(PersonalStateError, match="belongs to another package"):
        new.top(tmp_path / "personal")


def test_files_changed_after_loading_are_never_read(pkg):
    with load_package(pkg, threads=1) as package:
        before = package.predict_logits(TEXTS)
        for name in ("trunk.onnx", "top.safetensors", "tokenizer.json"):
            (pkg / name).write_bytes(b"replaced after verification")
        package.release_sessions()  # a new session and a new top are built from the package's own copy
        assert np.array_equal(package.predict_logits(TEXTS), before)
        assert package.root != pkg and not str(package.root).startswith(str(pkg))
    assert not package.root.exists()


def test_killed_runs_private_copies_are_swept(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"edgetune-package-{dead.pid}-abcd"
    alive = tmp_path / f"edgetune-package-{os.getppid()}-efgh"  # a live process (pytest's parent) keeps its copy
    for d in (stale, alive):
        d.mkdir()
        (d / "trunk.onnx").write_bytes(b"x" * 100)
    with private_tempdir("edgetune-package-") as mine:
        assert Path(mine).name.startswith(f"edgetune-package-{os.getpid()}-")
        assert not stale.exists() and alive.exists()
    assert sweep_temp("edgetune-package-") == []


# -- 2. archives -------------------------------------------------------------------------------------------------


def _members(pkg: Path) -> dict[str, bytes]:
    names = [mf.MANIFEST] + sorted(p.name for p in pkg.iterdir() if p.name != mf.MANIFEST)
    return {name: (pkg / name).read_bytes() for name in names}


def _tar(path: Path, members: list[tuple[str, bytes]], sparse: str | None = None) -> Path:
    with open(path, "wb") as f:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            if name == sparse:  # a GNU sparse member that declares 2 GiB but stores nothing
                f.write(_sparse_header(name, 2 << 30))
                continue
            f.write(info.tobuf(tarfile.GNU_FORMAT))
            f.write(data + b"\0" * (-len(data) % 512))
        f.write(b"\0" * 1024)
    return path


def _sparse_header(name: str, real_size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = 0
    buf = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    buf[156:157] = tarfile.GNUTYPE_SPARSE
    buf[386:410] = b"%011o\0" % 0 + b"%011o\0" % 0  # one sparse region: offset 0, 0 bytes
    buf[483:495] = b"%011o\0" % real_size
    buf[148:156] = b" " * 8
    buf[148:156] = b"%06o\0 " % sum(buf[:512])
    return bytes(buf)


def test_a_sparse_archive_bomb_is_refused_before_anything_is_written(pkg, tmp_path, monkeypatch):
    members = _members(pkg)
    bomb = _tar(tmp_path / "bomb.tar", list(members.items()), sparse="top.safetensors")
    with tarfile.open(bomb) as tar:  # what the archive claims
        assert next(m for m in tar.getmembers() if m.name == "top.safetensors").issparse()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    with pytest.raises(PackageError, match="'top.safetensors' is not a regular file|sparse"):
        load_package(bomb)
    assert not verify_package(bomb).ok
    assert list(scratch.iterdir()) == []  # nothing was extracted, not even the manifest
    result = runner.invoke(app, ["inspect", str(bomb)])
    assert result.exit_code == 2 and "FAILED" in result.output and "verified" not in result.output


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda ms: ms + [("extra.bin", b"unlisted")], r"'extra\.bin' is not listed in manifest\.json"),
        (lambda ms: ms[1:] + ms[:1], r"first member must be manifest\.json"),
        (
            lambda ms: [(n, d + b"{}" if n == "top.json" else d) for n, d in ms],
            r"top\.json: \d+ bytes, manifest says \d+ \(longer than exported\)",
        ),
        (lambda ms: ms + [ms[2]], r"unsafe or duplicate member name"),
    ],
    ids=["unlisted-member", "manifest-not-first", "size-mismatch", "duplicate"],
)
def test_archive_members_must_be_exactly_the_manifests_files(pkg, tmp_path, monkeypatch, change, message):
    archive = _tar(tmp_path / "pkg.tar", change(list(_members(pkg).items())))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    with pytest.raises(PackageError, match=message):
        load_package(archive)
    assert list(scratch.iterdir()) == []


def test_a_package_directory_with_an_unlisted_file_is_refused(pkg, tmp_path):
    copy = tmp_path / "copied-pkg"
    shutil.copytree(pkg, copy)
    (copy / "notes.txt").write_text("added after the seal")
    assert not verify_package(copy).ok
    with pytest.raises(PackageError, match=r"notes\.txt: not listed in manifest\.json \(refused\)"):
        load_package(copy)
    (copy / "notes.txt").unlink()
    with load_package(copy) as package:  # the package as exported loads
        assert package.labels


def test_a_package_may_not_declare_more_than_the_size_cap(pkg, tmp_path, monkeypatch):
    archive = write_tar(pkg, tmp_path / "pkg.tar")
    with load_package(archive) as package:  # the real archive loads
        assert package.labels
    monkeypatch.setattr(mf, "MAX_PACKAGE_BYTES", 1000)
    with pytest.raises(PackageError, match="more than the 1000 a package may hold"):
        load_package(archive)
    with pytest.raises(PackageError, match="more than the 1000"):
        load_package(pkg)


# -- 3. outputs --------------------------------------------------------------------------------------------------


def test_predict_and_evaluate_never_overwrite_their_input(pkg, user_csv, tmp_path):
    before = user_csv.read_bytes()
    for command in (["predict"], ["evaluate", "-q"]):
        result = runner.invoke(app, [*command, "--package", str(pkg), "--data", str(user_csv), "--out", str(user_csv)])
        _one_line_exit_2(result)
        assert "is also the command's --data" in result.output
        assert user_csv.read_bytes() == before
    alias = tmp_path / "alias.csv"
    alias.symlink_to(user_csv)
    result = runner.invoke(app, ["predict", "--package", str(pkg), "--data", str(user_csv), "--out", str(alias)])
    _one_line_exit_2(result)
    assert user_csv.read_bytes() == before


def test_outputs_refuse_files_they_did_not_write_and_replace_their_own(pkg, user_csv, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    for command in (["predict"], ["evaluate", "-q"]):
        result = runner.invoke(app, [*command, "--package", str(pkg), "--data", str(user_csv), "--out", str(notes)])
        _one_line_exit_2(result)
        assert "not a" in result.output and notes.read_text() == "mine"
    preds, metrics = tmp_path / "preds.csv", tmp_path / "metrics.json"
    for _ in range(2):  # the second run replaces what the first wrote
        args = ["--package", str(pkg), "--data", str(user_csv)]
        assert runner.invoke(app, ["predict", *args, "--out", str(preds)]).exit_code == 0
        assert runner.invoke(app, ["evaluate", *args, "--out", str(metrics), "-q"]).exit_code == 0
    assert preds.read_text().startswith("text,label,confidence") and "accuracy" in json.loads(metrics.read_text())
    result = runner.invoke(app, ["plan", "--model", str(tmp_path), "--data", str(user_csv), "--out", str(user_csv)])
    _one_line_exit_2(result)
    result = runner.invoke(app, ["plan", "--model", str(tmp_path), "--data", str(user_csv), "--out", str(notes)])
    _one_line_exit_2(result)
    assert user_csv.read_bytes() and notes.read_text() == "mine"
    assert not list(tmp_path.glob(".*.lock"))  # locks are released (and their files removed)


def test_merge_and_skip_never_replace_an_input_or_a_foreign_directory(user_csv, tmp_path):
    base, model = tmp_path / "base", tmp_path / "model"
    for d in (base, model):
        d.mkdir()
        (d / "config.json").write_text("{}")
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"meow")
    for out in (base, model, foreign):
        args = ["merge", "--base", str(base), "--models", str(model), str(model), "--out", str(out)]
        _one_line_exit_2(runner.invoke(app, args))
    notes = tmp_path / "notes.safetensors"
    notes.write_bytes(b"someone's file")
    args = ["merge", "--base", str(base), "--models", str(model), str(notes), "--out", str(notes)]
    _one_line_exit_2(runner.invoke(app, args))
    assert notes.read_bytes() == b"someone's file"
    for out in (model, foreign, user_csv):
        result = runner.invoke(app, ["skip", "--model", str(model), "--data", str(user_csv), "--out", str(out)])
        _one_line_exit_2(result)
    assert (foreign / "cat.jpg").read_bytes() == b"meow" and (base / "config.json").exists()
    assert user_csv.read_text().startswith("text,label")


HOLD_LOCK = """
import sys, time
from edgetune.io import output_lock
with output_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_second_run_on_a_locked_output_fails_clearly_and_a_kill_frees_it(pkg, user_csv, tmp_path):
    out = tmp_path / "personal"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], env=env, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"held"
        args = ["personalize", "--package", str(pkg), "--data", str(user_csv), "--out", str(out), "-q"]
        result = runner.invoke(app, [*args, "--epochs", "1", "--no-select", "--guard-fraction", "0"])
        _one_line_exit_2(result)
        assert f"another edgetune run (pid {holder.pid}) is writing it" in result.output
        assert "choose another --out" in result.output
        assert not out.exists() and not work_dir(out).exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (tmp_path / ".personal.lock").exists()  # a killed holder leaves its lock file ...
    result = runner.invoke(app, [*args, "--epochs", "1", "--no-select", "--guard-fraction", "0"])
    assert result.exit_code == 0, result.output  # ... which does not block the next run
    assert read_personal_state(out).manifest["training"]["num_train"] > 0


def test_nested_locks_in_one_process_are_allowed(tmp_path):
    out = tmp_path / "out"
    with output_lock(out), output_lock(out):
        assert (tmp_path / ".out.lock").read_text().strip() == str(os.getpid())
    assert not (tmp_path / ".out.lock").exists()


# -- 4. interrupted work -----------------------------------------------------------------------------------------


def _checkpoint(step: int) -> dict:
    return dict(
        identity={"run": 1},
        trainable={"w": torch.full((3,), float(step))},
        best=None,
        optimizer={"state": {}, "param_groups": []},
        scheduler={"last_epoch": step},
        rng={"cpu": torch.get_rng_state()},
    )


def test_a_damaged_or_missing_checkpoint_falls_back_to_the_last_good_one(tmp_path):
    from edgetune.checkpoint import Checkpoint

    ckpt = tmp_path / "checkpoint"
    for step in (1, 2):
        save_checkpoint(ckpt, Checkpoint(state=TrainState(global_step=step), **_checkpoint(step)))
    assert load_checkpoint(ckpt).state.global_step == 2 and previous_dir(ckpt).is_dir()
    data = bytearray((ckpt / "trainable.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (ckpt / "trainable.safetensors").write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="damaged checkpoint.*trainable.safetensors.*resuming from"):
        assert load_checkpoint(ckpt).state.global_step == 1
    shutil.rmtree(ckpt)  # killed between the two renames: only the previous one is left
    assert load_checkpoint(ckpt).state.global_step == 1
    (previous_dir(ckpt) / "state.json").write_text("{")  # nothing good left: start over, never a traceback
    with pytest.warns(UserWarning, match="starting over"):
        assert load_checkpoint(ckpt) is None


def test_every_checkpoint_file_is_fsynced_before_the_rename(tmp_path, monkeypatch):
    from edgetune.checkpoint import Checkpoint

    synced: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    renamed: list[str] = []

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    def replace(src, dst):
        renamed.append(str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    save_checkpoint(tmp_path / "checkpoint", Checkpoint(state=TrainState(), **_checkpoint(1)))
    names = {p.name for p in (tmp_path / "checkpoint").iterdir()}
    assert names >= {"trainable.safetensors", "optimizer.pt", "rng.safetensors", "state.json"}
    assert {Path(p).name for p in synced} >= names  # every file, before the directory rename
    assert renamed == [str(tmp_path / "checkpoint")]


def test_a_train_killed_while_writing_its_first_checkpoint_reruns(tiny_model_dir, tmp_path):
    from edgetune.api import load_model, plan
    from edgetune.finetune import finetune
    from edgetune.train import TrainConfig

    model = tiny_model_dir("bert")
    train = write_csv(tmp_path / "train.csv", synthetic_rows(48))
    p = plan(load_model(model, 16), train, planner="topk", planner_params={"k": 1}, progress=False)
    out = tmp_path / "out"
    half = out / ".checkpoint.a1b2c3d4.tmp"  # what a kill during the first checkpoint leaves
    half.mkdir(parents=True)
    (half / "trainable.safetensors").write_bytes(b"\0" * 10)
    (tmp_path / ".out.e5f6g7h8.tmp").mkdir()  # and a killed final save next to it
    config = TrainConfig(epochs=1, batch_size=16, lr=1e-3, progress=False, device="cpu")
    result = finetune(model, p, train, out, config)
    assert (out / "edgetune.json").exists() and result.history
    assert not half.exists() and not (tmp_path / ".out.e5f6g7h8.tmp").exists()


def test_recover_puts_back_a_directory_moved_aside_by_a_killed_swap(tmp_path):
    (tmp_path / ".personal.old-12345").mkdir()
    (tmp_path / ".personal.old-12345" / "personal.json").write_text("{}")
    (tmp_path / ".personal.zz99yy88.tmp").mkdir()
    (tmp_path / ".notes.txt.abcdefgh.tmp").write_text("someone else's")
    recover(tmp_path, ["personal"])
    assert (tmp_path / "personal" / "personal.json").exists()
    assert not (tmp_path / ".personal.zz99yy88.tmp").exists()
    assert (tmp_path / ".notes.txt.abcdefgh.tmp").exists()  # not ours: untouched


def test_a_damaged_partial_checkpoint_restarts_from_the_last_good_one(device_packages, tmp_path):
    """A job killed mid-way, then one of its checkpoint files damaged: the re-run resumes from the previous
    checkpoint and ends bit-identical to a job that was never interrupted."""
    data = user_data(80, seed=3)
    with Device(device_packages["main"], threads=1) as device:
        whole = device.personalize(data, tmp_path / "whole", fast(epochs=3, checkpoint_steps=2))
        out = tmp_path / "personal"
        with pytest.raises(Crash):
            device.personalize(data, out, fast(epochs=3, checkpoint_steps=2), callbacks=[crash_at(7)])
        ckpt = work_dir(out) / "checkpoint"
        assert load_checkpoint(ckpt).state.global_step == 6 and previous_dir(ckpt).is_dir()
        (ckpt / "optimizer.pt").write_bytes(b"garbage")
        with pytest.warns(UserWarning, match=r"damaged checkpoint.*optimizer\.pt.*resuming from .*\.checkpoint\.prev"):
            resumed = device.personalize(data, out, fast(epochs=3, checkpoint_steps=2))
    assert resumed.resumed
    assert _same(read_personal_state(out).tensors, read_personal_state(tmp_path / "whole").tensors)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in whole.history]


def test_a_rerun_with_other_data_on_the_same_out_completes(device_packages, user_csv, tmp_path):
    out = tmp_path / "personal"
    with Device(device_packages["main"], threads=1) as device:
        with pytest.raises(Crash):
            device.personalize(user_data(80, seed=3), out, fast(epochs=2), callbacks=[crash_at(3)])
        other = user_data(80, seed=5)
        result = device.personalize(other, out, fast(epochs=2))
        device.personalize(other, tmp_path / "clean", fast(epochs=2))
    assert not result.resumed
    assert _same(read_personal_state(out).tensors, read_personal_state(tmp_path / "clean").tensors)


def test_a_poisoned_partial_checkpoint_is_dropped_not_a_dead_end(device_packages, tmp_path):
    """The job's work directory holds a checkpoint that no run of this job wrote (an older version's, or one
    written without the lock): the job starts over without it instead of failing with advice to use a flag
    ``personalize`` does not have."""
    out, data = tmp_path / "personal", user_data(80, seed=3)
    with Device(device_packages["main"], threads=1) as device:
        with pytest.raises(Crash):
            device.personalize(data, out, fast(epochs=2, checkpoint_steps=2), callbacks=[crash_at(3)])
        state = work_dir(out) / "checkpoint" / "state.json"
        meta = json.loads(state.read_text())
        meta["identity"]["config"]["lr"] = 0.5  # another run's settings
        state.write_text(json.dumps(meta))
        result = device.personalize(data, out, fast(epochs=2, checkpoint_steps=2))
        device.personalize(data, tmp_path / "clean", fast(epochs=2, checkpoint_steps=2))
    assert result.history and not work_dir(out).exists()
    assert _same(read_personal_state(out).tensors, read_personal_state(tmp_path / "clean").tensors)


# -- 5. verified but wrong: schema, library errors, numbers ------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m["backbone"].pop("hash"), r"backbone\.hash: missing"),
        (lambda m: m["plan"].pop("arch"), r"plan\.arch: missing"),
        (lambda m: m["plan"]["arch"].pop("block_params"), r"plan\.arch\.block_params: missing"),
        (lambda m: m["trunk"].pop("files"), r"trunk\.files: missing"),
        (lambda m: m["tokenizer"].pop("encoder"), r"tokenizer\.encoder: missing"),
        (lambda m: m.update(cut="1"), r"cut: must be an integer"),
        (lambda m: m["backbone"].update(num_layers=None), r"backbone\.num_layers: must be an integer"),
        (lambda m: m.update(labels=[1, 2, 3]), r"labels\[0\]: must be a string"),
        (lambda m: m.update(head=json.loads("[" * 200 + "]" * 200)), r"nested more than 32 levels"),
    ],
    ids="backbone-hash plan-arch arch-block-params trunk-files tokenizer-encoder cut-string num-layers-null "
    "labels-ints deep".split(),
)
def test_a_resealed_manifest_without_what_readers_need_is_one_clear_error(pkg, edit, message):
    _reseal(pkg, edit)
    with pytest.raises(PackageError, match=message):
        load_package(pkg)
    result = runner.invoke(app, ["inspect", str(pkg)])
    assert result.exit_code == 2 and "verified" not in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["predict", "--package", str(pkg), "--text", "apple"])
    _one_line_exit_2(result)


@pytest.mark.parametrize(
    ("name", "data", "when"),
    [
        ("tokenizer.json", b'{"version": "1.0", "model": 7}', "load"),
        ("trunk.onnx", b"\x08\x07garbage that is not a protobuf model", "predict"),
        ("top.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json header}", "load"),
        ("top.json", json.dumps({"cut": 1, "labels": ["alpha", "beta", "gamma"]}).encode(), "load"),
    ],
    ids=["tokenizer", "onnx", "safetensors", "top-spec"],
)
def test_resealed_corrupt_files_are_one_line_naming_the_file(pkg, name, data, when):
    _reseal(pkg, files={name: data})
    if when == "load":  # the fit checks read the tokenizer, the top's tensors and its spec: verification tells
        assert any(name in p for p in verify_package(pkg).problems)
        with pytest.raises(PackageError, match=name):
            load_package(pkg)
    else:  # the hashes match and nothing but onnxruntime can read a graph: loading it tells
        assert verify_package(pkg).ok
        with load_package(pkg) as package, pytest.raises(PackageError, match=rf"{name}.*cannot be loaded"):
            package.predict(TEXTS)
    result = runner.invoke(app, ["predict", "--package", str(pkg), "--text", "apple"])
    _one_line_exit_2(result)
    assert name in result.output and len(result.output.strip().splitlines()) == 1
    result = runner.invoke(app, ["inspect", str(pkg)])  # inspect refuses whatever predict refuses
    assert result.exit_code == 2 and "verified" not in result.output and name in result.output


def test_onnx_external_data_outside_the_package_is_refused(pkg):
    import onnx
    from onnx.external_data_helper import set_external_data

    model = onnx.load(str(pkg / "trunk.onnx"))
    tensor = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    set_external_data(tensor, location="../../outside.bin", offset=0, length=len(tensor.raw_data))
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.ClearField("raw_data")
    _reseal(pkg, files={"trunk.onnx": model.SerializeToString()})
    with pytest.raises(PackageError, match=r"external data '\.\./\.\./outside\.bin'"):
        load_package(pkg)  # refused at load, by the same check inspect runs
    assert any("outside.bin" in p for p in verify_package(pkg).problems)


def test_a_resealed_personal_state_without_a_nested_key_is_refused(device_packages, tmp_path):
    with Device(device_packages["main"], threads=1) as device:
        device.personalize(user_data(40, seed=3), tmp_path / "p", fast(epochs=1))
    path = tmp_path / "p" / "personal.json"
    m = json.loads(path.read_text())
    m["package"].pop("backbone_hash")
    m.pop("integrity")
    path.write_text(json.dumps(mf.seal(m)))
    with pytest.raises(PersonalStateError, match=r"package\.backbone_hash: missing"):
        read_personal_state(tmp_path / "p")
    result = runner.invoke(
        app, ["predict", "--package", str(device_packages["main"]), "--personal", str(tmp_path / "p"), "--text", "a"]
    )
    _one_line_exit_2(result)
    m["package"]["backbone_hash"] = "0" * 64
    m["weights"] = {"not": "a name"}
    path.write_text(json.dumps(mf.seal(m)))
    with pytest.raises(PersonalStateError, match=r"weights: must be a string"):
        read_personal_state(tmp_path / "p")


PKG, CSV, OUT = "--package {pkg}", "--data {csv}", "--out {out}"
SCRATCH = f"{PKG} {CSV} {OUT}"


@pytest.mark.parametrize(
    "command",
    [
        f"predict {PKG} --text apple --threads 0",
        f"predict {PKG} --text apple --threads 100000",
        f"predict {PKG} {CSV} --batch-size 0",
        f"personalize {SCRATCH} --profile phone-low --memory-mb 0",
        f"personalize {SCRATCH} --profile edge-box --time-budget-s -5",
        f"personalize {SCRATCH} --profile edge-box --gflops 0",
        f"personalize {SCRATCH} --epochs 0",
        f"personalize {SCRATCH} --threads 100000",
        f"evaluate {PKG} {CSV} --threads -1",
        f"plan --model {{pkg}} {CSV} {OUT} --max-train-memory-mb 0",
        f"plan --model {{pkg}} {CSV} {OUT} --max-length 0",
        f"plan --model {{pkg}} {CSV} {OUT} --device-gflops 0",
        f"train --model {{pkg}} --plan {{csv}} {CSV} {OUT} --max-length 0",
        f"train --model {{pkg}} --plan {{csv}} {CSV} {OUT} --epochs 0",
        f"export --model {{pkg}} --plan {{csv}} {OUT} --opset -1",
        f"export --model {{pkg}} --plan {{csv}} {OUT} --opset 99",
        f"export --model {{pkg}} --plan {{csv}} {OUT} --threads 0",
        f"swap --old {{pkg}} --new {{pkg}} --personal {{out}} {CSV} --out {{out}}2 --threads 0",
        f"simulate --old {{pkg}} --new {{pkg}} {CSV} {OUT} --users 0",
    ],
    ids=lambda c: " ".join(c.split()[:1] + c.split()[-2:]),
)
def test_numeric_flags_out_of_range_are_usage_errors(pkg, user_csv, tmp_path, command):
    out = tmp_path / "out"
    filled = command.format(pkg=pkg, csv=user_csv, out=out).split()
    result = runner.invoke(app, filled)
    _one_line_exit_2(result)
    assert not out.exists()


def test_a_csv_text_longer_than_128k_characters_is_read(pkg, tmp_path):
    long_text = "apple " * 40_000  # 240K characters, over csv's default field limit
    path = write_csv(tmp_path / "long.csv", [(long_text, "alpha"), ("goal team", "beta")])
    data = load_dataset(path, "text", "label")
    assert len(data.texts[0]) == len(long_text)
    result = runner.invoke(app, ["predict", "--package", str(pkg), "--data", str(path)])
    assert result.exit_code == 0, result.output
    assert len(result.output.strip().splitlines()) == 2


def test_tar_copy_of_a_package_loads_after_the_source_changes(pkg, tmp_path):
    """The same snapshot rule for archives: what was extracted and verified is what runs."""
    archive = write_tar(pkg, tmp_path / "pkg.tar")
    with load_package(archive, threads=1) as package:
        before = package.predict_logits(TEXTS)
        archive.write_bytes(b"not a tar any more")
        package.release_sessions()
        assert np.array_equal(package.predict_logits(TEXTS), before)


def test_a_killed_personalize_leaves_nothing_that_blocks_the_next_run(device_packages, tmp_path):
    """A real ``kill -9`` mid-job (in another process), then the same command again: it completes."""
    out, marker = tmp_path / "personal", tmp_path / "marker"
    job = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from device_sim.device import Device\n"
        "from tests.devices import fast, user_data\n"
        "def slow(event):\n"  # step 5 done (checkpoints at 2 and 4 written): wait there to be killed
        "    if event.global_step == 5:\n"
        "        Path(sys.argv[3]).write_text('x')\n"
        "        time.sleep(600)\n"
        "with Device(sys.argv[1], threads=1) as device:\n"
        "    device.personalize(user_data(80, seed=3), sys.argv[2], fast(epochs=3, checkpoint_steps=2),\n"
        "                       callbacks=[slow])\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "EDGETUNE_NO_PROGRESS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", job, str(device_packages["main"]), str(out), str(marker)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    kill_at_marker(proc, marker, "the job")
    copies = list(Path(tempfile.gettempdir()).glob(f"edgetune-package-{proc.pid}-*"))
    assert copies  # the killed job's private package copy is still there ...
    with Device(device_packages["main"], threads=1) as device:  # ... until the next run sweeps it
        result = device.personalize(user_data(80, seed=3), out, fast(epochs=3, checkpoint_steps=2))
    assert result.resumed and not any(c.exists() for c in copies)
    assert read_personal_state(out).kind == "top_delta" and not work_dir(out).exists()
