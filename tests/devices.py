"""Helpers shared by the device tests: a probe-headed package of a tiny model and users with a label swap."""

from __future__ import annotations

from pathlib import Path

from device_sim.device import Device
from device_sim.personalize import PersonalizeConfig
from edgetune.data import TextDataset
from exporters.export import ExportOptions, export_package
from tests.conftest import synthetic_rows
from tests.packages import dataset, make_plan

SWAP = {"alpha": "beta", "beta": "alpha"}  # this user files fruit under sport and the other way round


def export_derived_package(model_dir: Path, root: Path) -> tuple[Path, Path]:
    """A simulated new backbone: ``model_dir`` without its top block (``root/derived``) and its probe-headed
    package training one block (``root/new``); returns (package, derived model)."""
    from edgetune_fleet.derived import derive_backbone

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


STATE_KINDS = ["full", "head-only", "lora", "roselora", "dsee", "fala", "fala-residual", "kept_global"]


def make_state(device: Device, kind: str, out: Path) -> Path:
    """A personal state of ``kind`` (one of :data:`STATE_KINDS`) for ``device``'s package, trained for real where
    a tuner trains."""
    import torch

    from edgetune_format.personal import write_personal_state

    data = user_data(60, seed=4)
    if kind in ("full", "lora", "roselora", "dsee"):
        params = {"r": 4} if kind != "full" else None
        device.personalize(data, out, fast(epochs=3, tuner=kind, tuner_params=params))
    elif kind == "head-only":
        device.personalize(data, out, fast(epochs=3, cut=device.package.num_layers))
    elif kind.startswith("fala"):  # a personal matrix (d x d) and an old personal head, as a swap writes them
        g = torch.Generator().manual_seed(0)
        d, labels = device.package.hidden_size, len(device.labels)
        tensors = {
            "matrix.linear.weight": torch.eye(d) + 0.1 * torch.randn(d, d, generator=g),
            "matrix.linear.bias": 0.1 * torch.randn(d, generator=g),
            "head.weight": torch.randn(labels, d, generator=g),
            "head.bias": torch.randn(labels, generator=g),
        }
        form = "residual" if kind == "fala-residual" else "plain"
        if form == "residual":  # + the new global head, - the old global head (both read d features here)
            for name in ("base", "reference"):
                tensors[f"{name}.weight"] = torch.randn(labels, d, generator=g)
                tensors[f"{name}.bias"] = torch.randn(labels, generator=g)
        write_personal_state(out, tensors, device.package, train_cut=device.package.num_layers,
                             tuner={"name": "fala", "params": {"form": form}}, kind="fala")  # fmt: skip
    else:
        write_personal_state(out, {}, device.package, train_cut=device.package.cut,
                             tuner={"name": "none", "params": {}}, kind="kept_global")  # fmt: skip
    return out
