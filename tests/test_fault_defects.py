"""The fault defects of the trust round, each tried the way it was found: a planted lock link, an output inside a
package, a CSV with a repeated column, signals, a full disk, bad bytes on stdin, the umask, a raw U+2028 in JSONL,
a pruned DSEE state in the torch runtime, a train cut below the package's, GPT-2's per-layer attention scaling,
and a re-export from another directory. docs/reliability.md's table lists them.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from device_sim.device import Device
from edgetune.data import DataError, load_dataset
from edgetune.io import Interrupted, atomic_directory, atomic_write_text, output_lock, request_stop
from edgetune_cli import app
from edgetune_format import manifest as mf
from edgetune_format.errors import PackageError
from edgetune_format.personal import PersonalStateError, read_personal_state
from tests.conftest import save_tiny_model, synthetic_rows, write_csv
from tests.devices import export_probe_package, fast, user_data
from tests.test_faults import _one_line_exit_2

runner = CliRunner()


@pytest.fixture()
def pkg(device_packages, tmp_path) -> Path:
    return Path(shutil.copytree(device_packages["main"], tmp_path / "pkg"))


@pytest.fixture()
def user_csv(tmp_path) -> Path:
    return write_csv(tmp_path / "user.csv", synthetic_rows(30, seed=4))


# -- outputs ------------------------------------------------------------------------------------------------------


def test_a_lock_planted_as_a_link_is_refused_and_its_target_untouched(pkg, user_csv, tmp_path):
    out_dir = tmp_path / "lk"
    out_dir.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (out_dir / ".preds.csv.lock").symlink_to(victim)
    result = runner.invoke(app, ["predict", "--package", str(pkg), "--data", str(user_csv), "--out",
                                 str(out_dir / "preds.csv")])  # fmt: skip
    _one_line_exit_2(result)
    assert "symbolic link" in result.output
    assert victim.read_text() == "precious\n" and not (out_dir / "preds.csv").exists()


def test_a_lock_that_is_not_a_plain_file_is_refused(tmp_path):
    os.mkfifo(tmp_path / ".out.lock")
    with pytest.raises(Exception, match="not a plain file"), output_lock(tmp_path / "out"):
        pass


def test_an_output_inside_a_package_directory_is_refused(pkg, device_packages, user_csv, tmp_path):
    other = Path(shutil.copytree(device_packages["other"], tmp_path / "pkgC"))
    result = runner.invoke(app, ["predict", "--package", str(pkg), "--data", str(user_csv), "--out",
                                 str(other / "preds.csv")])  # fmt: skip
    _one_line_exit_2(result)
    assert "device package" in result.output and not (other / "preds.csv").exists()
    result = runner.invoke(app, ["personalize", "--package", str(pkg), "--data", str(user_csv), "--out",
                                 str(other / "me"), "--epochs", "1", "--quiet"])  # fmt: skip
    _one_line_exit_2(result)
    assert sorted(p.name for p in other.iterdir()) == sorted(p.name for p in device_packages["other"].iterdir())
    assert runner.invoke(app, ["inspect", str(other)]).exit_code == 0


def test_outputs_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        with atomic_directory(tmp_path / "d") as d:
            (d / "f").write_text("y")
        assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
        assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755
        os.umask(0o077)
        atomic_write_text(tmp_path / "b.txt", "x")
        assert stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_an_exported_package_and_a_personal_state_are_readable_by_others_under_umask_022(device_packages, tmp_path):
    old = os.umask(0o022)
    try:
        with Device(device_packages["main"], threads=1) as device:
            device.personalize(user_data(30, seed=3), tmp_path / "p", fast(epochs=1))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "p").stat().st_mode) == 0o755
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o644 for f in (tmp_path / "p").iterdir())


# -- input data ---------------------------------------------------------------------------------------------------


def test_a_repeated_csv_column_is_refused_naming_it(pkg, tmp_path):
    path = tmp_path / "dup.csv"
    path.write_text("text,label,text\nan apple,alpha,other words\n")
    with pytest.raises(DataError, match="column 'text' appears more than once"):
        load_dataset(path)
    result = runner.invoke(app, ["evaluate", "--package", str(pkg), "--data", str(path)])
    _one_line_exit_2(result)
    assert "'text'" in result.output


def test_jsonl_is_read_by_records_so_a_raw_line_separator_in_a_string_is_kept(tmp_path):
    path = tmp_path / "u.jsonl"
    text = "first part\u2028second part\u0085third"
    path.write_text(json.dumps({"text": text, "label": "alpha"}, ensure_ascii=False) + "\r\n", encoding="utf-8")
    data = load_dataset(path)
    assert data.texts == [text] and data.labels == ["alpha"]


def test_invalid_utf8_on_stdin_is_refused_per_line_and_the_rest_answered(pkg):
    lines = b"an apple pie\n\xff\xfe broken bytes\nbananas and more\n"
    result = runner.invoke(app, ["predict", "--package", str(pkg)], input=lines)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    assert "stdin line 2: not valid UTF-8" in result.output
    labels = [line for line in result.stdout.splitlines() if line in ("alpha", "beta", "gamma")]
    assert len(labels) == 2  # lines 1 and 3 answered


# -- the disk fills up (injected ENOSPC) --------------------------------------------------------------------------


def _enospc(*_args: object, **_kwargs: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _no_temp_left(directory: Path) -> bool:
    return not [p for p in directory.iterdir() if p.name.startswith(".") and ".tmp" in p.name]


def test_disk_full_while_predict_writes_its_csv_is_one_line_naming_it(pkg, user_csv, tmp_path, monkeypatch):
    out = tmp_path / "preds.csv"
    monkeypatch.setattr(os, "fsync", _enospc)
    result = runner.invoke(app, ["predict", "--package", str(pkg), "--data", str(user_csv), "--out", str(out)])
    _one_line_exit_2(result)
    assert f"{out}: No space left on device" in result.output and not out.exists() and _no_temp_left(tmp_path)


def test_disk_full_while_personalize_writes_its_state(pkg, user_csv, tmp_path, monkeypatch):
    import edgetune.io

    out = tmp_path / "me"
    monkeypatch.setattr(edgetune.io, "fsync_tree", _enospc)
    result = runner.invoke(app, ["personalize", "--package", str(pkg), "--data", str(user_csv), "--out", str(out),
                                 "--epochs", "1", "--no-select", "--quiet"])  # fmt: skip
    _one_line_exit_2(result)
    assert "No space left on device" in result.output and str(out) in result.output and not out.exists()


def test_disk_full_in_the_temp_directory(pkg, monkeypatch):
    import device_sim.package

    monkeypatch.setattr(device_sim.package, "_copy_hashing", _enospc)
    result = runner.invoke(app, ["predict", "--package", str(pkg), "--text", "apple"])
    _one_line_exit_2(result)
    assert f"{tempfile.gettempdir()}/edgetune-package-" in result.output and "No space left" in result.output
    assert not list(Path(tempfile.gettempdir()).glob(f"edgetune-package-{os.getpid()}-*"))


def test_disk_full_while_export_writes_the_package(tiny_model_dir, tmp_path, monkeypatch):
    import edgetune.io
    from tests.packages import make_plan

    model = tiny_model_dir("bert")
    plan = tmp_path / "plan.json"
    make_plan(model).save(plan)
    out = tmp_path / "pkg"
    monkeypatch.setattr(edgetune.io, "fsync_tree", _enospc)
    result = runner.invoke(app, ["export", "--model", str(model), "--plan", str(plan), "--out", str(out),
                                 "--no-top-onnx", "--threads", "1"])  # fmt: skip
    _one_line_exit_2(result)
    assert f"{out}: No space left on device" in result.output and not out.exists() and _no_temp_left(tmp_path)


# -- signals ------------------------------------------------------------------------------------------------------


def test_an_interrupt_python_swallowed_still_stops_the_publish(tmp_path):
    """Ctrl-C raised inside a __del__ is printed and dropped by Python; the flag it set is checked before the
    rename, so the run does not replace the previous output and exit 0."""
    target = tmp_path / "out"
    target.mkdir()
    (target / "old").write_text("previous")
    request_stop(signal.SIGINT)
    try:
        with pytest.raises(Interrupted), atomic_directory(target) as tmp:
            (tmp / "new").write_text("half")
    finally:
        request_stop(0)
    assert [p.name for p in target.iterdir()] == ["old"] and _no_temp_left(tmp_path)


_SLOW_PUBLISH = """
import sys, time
from pathlib import Path
import edgetune.io
real = edgetune.io.fsync_tree
marker = Path(sys.argv[1])
def slow(path):  # reached right before the rename that would publish: wait there for the signal
    marker.write_text("x")
    time.sleep(120)
    real(path)
edgetune.io.fsync_tree = slow
sys.argv = ["edgetune", *sys.argv[2:]]
from edgetune_cli import main
main()
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_a_signal_before_publishing_exits_128_plus_it_with_one_line_and_no_leftovers(pkg, user_csv, tmp_path, signum):
    out, marker = tmp_path / "me", tmp_path / "marker"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "EDGETUNE_NO_PROGRESS": "1"}
    command = ["personalize", "--package", str(pkg), "--data", str(user_csv), "--out", str(out), "--epochs", "1",
               "--no-select", "--quiet"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_PUBLISH, str(marker), *command], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 180
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    err = err.decode()
    assert proc.returncode == 128 + signum, err
    assert "interrupted" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and _no_temp_left(tmp_path)
    assert not list(Path(tempfile.gettempdir()).glob(f"edgetune-package-{proc.pid}-*"))  # removed on the way out


def test_sigterm_during_export_keeps_the_previous_package(device_packages, tiny_model_dir, tmp_path):
    from tests.packages import make_plan

    model = tiny_model_dir("bert")
    plan = tmp_path / "plan.json"
    make_plan(model).save(plan)
    out, marker = Path(shutil.copytree(device_packages["main"], tmp_path / "pkg")), tmp_path / "marker"
    before = sorted((p.name, p.read_bytes()) for p in out.iterdir())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "EDGETUNE_NO_PROGRESS": "1"}
    command = ["export", "--model", str(model), "--plan", str(plan), "--out", str(out), "--no-top-onnx", "--threads",
               "1", "--quiet"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_PUBLISH, str(marker), *command], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err.decode()
    assert "interrupted (SIGTERM)" in err.decode() and "Traceback" not in err.decode()
    assert sorted((p.name, p.read_bytes()) for p in out.iterdir()) == before and _no_temp_left(tmp_path)


# -- runtimes -----------------------------------------------------------------------------------------------------


def test_a_pruned_dsee_state_predicts_in_the_torch_runtime(device_packages, tmp_path):
    params = {"prune_ratio": 0.5, "head_prune_ratio": 0.5}
    with Device(device_packages["main"], threads=1) as device:
        device.personalize(user_data(40, seed=3), tmp_path / "p", fast(epochs=2, tuner="dsee", tuner_params=params))
        top = device.top(tmp_path / "p")
        weights = [p for n, p in top.blocks.named_parameters() if n.endswith("weight") and p.dim() == 2]
        assert sum(int((w == 0).sum()) for w in weights) >= 0.4 * sum(w.numel() for w in weights)  # pruned
    result = runner.invoke(app, ["predict", "--package", str(device_packages["main"]), "--personal",
                                 str(tmp_path / "p"), "--runtime", "torch", "--text", "apple pie"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() in ("alpha", "beta", "gamma")


def test_both_runtimes_refuse_a_state_whose_train_cut_is_below_the_packages(device_packages, tmp_path):
    with Device(device_packages["main"], threads=1) as device:
        device.personalize(user_data(40, seed=3), tmp_path / "p", fast(epochs=1))
    path = tmp_path / "p" / "personal.json"
    m = json.loads(path.read_text())
    m["train_cut"] = 0
    m.pop("integrity")
    path.write_text(json.dumps(mf.seal(m)))
    for runtime in ("torch", "onnx"):
        result = runner.invoke(app, ["predict", "--package", str(device_packages["main"]), "--personal",
                                     str(tmp_path / "p"), "--runtime", runtime, "--text", "apple"])  # fmt: skip
        _one_line_exit_2(result)
        assert "train cut 0 is outside this package's top" in result.output
    with Device(device_packages["main"], threads=1) as device, pytest.raises(PersonalStateError):
        device.predict(["apple"], read_personal_state(tmp_path / "p"), backend="onnx")


def test_gpt2_scaled_by_inverse_layer_index_gives_the_same_logits_in_both_runtimes(tmp_path):
    from tests.conftest import build_model

    model = build_model("gpt2")
    model.config.scale_attn_by_inverse_layer_idx = True
    src = save_tiny_model(tmp_path / "src", "gpt2")
    model.save_pretrained(src)
    pkg = export_probe_package(src, tmp_path / "pkg", top_onnx=True)
    texts = [t for t, _ in synthetic_rows(8, seed=2)]
    with Device(pkg, threads=1) as device:
        torch_logits = device.predict_logits(texts, backend="torch")
        onnx_logits = device.predict_logits(texts, backend="onnx")
        assert device.package.top_spec()["hf_config"]["scale_attn_by_inverse_layer_idx"] is True
    assert np.abs(torch_logits - onnx_logits).max() < 1e-4


def test_a_reexport_from_another_directory_keeps_personal_states_valid(tiny_model_dir, device_packages, tmp_path):
    """The identity rule: backbone hash, cut, layer count, labels and the feature/top files; where the model was
    read from is not part of it."""
    moved = Path(shutil.copytree(tiny_model_dir("bert"), tmp_path / "elsewhere" / "model"))
    again = export_probe_package(moved, tmp_path / "again", top_onnx=True)
    texts = ["apple pie", "a cold beta"]
    with Device(device_packages["main"], threads=1) as device:
        device.personalize(user_data(40, seed=3), tmp_path / "p", fast(epochs=1))
        want = device.predict_logits(texts, tmp_path / "p")
    with Device(again, threads=1) as device:
        assert device.package.manifest["backbone"]["id"] != str(tiny_model_dir("bert"))
        assert np.allclose(device.predict_logits(texts, tmp_path / "p"), want, atol=1e-5)


def test_a_state_with_an_empty_file_table_does_not_belong_to_any_package(device_packages, tmp_path):
    with Device(device_packages["main"], threads=1) as device:
        device.personalize(user_data(40, seed=3), tmp_path / "p", fast(epochs=1))
    path = tmp_path / "p" / "personal.json"
    m = json.loads(path.read_text())
    m["package"]["files"] = {}
    m.pop("integrity")
    path.write_text(json.dumps(mf.seal(m)))
    with Device(device_packages["main"], threads=1) as device, pytest.raises(PersonalStateError, match="files"):
        device.load_personal(tmp_path / "p")


def test_inspect_refusal_exits_2_like_every_other(pkg):
    (pkg / "top.json").write_text("{}")
    result = runner.invoke(app, ["inspect", str(pkg)])
    assert result.exit_code == 2 and "FAILED" in result.output
    with pytest.raises(PackageError):
        Device(pkg)
