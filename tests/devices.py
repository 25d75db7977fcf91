"""Helpers shared by the device tests: a probe-headed package of a tiny model and users with a label swap."""

from __future__ import annotations

from pathlib import Path

from device_sim.personalize import PersonalizeConfig
from edgetune.data import TextDataset
from exporters.export import ExportOptions, export_package
from tests.conftest import synthetic_rows
from tests.packages import dataset, make_plan

SWAP = {"alpha": "beta", "beta": "alpha"}  # this user files fruit under sport and the other way round


def export_derived_package(model_dir: Path, root: Path) -> tuple[Path, Path]:
    """A simulated new backbone: ``model_dir`` without its top block (``root/derived``) and its probe-headed
    package training one block (``root/new``); returns (package, derived model)."""
    from device_sim.simulation.derived import derive_backbone

    derived = derive_backbone(model_dir, root / "derived", drop_top=1)
    options = ExportOptions(threads=1, top_onnx=False)
    export_package(derived, make_plan(derived, k=1), root / "new", data=dataset(90, seed=5), options=options)
    return root / "new", derived


def export_probe_package(model_dir: Path, out: Path, top_onnx: bool = False) -> Path:
    """A package of ``model_dir`` cut at 1 of 3 (top-2 plan), its head a logistic probe on synthetic data;
    ``top_onnx``: with ``top.onnx`` (its export is the slow part, so only the tests that read it ask)."""
    options = ExportOptions(threads=1, top_onnx=top_onnx)
    export_package(model_dir, make_plan(model_dir, k=2), out, data=dataset(90, seed=5), options=options)
    return out


def export_executorch_package(model_dir: Path, out: Path) -> Path:
    """:func:`export_probe_package` with the executorch target too (top_train.pte + top.pte)."""
    options = ExportOptions(threads=1, targets=("onnx", "executorch"))
    export_package(model_dir, make_plan(model_dir, k=2), out, data=dataset(90, seed=5), options=options)
    return out


def user_data(n: int, seed: int, swap: bool = True) -> TextDataset:
    rows = synthetic_rows(n, seed=seed)
    labels = [SWAP.get(y, y) if swap else y for _, y in rows]
    return TextDataset([t for t, _ in rows], labels, source=f"user-{seed}")


def fast(**overrides) -> PersonalizeConfig:
    """Settings that learn the tiny model's task in a fraction of a second: one configuration, as set, without
    selection or guard (the tests of those set them on)."""
    base = {"epochs": 8, "lr": 3e-3, "head_lr": 0.1, "progress": False, "select": False, "guard_fraction": 0.0}
    return PersonalizeConfig(**{**base, **overrides})
