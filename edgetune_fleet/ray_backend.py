"""Fleet simulation on Ray: one task per user, on this machine or on an existing cluster.

:func:`run_on_ray` submits :func:`edgetune_fleet.fleet.simulate_user` for every user as a Ray task
(``threads`` CPUs each, retried if its worker dies) and hands each row back as soon as it finishes, with at most
twice as many tasks in flight as there are worker slots, so results stream and a fleet of thousands does not
sit in Ray's queue all at once. Without an address it starts a local Ray instance of ``workers x threads``
CPUs (and stops it afterwards); with one it connects to that cluster, whose nodes need edgetune (and this
code's version of it) installed.

The packages are never re-exported or re-read per user. How a worker gets them (``share``):

* ``path``: the package directories themselves (this machine, or a path every node mounts);
* ``object-store``: every file of both packages is put into Ray's object store once; a worker that lacks the
  directory writes it once into its node's temporary directory (keyed by the manifest's sha256) and loads it
  from there; ``auto`` (default) is ``path`` for a local instance, ``object-store`` with ``--ray-address``.

Each worker process opens each package once (:class:`~device_sim.device.Device`, hashes verified) and keeps it
open for every user it runs. The corpus never travels: a task carries its one user's texts.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgetune_fleet.fleet import FleetConfig, FleetError, simulate_user
from edgetune_fleet.users import SimulatedUser

INSTALL_HINT = "pip install 'edgetune[scale]' (or: pip install 'ray>=2.40')"
SHARES = ("auto", "path", "object-store")
_DEVICES: dict[tuple[str, int | None], Any] = {}  # per worker process: opened packages, by manifest sha256


def require_ray() -> Any:
    """The ``ray`` module, or a one-line :class:`FleetError` that says how to install it."""
    try:
        import ray
    except ImportError:
        raise FleetError(f"--backend ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def package_files(path: str | Path) -> dict[str, bytes]:
    """Every file of a package directory, by its path relative to the package."""
    root = Path(path)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def materialize(files: dict[str, bytes], digest: str, root: str | Path | None = None) -> Path:
    """Write a package shipped by :func:`package_files` under ``root`` (the temporary directory), once per
    node: ``<root>/edgetune-ray-packages/<digest>``, swapped in atomically."""
    from edgetune.io import atomic_directory, sha256_file

    target = Path(root or tempfile.gettempdir()) / "edgetune-ray-packages" / digest
    if (target / "manifest.json").exists() and sha256_file(target / "manifest.json") == digest:
        return target
    with atomic_directory(target) as tmp:
        for name, data in files.items():
            dest = (tmp / name).resolve()
            if not dest.is_relative_to(tmp.resolve()):
                raise FleetError(f"shipped package file {name!r} escapes the package directory")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
    return target


def _device(path: str, digest: str, shipped: list | None, threads: int | None) -> Any:
    """The worker's open Device for a package: the path if it holds that package, else the shipped copy."""
    from device_sim.device import Device
    from edgetune.io import sha256_file

    key = (digest, threads)
    if key not in _DEVICES:
        local = Path(path)
        if not ((local / "manifest.json").exists() and sha256_file(local / "manifest.json") == digest):
            if not shipped:
                raise FleetError(
                    f"{path}: not on this node ({socket.gethostname()}); run with share='object-store' "
                    "(the default with --ray-address) or a path every node mounts"
                )
            import ray

            local = materialize(ray.get(shipped[0]), digest)
        _DEVICES[key] = Device(local, threads=threads)
    return _DEVICES[key]


def _user_task(old: tuple, new: tuple, user: SimulatedUser, config: FleetConfig) -> dict[str, Any]:
    """One Ray task: one user's personalization and swaps (the packages come as ``(path, digest, [ref])``; the
    reference sits in a list so that Ray does not fetch the files for every task)."""
    old_device = _device(*old, config.threads)
    new_device = _device(*new, config.threads)
    with tempfile.TemporaryDirectory(prefix="edgetune-ray-user-") as work:
        row = simulate_user(old_device, new_device, user, Path(work), config)
    row["worker"] = {"host": socket.gethostname(), "pid": os.getpid()}
    return row


def _init_ray(ray: Any, workers: int | None, threads: int, address: str | None) -> bool:
    """Start a local Ray instance or connect to ``address``, unless Ray is up already; whether this call started it."""
    if ray.is_initialized():
        return False
    import logging

    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
    if address is None:
        ray.init(num_cpus=(workers or os.cpu_count() or 1) * threads, **options)
    else:
        try:
            ray.init(address=address, **options)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise FleetError(f"cannot connect to the Ray cluster at {address}: {err}") from None
    return True


def _package_specs(ray: Any, packages: tuple[str | Path, ...], mode: str) -> list[tuple]:
    """Each package as a task sees it, ``(path, digest, [ref] or None)``: the files go into the object store once."""
    from edgetune.io import sha256_file

    specs = []
    for path in packages:
        digest = sha256_file(Path(path) / "manifest.json")
        shipped = [ray.put(package_files(path))] if mode == "object-store" else None
        specs.append((str(Path(path).resolve()), digest, shipped))
    return specs


def _stream_users(
    ray: Any,
    task: Any,
    specs: list[tuple],
    users: list[SimulatedUser],
    config: FleetConfig,
    slots: int,
    on_row: Callable[[dict[str, Any]], None],
) -> None:
    """Keep at most ``2 x slots`` user tasks in flight and hand back each row as it finishes; a failed user stops
    the fleet with its id, and whatever still runs is cancelled."""
    queue = list(users)
    pending: dict[Any, SimulatedUser] = {}

    def submit() -> None:
        while queue and len(pending) < 2 * slots:
            user = queue.pop(0)
            pending[task.remote(specs[0], specs[1], user, config)] = user

    submit()
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                user = pending.pop(ref)
                try:
                    row = ray.get(ref)
                except ray.exceptions.RayTaskError as err:
                    cause = err.cause if getattr(err, "cause", None) is not None else err
                    raise FleetError(f"user {user.user_id}: {cause}") from None
                except ray.exceptions.RayError as err:
                    raise FleetError(f"user {user.user_id}: Ray could not run the task ({err})") from None
                on_row(row)
            submit()
    finally:
        for ref in pending:  # an error or an interrupt: nothing left running for a dead driver
            ray.cancel(ref, force=True)


def run_on_ray(
    old_package: str | Path,
    new_package: str | Path,
    users: list[SimulatedUser],
    config: FleetConfig,
    on_row: Callable[[dict[str, Any]], None],
    *,
    workers: int | None = None,
    address: str | None = None,
    share: str = "auto",
    max_retries: int = 2,
) -> dict[str, Any]:
    """Run every user as a Ray task; ``on_row`` gets each row as it finishes (in completion order). Returns
    what ran: workers, CPUs per task, the cluster's CPUs, how the packages were shared, Ray's start seconds."""
    ray = require_ray()
    if share not in SHARES:
        raise FleetError(f"unknown share {share!r}; choose one of {', '.join(SHARES)}")
    threads = config.threads or 1
    start = time.perf_counter()
    started = _init_ray(ray, workers, threads, address)
    try:
        cluster_cpus = int(ray.cluster_resources().get("CPU", 1))
        slots = workers or max(1, cluster_cpus // threads)
        mode = share if share != "auto" else ("path" if address is None else "object-store")
        specs = _package_specs(ray, (old_package, new_package), mode)
        task = ray.remote(_user_task).options(num_cpus=threads, max_retries=max_retries)
        ready_seconds = time.perf_counter() - start
        _stream_users(ray, task, specs, users, config, slots, on_row)
    finally:
        if started:
            ray.shutdown()
    return {
        "workers": slots,
        "threads": threads,
        "cluster_cpus": cluster_cpus,
        "share": mode,
        "ray_address": address,
        "ray_start_seconds": ready_seconds,
    }
