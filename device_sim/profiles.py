"""Device profiles: what a device can spend on personalization.

A profile bounds threads, memory and time. Before any work, the cost model
(:mod:`edgetune.costs`) prices the job; a job that will not fit the
memory budget is refused with the numbers and the lowest cut that would fit,
instead of being killed by the OS halfway through.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from edgetune.costs import ArchSummary, CostConfig, TunerCost, estimate_cut
from edgetune.errors import EdgetuneError


class ProfileError(EdgetuneError, ValueError):
    """A personalization job does not fit the device profile; ``suggested_cut`` is the lowest higher cut that
    would (``None`` if none does)."""

    def __init__(self, message: str, suggested_cut: int | None = None) -> None:
        super().__init__(message)
        self.suggested_cut = suggested_cut


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    threads: int
    memory_mb: float  # budget for the personalization job (features cache + training)
    time_budget_s: float  # wall-clock budget, checked against the cost model's estimate
    gflops: float  # sustained fp32 GFLOP/s, used to estimate time

    def __post_init__(self) -> None:
        if self.threads < 1 or self.memory_mb <= 0 or self.time_budget_s <= 0 or self.gflops <= 0:
            raise ValueError(f"invalid device profile {self}")

    def to_dict(self) -> dict:
        return asdict(self)


PROFILES: dict[str, DeviceProfile] = {
    p.name: p
    for p in (
        DeviceProfile("phone-low", threads=2, memory_mb=300, time_budget_s=60, gflops=10),
        DeviceProfile("phone-high", threads=4, memory_mb=800, time_budget_s=60, gflops=40),
        DeviceProfile("edge-box", threads=8, memory_mb=4000, time_budget_s=300, gflops=150),
    )
}


def get_profile(name: str, **overrides: float) -> DeviceProfile:
    """A named profile, optionally with some fields overridden (custom profile from flags)."""
    if name not in PROFILES:
        raise ProfileError(f"unknown device profile {name!r}; choose one of {', '.join(PROFILES)}")
    fields = {k: v for k, v in overrides.items() if v is not None}
    bad = {k: v for k, v in fields.items() if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0}
    if "threads" in fields and not (isinstance(fields["threads"], int) and 1 <= fields["threads"] <= 256):
        bad["threads"] = fields["threads"]
    if bad:
        raise ProfileError(
            f"profile '{name}': {', '.join(f'{k} {v!r}' for k, v in bad.items())} out of range (budgets must be > 0, "
            "threads 1..256)"
        )
    return replace(PROFILES[name], name=name if not fields else f"{name}+custom", **fields)


def _problems(
    profile: DeviceProfile, arch: ArchSummary, cost: CostConfig, cut: int, tuner: TunerCost | None
) -> list[str]:
    estimate = estimate_cut(arch, cost, cut, tuner)
    problems = []
    if estimate.train_memory_mb > profile.memory_mb:
        problems.append(f"needs ~{estimate.train_memory_mb:.0f} MB > {profile.memory_mb:.0f} MB")
    if estimate.device_seconds > profile.time_budget_s:
        problems.append(f"needs ~{estimate.device_seconds:.0f} s > {profile.time_budget_s:.0f} s")
    return problems


def trains(cut: int, num_layers: int) -> str:
    """What training above ``cut`` trains, in words."""
    return "the head only" if cut >= num_layers else f"blocks {cut + 1}..{num_layers} + head"


def check_job(
    profile: DeviceProfile, arch: ArchSummary, cost: CostConfig, cut: int, tuner: TunerCost | None = None
) -> None:
    """Raise ProfileError if training above ``cut`` needs more memory or time than ``profile`` allows.

    ``tuner`` prices how the trained blocks are trained (full by default). The
    message gives the estimate, the budget and the lowest higher cut that would
    fit, if any (also as ``ProfileError.suggested_cut``).
    """
    cost = replace(cost, device_gflops=profile.gflops)
    problems = _problems(profile, arch, cost, cut, tuner)
    if not problems:
        return
    fitting = [k for k in range(cut + 1, arch.num_layers + 1) if not _problems(profile, arch, cost, k, tuner)]
    hint = (
        f"a higher cut fits: {fitting[0]} (train {trains(fitting[0], arch.num_layers)})"
        if fitting
        else "no cut fits; use fewer examples, a shorter max length or a larger profile"
    )
    raise ProfileError(
        f"profile '{profile.name}': training above cut {cut} " + " and ".join(problems) + f"; {hint}",
        fitting[0] if fitting else None,
    )
