"""benchmarks/harness.py: the machine record's shape, the RSS helpers, the lock (fast: no torch)."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import harness  # noqa: E402  benchmarks/harness.py


def test_machine_record_has_one_shape() -> None:
    start = harness.load_average()
    record = harness.machine_record(start, threads=2, note="test")
    assert set(record) == {"cpu", "cores", "threads", "platform", "python", "versions", "commit", "dirty",
                           "load_average_start", "load_average_end", "note"}  # fmt: skip
    assert record["load_average_start"] == start and len(record["load_average_end"]) == 3
    assert record["threads"] == 2 and record["cores"] == os.cpu_count()
    assert record["versions"]["python"] == record["python"]
    assert record["commit"] == "unknown" or (len(record["commit"]) == 40 and isinstance(record["dirty"], bool))


def test_versions_name_only_imported_packages() -> None:
    assert "definitely_not_imported" not in harness.versions(("definitely_not_imported",))
    assert "pytest" in harness.versions(("pytest",))


def test_git_commit_outside_a_repository(tmp_path: Path) -> None:
    assert harness.git_commit(tmp_path) == {"commit": "unknown", "dirty": None}


def test_peak_rss_grows_after_allocating_50_mb() -> None:
    before = harness.peak_rss_mb()
    block = bytearray(int((before - harness.rss_mb() + 50) * 2**20))  # 50 MB past the old peak: it must grow
    after = harness.peak_rss_mb()
    assert after >= before + 45, (before, after)
    assert harness.rss_mb() <= after
    del block


def test_sampler_and_tree_see_a_50_mb_allocation() -> None:
    with harness.PeakSampler(lambda: {"rss": harness.rss_mb(), "tree": harness.tree_rss_mb(os.getpid())}, 0.005) as s:
        base = dict(s.peak)
        block = bytearray(50 * 2**20)
        block[::4096] = b"\1" * len(block[::4096])  # touch every page
        time.sleep(0.05)
        del block
    assert s.peak["rss"] >= base["rss"] + 45
    assert s.peak["tree"] >= base["tree"] + 45


def test_status_of_a_missing_process_is_nan() -> None:
    assert harness.status_mb("VmRSS", 2**31 - 1) != harness.status_mb("VmRSS", 2**31 - 1)


def test_exclusive_yields_the_wait(tmp_path: Path) -> None:
    with harness.exclusive(None) as waited:
        assert waited == 0.0
    with harness.exclusive(tmp_path / "lock") as waited:
        assert waited >= 0.0 and (tmp_path / "lock").exists()


def test_parser_has_the_common_options() -> None:
    args = harness.parser("doc", seed=3).parse_args(["--threads", "1"])
    assert (args.threads, args.seed, args.lock, args.out) == (1, 3, None, Path("benchmarks/results"))
    assert not hasattr(harness.parser("doc").parse_args([]), "seed")


def test_hold_lock_keeps_the_lock(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    assert harness.hold_lock(None) == 0.0
    code = f"import harness, time; harness.hold_lock({str(lock)!r}); print('held', flush=True); time.sleep(10)"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=Path(harness.__file__).parent, stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "held\n"
        with open(lock, "a") as f, pytest.raises(BlockingIOError):
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        proc.kill()
        proc.wait()
