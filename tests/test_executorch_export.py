"""Export target executorch: top_train.pte, top.pte and trunk.pte (with --int8 trunk.int8.pte too) in the manifest,
verified against torch."""

import json
import shutil

import numpy as np
import pytest
import torch

from device_sim.package import load_package, verify_package
from exporters.errors import ParityError
from exporters.executorch import (
    TRUNK_INT8_RTOL,
    export_trunk_int8_program,
    export_trunk_program,
    verify_programs,
    verify_trunk_int8_program,
    verify_trunk_program,
)


def names_in(package):
    with load_package(package) as pkg:
        return [n for n, _ in pkg.top_model().named_parameters()]


def test_manifest_lists_the_programs_with_hashes_and_parity(executorch_package):
    manifest = json.loads((executorch_package / "manifest.json").read_text())
    entry = manifest["executorch"]
    assert entry["files"] == ["top_train.pte", "top.pte", "trunk.pte", "top_train_lora.pte"]
    assert entry["trunk_int8"] is None and not (executorch_package / "trunk.int8.pte").exists()  # no --int8
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


def test_the_lora_program_trains_the_adapters_norm_and_head_of_every_block(executorch_package):
    """top_train_lora.pte: peft's names, rank 8 on the family's default targets of every block of the top, the
    base weights not trained; its loss and gradients verified against the LoRA top in torch."""
    manifest = json.loads((executorch_package / "manifest.json").read_text())
    entry = manifest["executorch"]["train_lora"]
    assert entry["file"] == "top_train_lora.pte" and manifest["files"]["top_train_lora.pte"]["size"] > 0
    assert entry["tuner"]["name"] == "lora" and entry["tuner"]["params"]["r"] == 8
    assert entry["tuner"]["params"]["alpha"] == 16.0 and entry["tuner"]["params"]["dropout"] == 0.0
    names = [p["name"] for p in entry["parameters"]]
    adapters = [n for n in names if ".lora_" in n]
    with load_package(executorch_package) as pkg:
        blocks = len(pkg.top_model().blocks)
        targets = entry["tuner"]["params"]["target_modules"]
    assert len(adapters) == 2 * len(targets) * blocks
    assert {n.split(".")[1] for n in adapters} == {str(i) for i in range(blocks)}
    assert set(names) - set(adapters) == {n for n in names if n.startswith(("head.", "norm."))}
    shapes = {p["name"]: p["shape"] for p in entry["parameters"]}
    assert all(shapes[n][0] == 8 for n in adapters if ".lora_A." in n)
    assert entry["parameters_index"] - entry["gradients_index"] == len(names)
    assert max(entry["parity"]["max_abs_diff"].values()) <= 1e-5


def test_a_conv1d_family_gets_no_lora_program_and_the_manifest_says_why():
    from types import SimpleNamespace

    from exporters.executorch import ExecutorchOptions, _lora_program

    gpt2_top = SimpleNamespace(config=SimpleNamespace(model_type="gpt2"))  # refused before the top is rebuilt
    pte, entry = _lora_program(gpt2_top, [], ExecutorchOptions())
    assert pte == b"" and "Conv1D" in entry["skipped"]
    not_asked = _lora_program(gpt2_top, [], ExecutorchOptions(lora_rank=0))
    assert not_asked == (b"", {"skipped": "not asked for (lora_rank 0)"})


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


# -- trunk.int8.pte (--int8 with the executorch target) ----------------------------------------------------------


@pytest.fixture(scope="module")
def int8_package(tmp_path_factory):
    """The executorch package's tiny BERT (no dropout, cut 1 of 3, probe head), exported with --int8 as well."""
    from exporters.export import ExportOptions, export_package
    from tests.conftest import build_model, build_tokenizer
    from tests.packages import dataset, make_plan

    root = tmp_path_factory.mktemp("et-int8")
    model = build_model("bert", seed=2)
    model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.0
    model.save_pretrained(root / "model")
    build_tokenizer("bert").save_pretrained(root / "model")
    options = ExportOptions(threads=1, targets=("onnx", "executorch"), int8=True)
    plan = make_plan(root / "model", k=2)
    return export_package(root / "model", plan, root / "pkg", data=dataset(90, seed=5), options=options).path


def _relative_error(got, want, mask):
    keep = mask.astype(bool)
    return float(np.linalg.norm(got[keep] - want[keep]) / np.linalg.norm(want[keep]))


def test_the_int8_trunk_program_is_written_listed_verified_and_measured(int8_package):
    import jsonschema

    from edgetune_format import schema

    manifest = json.loads((int8_package / "manifest.json").read_text())
    entry = manifest["executorch"]
    assert entry["files"] == ["top_train.pte", "top.pte", "trunk.pte", "trunk.int8.pte", "top_train_lora.pte"]
    q = entry["trunk_int8"]
    assert q["file"] == "trunk.int8.pte" and q["precision"] == "int8" and q["delegate"] == "xnnpack"
    assert q["method"] == "forward" and (q["inputs"], q["outputs"]) == (
        entry["trunk"]["inputs"],
        entry["trunk"]["outputs"],
    )
    assert q["quantization"]["quantized_linears"] == q["quantization"]["linears"] == 6  # q, k, v, out, up, down
    assert q["quantization"]["embeddings"] == "int8 per row, weight only"
    parity = q["parity"]
    assert parity["rtol"] == TRUNK_INT8_RTOL and 0 < parity["relative_error"] <= TRUNK_INT8_RTOL
    assert 0 < parity["max_abs_diff"] and parity["relative_error"] <= parity["max_token_relative_error"]
    size = (int8_package / "trunk.int8.pte").stat().st_size
    assert manifest["files"]["trunk.int8.pte"]["size"] == q["size"] == size
    assert len(manifest["files"]["trunk.int8.pte"]["sha256"]) == 64
    assert size < (int8_package / "trunk.pte").stat().st_size and q["size_ratio"] < 1
    accuracy = q["accuracy"]  # on the exporter's validation split, against the fp32 package
    assert accuracy["num_examples"] == manifest["validation"]["num_examples"] > 0
    assert accuracy["fp32"] == manifest["validation"]["accuracy"] and accuracy["agreement"] >= 0.9
    assert abs(accuracy["delta_points"]) <= 100 * (1 - accuracy["agreement"]) + 1e-9
    assert manifest["trunk_int8"]["file"] == "trunk.int8.onnx"  # the ONNX int8 trunk as before
    assert verify_package(int8_package).problems == []
    jsonschema.Draft202012Validator(schema.load_schema("manifest")).validate(manifest)
    schema.validate(manifest, "manifest")


def test_the_int8_trunk_program_is_close_to_fp32_at_any_batch_and_length(int8_package):
    """trunk.int8.pte against the package's fp32 trunk (ONNX) on batches of other shapes than the export's: within
    the int8 tolerance, and not the fp32 program (its weights really are int8)."""
    from executorch.extension.pybindings.portable_lib import _load_for_executorch_from_buffer

    buffer = (int8_package / "trunk.int8.pte").read_bytes()  # the program reads it: keep it alive
    program = _load_for_executorch_from_buffer(buffer)
    with load_package(int8_package) as pkg:
        for texts in (["one"], ["apple juice today and tomorrow", "ok", "the goal of the match"] * 3):
            ids, mask = pkg.encode(texts)
            want = pkg.run_trunk(ids, mask)
            got = program.run_method("forward", (torch.from_numpy(ids), torch.from_numpy(mask)))[0].numpy()
            assert got.shape == want.shape
            assert 1e-5 < _relative_error(got, want, mask) <= TRUNK_INT8_RTOL


def test_an_int8_trunk_program_of_other_weights_fails_verification(int8_package, tiny_model_dir, tmp_path):
    """Another model's int8 trunk, or the right one after its torch weights changed, is refused; a tampered file
    in the package is refused by its sha256."""
    from edgetune.api import load_model
    from edgetune.modeling import SequenceClassifier
    from exporters.executorch import ExecutorchOptions

    def classifier(seed):
        backbone, encoder = load_model(tiny_model_dir("bert", seed=seed), 16)
        return SequenceClassifier(backbone, 2, ["a", "b"]).eval(), encoder

    mine, encoder = classifier(0)
    other, _ = classifier(1)
    pte, record = export_trunk_int8_program(other, 1, ExecutorchOptions(max_batch=4, max_length=16))
    assert record["quantized_linears"] > 0
    batch = encoder(["apple juice today", "ok", "the goal of the match said the team"])
    assert verify_trunk_int8_program(other, 1, pte, [batch])["relative_error"] <= TRUNK_INT8_RTOL
    with pytest.raises(ParityError, match="trunk.int8.pte: the int8 ExecuTorch trunk differs"):
        verify_trunk_int8_program(mine, 1, pte, [batch])
    with torch.no_grad():  # the program no longer is the torch trunk it was made from
        other.backbone.blocks[0].output.LayerNorm.weight.mul_(1.5)  # hidden states 50% off
    with pytest.raises(ParityError, match="relative error"):
        verify_trunk_int8_program(other, 1, pte, [batch])

    copy = shutil.copytree(int8_package, tmp_path / "pkg")
    raw = bytearray((copy / "trunk.int8.pte").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (copy / "trunk.int8.pte").write_bytes(bytes(raw))
    problems = verify_package(copy).problems
    assert any("trunk.int8.pte: sha256 does not match" in p for p in problems), problems


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_decoder_trunks_are_quantized_whole_and_left_as_they_were(family, tiny_model_dir):
    """GPT-2's Conv1D projections are quantized as the Linear layers they are; Llama's q, k, v (one input) lower
    without a partition cycle; the classifier's own modules are back afterwards."""
    from edgetune.api import load_model
    from edgetune.modeling import SequenceClassifier
    from exporters.executorch import ExecutorchOptions

    backbone, encoder = load_model(tiny_model_dir(family), 16)
    classifier = SequenceClassifier(backbone, 2, ["a", "b"]).eval()
    before = {name: type(m) for name, m in backbone.model.named_modules()}
    pte, record = export_trunk_int8_program(classifier, 1, ExecutorchOptions(max_batch=4, max_length=16))
    assert record["quantized_linears"] == record["linears"] >= 4 and record["embeddings"] == "int8 per row, weight only"
    assert {name: type(m) for name, m in backbone.model.named_modules()} == before
    batch = encoder(["apple juice today", "ok", "the goal of the match said the team"])
    assert verify_trunk_int8_program(classifier, 1, pte, [batch])["relative_error"] <= TRUNK_INT8_RTOL


def test_the_lora_program_is_the_devices_lora_candidate():
    """The exported LoRA program, the candidate the device resolves and the tuner's defaults agree (the device
    side states them without importing torch)."""
    from device_sim.backends.program import LORA_DEFAULTS
    from device_sim.settings import DEFAULT_CANDIDATES
    from edgetune.tuners.lora import LoraConfig
    from exporters.executorch import LORA_ALPHA, LORA_RANK

    tuner = LoraConfig(**next(c for c in DEFAULT_CANDIDATES if c["name"] == "lora")["tuner_params"])
    assert LORA_DEFAULTS == {"r": LoraConfig().r, "alpha": LoraConfig().alpha}
    assert (tuner.r, tuner.alpha) == (LORA_RANK, LORA_ALPHA) == (LORA_DEFAULTS["r"], LORA_DEFAULTS["alpha"])


def test_a_batch_larger_than_the_programs_call_gives_the_batchs_gradients(executorch_package):
    """The training programs take at most ``max_batch`` rows per call (their memory plan is sized for it): a
    training batch of more rows, run in calls of different widths whose gradients are summed weighted by rows,
    gives the loss and gradients of the whole batch in one torch pass."""
    from device_sim.backends.executorch_py import ProgramRunner
    from exporters.executorch import DEFAULT_TRAIN_MAX_BATCH, gradient_differences, torch_loss_and_grads

    manifest = json.loads((executorch_package / "manifest.json").read_text())
    entry = manifest["executorch"]["train"]
    assert entry["max_batch"] == manifest["executorch"]["train_lora"]["max_batch"] == DEFAULT_TRAIN_MAX_BATCH
    rng = np.random.default_rng(0)
    with load_package(executorch_package) as pkg:
        top = pkg.top_model()
    rows, width, hidden = 11, 9, top.spec["hidden_size"]
    features = rng.normal(size=(rows, width, hidden)).astype(np.float32)
    lengths = rng.integers(2, width + 1, size=rows)
    mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
    labels = rng.integers(0, top.spec["num_labels"], size=rows)
    runner = ProgramRunner(executorch_package / entry["file"], entry, entry["max_batch"])
    loss, logits = runner.run(features, mask, labels, np.arange(rows))
    names = [p["name"] for p in entry["parameters"]]
    want_loss, want_logits, want_grads = torch_loss_and_grads(top, features, mask, labels, names)
    assert abs(loss - want_loss) < 1e-5 and np.abs(logits.numpy() - want_logits).max() < 1e-5
    got = {name: g.numpy() for name, g in zip(names, runner.grads)}
    assert max(gradient_differences(got, want_grads).values()) < 1e-5
    one_call = ProgramRunner(executorch_package / entry["file"], entry, entry["max_batch"])
    one_call.run(features, mask, labels, np.arange(3))  # a batch within one call: the program's outputs as they are
    _, _, three = torch_loss_and_grads(top, features[:3], mask[:3], labels[:3], names)
    assert max(gradient_differences(dict(zip(names, (g.numpy() for g in one_call.grads))), three).values()) < 1e-5


def _kernel_calls(pte: bytes) -> list[str]:
    """The operator of every kernel call of a program's forward method, in order."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    program = deserialize_pte_binary(pte)
    plan = getattr(program, "program", program).execution_plan[0]
    names = [op.name for op in plan.operators]
    calls = [i.instr_args for chain in plan.chains for i in chain.instructions]
    return [names[c.op_index] for c in calls if hasattr(c, "op_index")]


def test_the_linear_pass_keeps_the_programs_results_with_fewer_transposes(executorch_package):
    """The training program's linear layers run as ``linear`` (the weight read transposed in place) and the
    backward's transposes of transposes are gone; the export's parity (loss, logits, every gradient within
    1e-5 of torch) held with it."""
    from executorch.exir import EdgeCompileConfig, to_edge
    from torch.export import export
    from torch.export.experimental import _export_forward_backward

    from exporters.executorch import ExecutorchOptions, _addmm_pass, _dynamic, _examples, _step_module, eager_top

    manifest = json.loads((executorch_package / "manifest.json").read_text())
    with load_package(executorch_package) as pkg:
        top = eager_top(pkg.top_model())
    passed = _kernel_calls((executorch_package / "top_train.pte").read_bytes())
    options = ExecutorchOptions(max_length=16)
    shape = (options.train_max_batch, options.max_length)
    step = _step_module(top)
    exported = export(step, _examples(top.spec["hidden_size"], top.spec["num_labels"], *shape),
                      dynamic_shapes=_dynamic(*shape, ("hidden", "mask", "labels")), strict=False)  # fmt: skip
    edge = to_edge(_export_forward_backward(exported), compile_config=EdgeCompileConfig(_check_ir_validity=False))
    plain = _kernel_calls(bytes(edge.transform([_addmm_pass()]).to_executorch().buffer))
    linears = sum(1 for p in manifest["executorch"]["train"]["parameters"] if p["name"].endswith("dense.weight") or
                  p["name"].endswith(("query.weight", "key.weight", "value.weight", "head.weight")))  # fmt: skip
    assert passed.count("aten::linear") == linears and "aten::linear" not in plain
    # every forward transpose of a weight is gone, and the backward's transposes of those transposes
    assert passed.count("aten::permute_copy") < plain.count("aten::permute_copy") - linears
    assert max(manifest["executorch"]["parity"]["max_abs_diff"].values()) <= 1e-5
