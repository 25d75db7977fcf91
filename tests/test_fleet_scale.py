"""Fleet simulation at scale: Ray and local backends agree per user, a killed simulation resumes, per-user cost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray  # the scale extra; the dev extra installs it, so CI runs these tests
from typer.testing import CliRunner

from edgetune.data import TextDataset
from edgetune_cli import app
from edgetune_fleet.fleet import FleetConfig, FleetError, fleet_rows, simulate_fleet
from edgetune_fleet.ray_backend import materialize, package_files
from edgetune_fleet.users import UserConfig, simulate_users
from tests.conftest import synthetic_rows, write_csv
from tests.devices import fast

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def ray_instance():
    """One local Ray instance of 2 CPUs for the whole module (starting one takes seconds)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def tiny_users(n: int = 4):
    rows = synthetic_rows(300, seed=7)
    pool = TextDataset([t for t, _ in rows], [y for _, y in rows])
    return simulate_users(pool, UserConfig(num_users=n, examples_per_user=50, seed=3, preference_fraction=0.5))


def test_ray_and_local_backends_give_the_same_rows(device_packages, tmp_path):
    old, new = device_packages["main"], device_packages["other"]
    users = tiny_users(4)
    config = FleetConfig(methods=("none", "fala", "retrain"), personalize=fast(epochs=3), threads=1)
    local = simulate_fleet(old, new, users, config, backend="local")
    streamed: list[str] = []
    on_ray = simulate_fleet(
        old, new, users, config, backend="ray", workers=2, share="object-store", out=tmp_path / "ray",
        on_user=lambda row: streamed.append(row["user"]),
    )  # fmt: skip
    assert local["complete"] and on_ray["complete"]
    assert [r["user"] for r in on_ray["users"]] == [u.user_id for u in users]  # in the users' order
    assert sorted(streamed) == sorted(u.user_id for u in users)
    assert fleet_rows(local["users"]) == fleet_rows(on_ray["users"])  # identical, timings aside
    assert on_ray["run"]["share"] == "object-store" and on_ray["run"]["workers"] == 2
    for row in on_ray["users"]:
        cost = row["cost"]
        assert cost["trunk"]["seconds"] > 0 and cost["trunk"]["backward_flops"] == 0
        assert cost["training"]["backward_flops"] == row["before"]["backward_flops"] > 0
        swaps = sum(row["after"][m]["backward_flops"] for m in ("fala", "retrain"))
        assert cost["swap"]["backward_flops"] == pytest.approx(swaps)
        parts = sum(cost[p]["seconds"] for p in ("trunk", "training", "swap", "evaluation"))
        assert parts <= cost["total_seconds"] * 1.05
        assert row["worker"]["pid"] != os.getpid()
    saved = json.loads((tmp_path / "ray" / "simulate.json").read_text())
    assert saved["complete"] and len(saved["users"]) == 4 and "cost_per_user" in saved["summary"]
    log = (tmp_path / "ray" / "simulate.jsonl").read_text().splitlines()
    assert len(log) == 5 and "identity" in json.loads(log[0])


def test_a_killed_simulation_resumes_with_the_same_results(device_packages, tmp_path):
    corpus = write_csv(tmp_path / "corpus.csv", synthetic_rows(300, seed=9))
    args = ["simulate", "--old", str(device_packages["main"]), "--new", str(device_packages["other"])]
    args += ["--data", str(corpus), "--users", "5", "--examples-per-user", "50", "--epochs", "3"]
    args += ["--method", "none", "--method", "fala", "--threads", "1", "-q"]
    reference = runner.invoke(app, [*args, "--out", str(tmp_path / "whole")])
    assert reference.exit_code == 0, reference.output

    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-m", "edgetune_cli", *args, "--out", str(out)], env=env, cwd=ROOT)
    log = out / "simulate.jsonl"
    deadline = time.monotonic() + 400  # a loaded machine may take minutes to start and finish one user
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= 2:  # the header and one finished user
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the simulation finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(log.read_text().splitlines()) - 1
    assert 1 <= done < 5
    with open(log, "a") as f:
        f.write('{"user": "user004", "bef')  # a line a kill cut short: dropped on resume

    resumed = runner.invoke(app, [*args, "--out", str(out), "--backend", "ray", "--workers", "2"])
    assert resumed.exit_code == 0, resumed.output
    assert f"resumed: {done} users were already done" in resumed.output
    whole = json.loads((tmp_path / "whole" / "simulate.json").read_text())
    again = json.loads((out / "simulate.json").read_text())
    assert again["complete"] and again["run"]["resumed_users"] == done
    assert fleet_rows(again["users"]) == fleet_rows(whole["users"])
    assert len((out / "simulate.jsonl").read_text().splitlines()) == 6

    # a log of another simulation is refused in one line; --overwrite starts over
    other = runner.invoke(app, [*args, "--out", str(out), "--seed", "1"])
    assert other.exit_code == 2 and "log of another simulation (differs in: users)" in other.output
    assert len(other.output.strip().splitlines()) == 1


def test_backend_errors_are_one_line(device_packages, tmp_path, monkeypatch):
    corpus = write_csv(tmp_path / "corpus.csv", synthetic_rows(120, seed=9))
    args = ["simulate", "--old", str(device_packages["main"]), "--new", str(device_packages["other"])]
    args += ["--data", str(corpus), "--users", "1", "--examples-per-user", "40", "--out", str(tmp_path / "o"), "-q"]
    result = runner.invoke(app, [*args, "--workers", "2"])
    assert result.exit_code == 2 and "--workers and --ray-address need --backend ray" in result.output
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the scale extra were not installed
    result = runner.invoke(app, [*args, "--backend", "ray"])
    assert result.exit_code == 2 and "pip install 'edgetune[scale]'" in result.output
    assert len(result.output.strip().splitlines()) == 1
    with pytest.raises(FleetError, match="unknown backend"):
        simulate_fleet(device_packages["main"], device_packages["other"], tiny_users(1), backend="spark")


def test_shipped_packages_are_written_once_and_stay_inside(device_packages, tmp_path):
    files = package_files(device_packages["main"])
    assert "manifest.json" in files
    digest = __import__("hashlib").sha256(files["manifest.json"]).hexdigest()
    path = materialize(files, digest, tmp_path)
    assert path == tmp_path / "edgetune-ray-packages" / digest and (path / "manifest.json").exists()
    stamp = (path / "manifest.json").stat().st_mtime_ns
    assert materialize(files, digest, tmp_path) == path and (path / "manifest.json").stat().st_mtime_ns == stamp
    with pytest.raises(FleetError, match="escapes the package directory"):
        materialize({"../evil": b"x"}, "0" * 64, tmp_path)
