"""Export target executorch: top_train.pte, top.pte and trunk.pte in the manifest, verified against torch."""

import json
import shutil

import numpy as np
import pytest
import torch

from device_sim.package import load_package, verify_package
from exporters.errors import ParityError
from exporters.executorch import export_trunk_program, verify_programs, verify_trunk_program


def names_in(package):
    with load_package(package) as pkg:
        return [n for n, _ in pkg.top_model().named_parameters()]


def test_manifest_lists_the_programs_with_hashes_and_parity(executorch_package):
    manifest = json.loads((executorch_package / "manifest.json").read_text())
    entry = manifest["executorch"]
    assert entry["files"] == ["top_train.pte", "top.pte", "trunk.pte"]
    assert sorted(entry["inference"]["tensor_inputs"]) == sorted(names_in(executorch_package))
    assert entry["trunk"]["delegate"] == "xnnpack" and entry["trunk"]["parity"]["max_abs_diff"] <= 1e-4
    top_onnx = manifest["top_onnx"]  # the target always ships the ONNX top: the backends score with it
    assert top_onnx["file"] == "top.onnx" and top_onnx["parity"]["max_abs_diff"] <= 1e-4
    assert top_onnx["tensors_as_inputs"] == names_in(executorch_package)
    for name in entry["files"]:
        assert manifest["files"][name]["size"] == (executorch_package / name).stat().st_size
        assert len(manifest["files"][name]["sha256"]) == 64
    parity = entry["parity"]["max_abs_diff"]
    assert max(parity.values()) <= 1e-5 and entry["parity"]["num_batches"] >= 3
    names = [p["name"] for p in entry["train"]["parameters"]]
    with load_package(executorch_package) as pkg:
        assert sorted(names) == sorted(n for n, _ in pkg.top_model().named_parameters())
    assert entry["attention"] == "eager" and "executorch" in manifest["producer"]


def test_a_tampered_program_is_refused(executorch_package, tmp_path):
    copy = shutil.copytree(executorch_package, tmp_path / "pkg")
    raw = bytearray((copy / "top_train.pte").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (copy / "top_train.pte").write_bytes(bytes(raw))
    problems = verify_package(copy).problems
    assert any("top_train.pte: sha256 does not match" in p for p in problems), problems


def test_verification_fails_loudly_when_the_program_differs_from_torch(executorch_package):
    manifest = json.loads((executorch_package / "manifest.json").read_text())
    names = [p["name"] for p in manifest["executorch"]["train"]["parameters"]]
    train = (executorch_package / "top_train.pte").read_bytes()
    infer = (executorch_package / "top.pte").read_bytes()
    with load_package(executorch_package) as pkg:
        top = pkg.top_model()
        ids, mask = pkg.encode(["apple juice today", "the goal of the match said the team"])
        batch = (pkg.run_trunk(ids, mask), mask, np.array([0, 1]))
        assert verify_programs(top, train, infer, names, [batch])["max_abs_diff"]["loss"] <= 1e-5
        with torch.no_grad():
            top.head.bias.add_(1e-3)  # the torch top no longer is what was exported
        with pytest.raises(ParityError, match="differs from the torch top"):
            verify_programs(top, train, infer, names, [batch])


def test_gradients_are_judged_at_the_scale_of_their_backward_pass():
    """A LayerNorm bias whose gradient is small, behind gradients of size 5: a float32 rounding difference of
    2e-5 is noise at that scale (what failed exports of real tweets), a difference of 1e-2 is not."""
    from exporters.executorch import gradient_differences

    expected = {"dense.weight": np.full((4, 4), 5.0, np.float32), "norm.bias": np.full(4, 0.01, np.float32)}
    rounding = {**expected, "norm.bias": expected["norm.bias"] + np.float32(2e-5)}
    assert max(gradient_differences(rounding, expected).values()) == pytest.approx(4e-6, rel=1e-3)
    wrong = {**expected, "norm.bias": expected["norm.bias"] + np.float32(1e-2)}
    assert gradient_differences(wrong, expected)["norm.bias"] == pytest.approx(2e-3, rel=1e-3)
    small = {"norm.bias": np.full(4, 0.01, np.float32)}  # gradients below 1: absolute differences
    assert gradient_differences({"norm.bias": small["norm.bias"] + np.float32(2e-5)}, small)["norm.bias"] > 1e-5


def test_the_trunk_program_gives_the_onnx_trunk_output_at_any_batch_and_length(executorch_package):
    """trunk.pte (XNNPACK) against the package's ONNX trunk on batches of other shapes than the export's."""
    from executorch.extension.pybindings.portable_lib import _load_for_executorch_from_buffer

    buffer = (executorch_package / "trunk.pte").read_bytes()  # the program reads it: keep it alive
    program = _load_for_executorch_from_buffer(buffer)
    with load_package(executorch_package) as pkg:
        for texts in (["one"], ["apple juice today and tomorrow", "ok", "the goal of the match"] * 3):
            ids, mask = pkg.encode(texts)
            want = pkg.run_trunk(ids, mask)
            got = program.run_method("forward", (torch.from_numpy(ids), torch.from_numpy(mask)))[0].numpy()
            keep = mask.astype(bool)
            assert got.shape == want.shape and np.abs(got[keep] - want[keep]).max() <= 1e-4


def test_top_pte_reads_its_tensors_from_its_inputs(executorch_package):
    """One top.pte serves every personal state: other tensors give other logits, the torch top's with them."""
    from executorch.extension.pybindings.portable_lib import _load_for_executorch_from_buffer

    buffer = (executorch_package / "top.pte").read_bytes()  # the program reads it: keep it alive
    program = _load_for_executorch_from_buffer(buffer)
    manifest = json.loads((executorch_package / "manifest.json").read_text())
    names = manifest["executorch"]["inference"]["tensor_inputs"]  # the input order: fed by name
    with load_package(executorch_package) as pkg:
        top = pkg.top_model().eval()
        ids, mask = pkg.encode(["apple juice today", "the goal of the match said the team"])
        feeds = (torch.from_numpy(pkg.run_trunk(ids, mask)), torch.from_numpy(mask))
        with torch.no_grad():
            top.head.weight.mul_(-1.5)  # a "personal" head
            want = top(*feeds).numpy()
        tensors = dict(top.named_parameters())
        got = program.run_method("forward", (*feeds, *(tensors[n].detach() for n in names)))[0].numpy()
    assert np.abs(got - want).max() <= 1e-5


def test_a_trunk_program_of_another_model_fails_verification(executorch_package, tiny_model_dir):
    from edgetune.api import load_model
    from edgetune.modeling import SequenceClassifier
    from exporters.executorch import ExecutorchOptions

    def classifier(seed):
        backbone, encoder = load_model(tiny_model_dir("bert", seed=seed), 16)
        return SequenceClassifier(backbone, 2, ["a", "b"]).eval(), encoder

    mine, encoder = classifier(0)
    other, _ = classifier(1)
    options = ExecutorchOptions(max_batch=4, max_length=16)
    pte = export_trunk_program(other, 1, options)
    batch = encoder(["apple juice today", "ok"])
    assert verify_trunk_program(other, 1, pte, [batch])["max_abs_diff"] <= 1e-4
    with pytest.raises(ParityError, match="trunk.pte: ExecuTorch trunk differs"):
        verify_trunk_program(mine, 1, pte, [batch])
