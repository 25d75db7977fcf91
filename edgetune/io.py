"""Atomic writes, content hashes, output locks and recovery after a crash.

Every artifact edgetune writes (plan, package, checkpoint, personal state,
benchmark result) goes through these helpers: data is written to a temporary
sibling, flushed to disk (every file of a directory, then the directory),
then renamed over the target, so a crash leaves the previous version or the
new one, never half of one.

A command holds :func:`output_lock` on its output while it writes: a second
run on the same output fails at once with a clear message instead of mixing
its files with the first one's. Under the lock, the temporary entries a killed
run left behind are swept (:func:`recover`), and private copies a killed
process left in the temp directory are removed by the next run
(:func:`private_tempdir`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from edgetune import strict_json
from edgetune.errors import EdgetuneError


class OutputError(EdgetuneError):
    """An output cannot be written as asked: it is an input, it holds something else, another run writes it."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived: the command stops before it publishes anything (exit 128 + the signal)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


# The signal that asked this process to stop (0: none). Set by the CLI's handler; checked before every final
# rename, so a KeyboardInterrupt that Python swallowed (raised inside a __del__) cannot let a run publish.
_stop_signal = 0


def request_stop(signum: int) -> None:
    global _stop_signal
    _stop_signal = signum


def stop_requested() -> int:
    return _stop_signal


def check_not_stopped() -> None:
    """Raise :class:`Interrupted` when a stop was asked for: called right before an output is published."""
    if _stop_signal:
        raise Interrupted(_stop_signal)


def _umask() -> int:
    # os.umask can only be read by setting it; done once per write, immediately restored
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def honour_umask(path: str | Path, directory: bool = False) -> None:
    """Give a file or directory made by mkstemp/mkdtemp (0600/0700) the mode an ordinary ``open``/``mkdir``
    would have given it under the process umask, so a shared package is readable by whom the user intends."""
    with contextlib.suppress(OSError):
        os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def honour_umask_tree(root: str | Path) -> None:
    """:func:`honour_umask` for a directory and everything in it (libraries such as safetensors write their
    files through private temporaries too); executable files keep their execute bits."""
    mask = _umask()
    for here, _dirs, files in os.walk(root):
        with contextlib.suppress(OSError):
            os.chmod(here, 0o777 & ~mask)
        for name in files:
            path = os.path.join(here, name)
            with contextlib.suppress(OSError):
                info = os.lstat(path)
                if stat.S_ISREG(info.st_mode):
                    os.chmod(path, (0o777 if info.st_mode & 0o111 else 0o666) & ~mask)


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_tree(path: Path) -> None:
    """Flush every regular file under ``path`` and every directory to disk (before a rename publishes them)."""
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                fd = os.open(os.path.join(root, name), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        fsync_dir(Path(root))


def naming(err: OSError, path: str | Path) -> OSError:
    """``err`` with ``path`` as its file name when it has none (a write or fsync on a descriptor names no file):
    the command line prints it as one line naming where the disk was full."""
    if err.filename is not None:
        return err
    named = type(err)(err.errno, err.strerror or str(err), str(path))
    named.__cause__ = err
    return named


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        honour_umask(tmp)
        check_not_stopped()
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise naming(err, path) from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, strict_json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_directory(path: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` only if the block succeeds.

    The old directory (if any) is moved aside before the new one is renamed in and
    deleted afterwards, so at every instant ``path`` is either complete-old,
    absent for the span of two renames, or complete-new.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists (pass overwrite=True to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        honour_umask_tree(tmp)
        fsync_tree(tmp)  # every file's bytes are on disk before the directory is renamed in
        check_not_stopped()
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise naming(err, path) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_files(paths: list[Path]) -> str:
    """One hash over several files (names and contents), order-independent."""
    h = hashlib.sha256()
    for p in sorted(paths, key=lambda q: q.name):
        h.update(p.name.encode())
        h.update(sha256_file(p).encode())
    return h.hexdigest()


# -- recovery after a crash -------------------------------------------------------------------------------------

# what the helpers above leave when a process dies mid-write: ``.<name>.<random>.tmp`` (a file or directory being
# written) and ``.<name>.old-<pid>`` (the previous directory, moved aside for the span of two renames)
_TEMP_ENTRY = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]{6,}\.tmp$")
_OLD_ENTRY = re.compile(r"^\.(?P<name>.+)\.old-\d+$")


def recover(directory: str | Path, names: Iterable[str] | None = None) -> list[Path]:
    """Sweep what an interrupted atomic write left in ``directory`` (only for ``names``, when given).

    A temporary entry is removed; a previous version that was moved aside is put back when the new one never
    arrived (the last good one), else removed. Call it only while holding the lock that owns these names (no
    live writer). Returns the entries removed or restored. A distributed launch's non-main processes hold no
    lock (see :func:`output_lock`) and sweep nothing.
    """
    if int(os.environ.get("RANK", "0")) != 0:
        return []
    directory = Path(directory)
    wanted = None if names is None else set(names)
    swept: list[Path] = []
    try:
        entries = sorted(directory.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return swept
    for entry in entries:
        for pattern in (_TEMP_ENTRY, _OLD_ENTRY):
            match = pattern.match(entry.name)
            if not match or (wanted is not None and match["name"] not in wanted):
                continue
            target = directory / match["name"]
            if pattern is _OLD_ENTRY and not target.exists():
                os.replace(entry, target)  # killed between the two renames: the previous version is the good one
            elif entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            swept.append(entry)
            break
    return swept


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


_STALE_UNTAGGED_S = 24 * 3600  # temp copies named before they carried their pid: removed once a day old


def sweep_temp(prefix: str, tempdir: str | Path | None = None) -> list[Path]:
    """Remove ``<prefix><pid>-*`` entries of the temp directory whose process is gone (a killed run's copies)."""
    root = Path(tempdir or tempfile.gettempdir())
    tagged = re.compile(re.escape(prefix) + r"(?P<pid>\d+)-")
    removed = []
    for entry in root.glob(f"{prefix}*"):
        match = tagged.match(entry.name)
        try:
            if match:
                stale = not pid_alive(int(match["pid"]))
            else:
                stale = time.time() - entry.lstat().st_mtime > _STALE_UNTAGGED_S
        except OSError:
            continue
        if stale:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def private_tempdir(prefix: str) -> tempfile.TemporaryDirectory:
    """A temporary directory named ``<prefix><pid>-...``, after sweeping those of processes that are gone."""
    sweep_temp(prefix)
    return tempfile.TemporaryDirectory(prefix=f"{prefix}{os.getpid()}-")


# -- output locks and ownership -----------------------------------------------------------------------------------

_held: dict[str, int] = {}
_held_guard = threading.Lock()


def lock_path(out: str | Path) -> Path:
    out = Path(out)
    return out.parent / f".{out.name}.lock"


@contextlib.contextmanager
def output_lock(out: str | Path, flag: str = "--out") -> Iterator[Path]:
    """Hold an exclusive lock on ``out`` (the file ``.<name>.lock`` next to it) for the block.

    A second process that asks for it fails at once with :class:`OutputError` naming the holder. Nested use in
    one process is allowed (the CLI and the library both lock). The lock dies with its process, so a killed
    run never blocks the next one; the lock file is removed on release. In a distributed launch (torchrun,
    ``accelerate launch``) only the main process (``RANK`` 0) writes outputs, so it alone takes the lock; the
    other processes of the same run go on without it.
    """
    if int(os.environ.get("RANK", "0")) != 0:
        yield Path(out)
        return
    check_not_in_package(out, flag)
    try:
        import fcntl
    except ImportError:  # pragma: no cover (no flock: no lock)
        yield Path(out)
        return
    out = Path(out)
    lock = lock_path(out)
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{out}: cannot create its directory ({err.strerror})") from None
    key = os.path.realpath(lock)
    with _held_guard:
        if key in _held:
            _held[key] += 1
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield out
        finally:
            with _held_guard:
                _held[key] -= 1
        return
    while True:
        try:
            # O_NOFOLLOW: a lock name planted as a link must not make us truncate and write to its target
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as err:
            why = "it is a symbolic link" if err.errno == errno.ELOOP else err.strerror
            raise OutputError(f"{out}: cannot take the lock {lock.name} ({why}); remove it and run again") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO or a device opened under the lock's name
            os.close(fd)
            raise OutputError(f"{out}: the lock {lock.name} is not a plain file; remove it and run again")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise OutputError(
                f"{out}: another edgetune run (pid {holder}) is writing it; wait for that run to finish or "
                f"choose another {flag}"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous holder removed the file between our open and our lock: take the new one
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    with _held_guard:
        _held[key] = 1
    try:
        yield out
    finally:
        with _held_guard:
            del _held[key]
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


PACKAGE_MARKER = "manifest.json"  # what makes a directory a device package (edgetune_format.manifest.MANIFEST)


def check_not_in_package(out: str | Path, flag: str = "--out") -> None:
    """Refuse an output placed inside a device package's directory: a package is exactly the files its manifest
    lists, so a file written there would make the package refused until someone removed it."""
    parent = Path(out).parent
    if (parent / PACKAGE_MARKER).is_file():
        raise OutputError(
            f"{out}: is inside {parent}, a device package (it holds {PACKAGE_MARKER}); a package holds only the "
            f"files its manifest lists, so write elsewhere (choose another {flag})"
        )


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name the same file (also through links); false when either does not exist."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_output_file(
    out: str | Path,
    inputs: Iterable[tuple[str, str | Path | None]] = (),
    owned: Callable[[Path], bool] | None = None,
    what: str = "file",
    flag: str = "--out",
) -> Path:
    """Refuse an output file that is one of the command's ``inputs`` (``(flag, path)`` pairs) or an existing
    file this command did not write (``owned`` says whether it did): never destroy a user's file."""
    out = Path(out)
    for input_flag, path in inputs:
        if path is not None and (same_file(out, path) or os.path.abspath(out) == os.path.abspath(path)):
            raise OutputError(f"{out}: is also the command's {input_flag}; refusing to overwrite an input (choose "
                              f"another {flag})")  # fmt: skip
    check_not_in_package(out, flag)
    if out.is_dir():
        raise OutputError(f"{out}: is a directory; {flag} names the {what} to write")
    if out.exists() and not (owned is not None and owned(out)):
        raise OutputError(f"{out}: exists and is not a {what} written by edgetune; refusing to overwrite it (remove "
                          f"it or choose another {flag})")  # fmt: skip
    return out


def check_output_dir(
    out: str | Path,
    inputs: Iterable[tuple[str, str | Path | None]] = (),
    markers: Iterable[str] = (),
    what: str = "output directory",
    flag: str = "--out",
) -> Path:
    """Refuse an output directory that is one of the ``inputs``, an existing file, or a non-empty directory
    holding none of the ``markers`` (the files that show this command wrote it)."""
    out = Path(out)
    for input_flag, path in inputs:
        if path is not None and (same_file(out, path) or os.path.abspath(out) == os.path.abspath(path)):
            raise OutputError(f"{out}: is also the command's {input_flag}; refusing to overwrite an input (choose "
                              f"another {flag})")  # fmt: skip
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a directory; refusing to replace it with a {what}")
    if out.is_dir() and any(out.iterdir()) and not any((out / m).exists() for m in markers):
        raise OutputError(f"{out}: directory is not empty and is not a {what} written by edgetune; refusing to "
                          f"overwrite it (choose another {flag})")  # fmt: skip
    return out


def json_with_keys(*keys: str) -> Callable[[Path], bool]:
    """An ``owned`` test for :func:`check_output_file`: a JSON object with these keys."""

    def owned(path: Path) -> bool:
        try:
            with open(path, "rb") as f:
                raw = f.read(64 << 20)
            doc = json.loads(raw)
        except (OSError, ValueError, RecursionError):
            return False
        return isinstance(doc, dict) and all(k in doc for k in keys)

    return owned
