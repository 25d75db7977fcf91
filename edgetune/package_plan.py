"""The plan a device package carries, read back into a typed object.

``manifest["plan"]`` is the whole ``plan.json`` the package was exported from (docs/package-format.md, "The
plan"). :meth:`PackagePlan.from_manifest` reads the entries a device and the tools around it use, with the
defaults of a plan that predates them, in one place. Torch- and planner-free: the device side reads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edgetune.costs import ArchSummary


@dataclass(frozen=True)
class PackagePlan:
    """The entries of a package's plan that are read after export."""

    arch: ArchSummary  # the sizes the device's cost model prices a job with
    text_column: str = "text"  # the column of the user's data that holds the text
    label_column: str = "label"  # ... and the label
    tuner: str = "full"  # the default tuner of a device job
    tuner_params: Mapping[str, Any] = field(default_factory=dict)
    max_length: int | None = None  # the token limit the plan was made with
    cut: int | None = None
    planner: str | None = None
    planner_params: Mapping[str, Any] = field(default_factory=dict)
    confidence: Mapping[str, int] | None = None  # {"resamples": B, "chosen": n}, where the planner resampled

    @classmethod
    def from_dict(cls, plan: Mapping[str, Any]) -> PackagePlan:
        """A plan as ``plan.json`` and the manifest hold it (entries absent from older plans take the defaults)."""
        return cls(
            arch=ArchSummary.from_dict(dict(plan["arch"])),
            text_column=plan.get("text_column", "text"),
            label_column=plan.get("label_column", "label"),
            tuner=plan.get("tuner", "full"),
            tuner_params=dict(plan.get("tuner_params") or {}),
            max_length=plan.get("max_length"),
            cut=plan.get("cut"),
            planner=plan.get("planner"),
            planner_params=dict(plan.get("planner_params") or {}),
            confidence=plan.get("confidence"),
        )

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> PackagePlan:
        """The plan of a package's (verified) ``manifest.json``."""
        return cls.from_dict(manifest["plan"])
