"""Building native code once and finding it again: the CMake steps, and a cache keyed by the sources.

``libedgetune_device`` (``native/``, :mod:`device_sim.native`) is built against
the ExecuTorch runtime that the installed ``executorch`` wheel ships (its
``include/`` and ``lib/``) with the documented CMake command
(:func:`cmake_build`). Without a build directory of its own, a caller finds it
in a cache directory keyed by the sources and the ExecuTorch version
(``$EDGETUNE_CACHE``, default ``~/.cache/edgetune``; :func:`given_or_cached`),
built there on first use: a changed source or another ExecuTorch gets a fresh
build. Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from edgetune.errors import EdgetuneError


class BuildError(EdgetuneError, RuntimeError):
    """Native code cannot be built (no cmake or compiler, no executorch wheel) or found."""


def executorch_prefix() -> Path:
    """The installed executorch package directory (holds ``include/``, ``lib/`` and its CMake config)."""
    spec = importlib.util.find_spec("executorch")
    if spec is None or not spec.submodule_search_locations:
        raise BuildError("the executorch package is not installed (pip install executorch); the C library needs it")
    return Path(list(spec.submodule_search_locations)[0])


def _cmake() -> str:
    found = shutil.which("cmake") or str(Path(sys.executable).parent / "cmake")
    if not Path(found).exists():
        raise BuildError("cmake not found: install it (pip install cmake, or the system package)")
    return found


def source_key(source_dir: Path, with_executorch: bool = True, extra: tuple[Path, ...] = ()) -> str:
    """Identifies what a binary is built from: the sources under ``source_dir`` and the ``extra`` files it
    builds too (and the ExecuTorch version)."""
    from importlib.metadata import version

    h = hashlib.sha256(version("executorch").encode() if with_executorch else b"")
    sources = sorted(p for p in source_dir.rglob("*") if p.is_file() and p.suffix in SOURCE_SUFFIXES)
    for path in [*sources, *(p for p in extra if p.is_file())]:
        h.update(path.name.encode() if path in extra else str(path.relative_to(source_dir)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


SOURCE_SUFFIXES = {".txt", ".cpp", ".hpp", ".h", ".c", ".inc", ".cmake"}


def cmake_build(source_dir: Path, build_dir: str | Path, artifact: str, what: str, cmake_args: list[str],
                quiet: bool = True) -> Path:  # fmt: skip
    """Configure and build ``source_dir`` in ``build_dir``; returns ``build_dir/artifact``. Raises BuildError."""
    build_dir = Path(build_dir)
    cmake = _cmake()
    commands = [
        [cmake, "-S", str(source_dir), "-B", str(build_dir), *cmake_args],
        [cmake, "--build", str(build_dir), "-j2"],
    ]
    for command in commands:
        run = subprocess.run(command, capture_output=quiet, text=True)
        if run.returncode != 0:
            tail = (run.stderr or run.stdout or "")[-2000:] if quiet else ""
            raise BuildError(f"building {what} failed: {' '.join(command)}\n{tail}")
    built = build_dir / artifact
    if not built.is_file():
        raise BuildError(f"{built}: the build finished without {what}")
    return built


def cached_build(name: str, key: str, artifact: str, build: Callable[[Path], Path]) -> Path:
    """``artifact`` of the build ``name``-``key`` in the cache directory (``$EDGETUNE_CACHE``, default
    ``~/.cache/edgetune``), built there by ``build(dir)`` on first use, atomically: a process that races
    another one either finds the complete build or moves its own into place."""
    cache = Path(os.environ.get("EDGETUNE_CACHE", Path.home() / ".cache" / "edgetune"))
    build_dir = cache / f"{name}-{key}"
    built = build_dir / artifact
    if built.is_file():
        return built
    tmp = cache / f".{name}-{key}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        build(tmp)
        if not built.is_file():  # another process may have won the race; either build is the same
            shutil.rmtree(build_dir, ignore_errors=True)
            os.replace(tmp, build_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return built


def given_or_cached(env: str, name: str, key: Callable[[], str], artifact: str, build: Callable[[Path], Path]) -> Path:
    """The file ``$env`` names (which must exist), else :func:`cached_build` (``key`` is computed only then)."""
    given = os.environ.get(env)
    if given:
        if not Path(given).is_file():
            raise BuildError(f"{env}={given}: no such file")
        return Path(given)
    return cached_build(name, key(), artifact, build)


def build_command(argv: list[str] | None, build: Callable[..., Path], cached: Callable[[], Path]) -> int:
    """``python -m ...`` of a native build: ``build(DIR)`` when a directory is given, else the cached build; prints
    the artifact's path (exit 1 with the reason when it cannot be built)."""
    args = sys.argv[1:] if argv is None else argv
    try:
        path = build(args[0], quiet=False) if args else cached()
    except BuildError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(path)
    return 0
