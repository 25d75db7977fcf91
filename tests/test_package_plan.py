"""A package's plan, read back into a typed object in one place (edgetune.package_plan)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from edgetune.costs import ArchSummary
from edgetune.package_plan import PackagePlan

ARCH = ArchSummary(
    num_layers=2, hidden_size=8, intermediate_size=16, num_heads=2, block_params=(100, 100),
    embedding_params=50, norm_params=0, num_labels=3,
)  # fmt: skip


def test_a_plan_without_the_optional_entries_reads_with_their_defaults() -> None:
    plan = PackagePlan.from_manifest({"plan": {"arch": ARCH.to_dict()}})
    assert plan == PackagePlan(arch=ARCH)
    assert (plan.text_column, plan.label_column, plan.tuner, dict(plan.tuner_params)) == ("text", "label", "full", {})
    assert plan.max_length is None and plan.confidence is None


def test_every_entry_is_read() -> None:
    entries = {
        "arch": ARCH.to_dict(), "text_column": "body", "label_column": "topic", "tuner": "lora",
        "tuner_params": {"r": 4}, "max_length": 64, "cut": 1, "planner": "salf",
        "planner_params": {"policy": "cheapest"}, "confidence": {"resamples": 200, "chosen": 190},
        "rows": [],  # entries no reader needs are left in the manifest
    }  # fmt: skip
    plan = PackagePlan.from_manifest({"plan": entries})
    assert plan.arch == ARCH and plan.arch.block_params == (100, 100)
    assert (plan.text_column, plan.label_column, plan.tuner, plan.tuner_params) == ("body", "topic", "lora", {"r": 4})
    assert (plan.max_length, plan.cut, plan.planner) == (64, 1, "salf")
    assert plan.planner_params == {"policy": "cheapest"} and plan.confidence == {"resamples": 200, "chosen": 190}
    assert PackagePlan.from_manifest({"plan": {**entries, "tuner_params": None}}).tuner_params == {}


def test_reading_a_plan_loads_neither_torch_nor_the_planner() -> None:
    code = (
        "import sys; from edgetune.package_plan import PackagePlan; "
        "assert not {'torch', 'edgetune.planner'} & set(sys.modules), sorted(sys.modules)"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent.parent, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_a_loaded_package_reads_its_plan_typed(device_packages) -> None:
    """The device reads the plan through one typed object, the same the manifest's plan gives."""
    from device_sim.package import load_package

    with load_package(device_packages["main"]) as package:
        assert package.plan == PackagePlan.from_manifest(package.manifest)
        assert package.plan.text_column == package.manifest["plan"].get("text_column", "text")
        assert package.plan.arch.num_layers == package.num_layers
