"""Export target ``executorch``: the package as ExecuTorch programs, for on-device training without Python.

Four programs (five with ``--int8``) are written next to the ONNX trunk:

* ``top_train.pte`` — the joint forward + backward of the trained blocks +
  head: ``forward(hidden_state, attention_mask, labels) -> (loss, logits,
  *gradients, *parameters)``. The gradients and the parameters come back in
  the order of the manifest's ``executorch.train.parameters`` (the program's
  ``__et_training_fqn_forward`` method says the same); the parameter outputs
  alias the runtime's live weights, so an optimizer that writes into them
  trains the program. Built with ``torch.export.export`` ->
  ``torch.export.experimental._export_forward_backward`` ->
  ``executorch.exir.to_edge`` (IR validity check off: the joint graph holds
  backward ops outside the core ATen set) -> ``to_executorch()``.
* ``top_train_lora.pte`` — the same joint program for the device's LoRA
  candidate: rank-8 adapters (alpha 16, peft's names and initialization, A
  drawn from a fixed seed at export and baked in as the program's starting
  weights) on the family's default targets in every block, trained with the
  final norm and the head; the base weights are the program's constants
  (:func:`lora_training_top`). Not written for a head-only plan or a family
  whose projections are ``Conv1D`` (the manifest's ``train_lora`` says why).
* ``top.pte`` — inference only: ``forward(hidden_state, attention_mask,
  *tensors) -> logits``, the top's tensors as **inputs** (as ``top.onnx``:
  one program serves the global top and every personal state; the device
  feeds the package's tensors with the state applied).
* ``trunk.pte`` — the trunk (embeddings + blocks 1..cut):
  ``forward(input_ids, attention_mask) -> hidden_state``, lowered to the
  XNNPACK delegate (``to_edge_transform_and_lower`` with
  ``XnnpackPartitioner``), so a device runs the whole job on ExecuTorch alone
  (``libedgetune_device``). It is checked against the torch trunk on the
  verification texts, over real tokens, at the ONNX trunk's tolerance.
* ``trunk.int8.pte`` (with ``--int8``) — the same trunk, int8: quantized with
  PT2E (``prepare_pt2e``/``convert_pt2e``, ExecuTorch's ``XNNPACKQuantizer``:
  every Linear, GPT-2's ``Conv1D`` included, dynamic int8, weights per output
  channel, activations at run time) and the token embedding table int8 per
  row (weight only, dequantized by a gather of its scales), then lowered to
  XNNPACK like ``trunk.pte``. It
  is checked against the fp32 torch trunk on the same batches by the
  relative error of the hidden states (:data:`TRUNK_INT8_RTOL`), and its
  predictions' agreement with the fp32 package is measured on validation data.

The target also writes the package's ONNX top (``top.onnx``, the tensors as
graph inputs, :func:`exporters.onnx_trunk.export_top_onnx`): a torch-free
device scores tops and predicts with it, whichever backend trained.

Choices that the spike of issue 17 measured:

* attention is exported **eager**, not SDPA: the flash-attention backward has
  no out-variant kernel and ``to_executorch`` refuses it;
* an edge pass rewrites ``addmm`` into ``mm`` + ``add``: the pip runtime's
  portable ``addmm`` is ~9x slower than its optimized ``mm``;
* dropout is off (the top is exported in eval mode): the runtime draws no
  random numbers, so a device run is repeatable and equals eager torch with
  dropout off;
* batch (1..``max_batch``) and sequence (2..``max_length``) are dynamic;
  memory is planned for the upper bounds.

Both programs are checked before the package is sealed, on real trunk output
(the exporter's verification texts through the ONNX trunk): the loss, the
logits and every gradient of ``top_train.pte`` (run by ExecuTorch's Python
bindings) against the torch top, and the logits of ``top.pte``. A difference
above ``atol`` (default 1e-5; relative to the tensor's scale when that is
above 1, and for a gradient to the largest gradient of its batch, the scale
of the backward pass's rounding) fails the export with a :class:`ParityError`
naming the tensor.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from exporters.errors import ExportError, ParityError

if TYPE_CHECKING:
    import torch

    from edgetune.modeling import SequenceClassifier, TopModel

TRAIN_FILE = "top_train.pte"
INFER_FILE = "top.pte"
TRUNK_FILE = "trunk.pte"
TRUNK_ATOL = 1e-4  # the ONNX trunk's tolerance (exporters.options.DEFAULT_ATOL): the same computation, re-ordered
TRUNK_INT8_FILE = "trunk.int8.pte"
# trunk.int8.pte is judged by the relative error of its hidden states, ||int8 - fp32|| / ||fp32|| over the real
# tokens of a batch (the worst batch counts), not by an absolute difference: int8 rounds every weight to 1/127 of
# its channel's largest one and every Linear input to 1/127 of the largest value of its row, about 1% of error
# per matrix product, which the blocks compound (all-MiniLM-L6-v2 cut at 4: 3.6%, worst token 7.3%, max abs
# diff 0.46 on values up to 10.5; an fp32 tolerance of 1e-4 would refuse every int8 trunk). 10% leaves about 3x
# that margin for deeper cuts and other models while a trunk of other weights (another model, a wrong seed, a
# stale program), whose hidden states are unrelated to the reference, is off by ~100% (sqrt(2) for independent
# states of equal scale).
TRUNK_INT8_RTOL = 0.1
LORA_TRAIN_FILE = "top_train_lora.pte"
# The device's LoRA candidate (device_sim.settings.DEFAULT_CANDIDATES: r 8, LoraConfig's alpha 16): the program
# bakes in its adapters' starting values, drawn once at export from this seed.
LORA_RANK, LORA_ALPHA, LORA_SEED = 8, 16.0, 0
TRAIN_METHOD = "forward"
GRADIENTS_INDEX = "__et_training_gradients_index_forward"
PARAMETERS_INDEX = "__et_training_parameters_index_forward"
FQN_METHOD = "__et_training_fqn_forward"
DEFAULT_ATOL = 1e-5
DEFAULT_MAX_BATCH = 16
# Rows per call of the training programs: a training batch of more rows is run in calls of at most this many and
# their gradients summed (weighted by rows), so the program's memory plan is sized for 4 rows, not the batch: 41 MB
# instead of 126 MB for a MiniLM block at 128 tokens, at about the same step time (docs/device-runtime.md).
DEFAULT_TRAIN_MAX_BATCH = 4
MIN_SEQUENCE = 2  # torch.export specializes a dimension of size 1


@dataclass
class ExecutorchOptions:
    """Shapes the programs accept and how close they must be to torch."""

    max_batch: int = DEFAULT_MAX_BATCH
    max_length: int = 128
    atol: float = DEFAULT_ATOL
    lora_rank: int = LORA_RANK  # 0: no LoRA training program
    train_max_batch: int = DEFAULT_TRAIN_MAX_BATCH  # rows per call of the training programs (>= 2)


def eager_top(top: TopModel) -> TopModel:
    """A copy of ``top`` whose blocks use eager attention (same weights, eval mode, no dropout).

    Hugging Face picks the attention class when a block is built, so the top is rebuilt from its spec with
    ``attn_implementation="eager"`` and the weights are copied in.
    """
    from edgetune.modeling import TopModel

    spec = copy.deepcopy(top.spec)
    spec["hf_config"]["_attn_implementation_internal"] = "eager"
    eager = TopModel.from_spec(spec, native=False)
    missing, unexpected = eager.load_state_dict(top.state_dict(), strict=False)
    if [k for k in missing if not k.startswith("rotary.")] or unexpected:
        raise ExportError(f"eager top does not take the top's weights (missing {missing}, unexpected {unexpected})")
    return eager.eval().requires_grad_(True)


def _step_module(top: TopModel) -> torch.nn.Module:
    import torch

    class TrainStep(torch.nn.Module):
        """Loss (mean cross-entropy) and logits of the top: what the joint graph differentiates."""

        def __init__(self, top: TopModel) -> None:
            super().__init__()
            self.top = top

        def forward(
            self, hidden: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor]:
            logits = self.top(hidden, mask)
            return torch.nn.functional.cross_entropy(logits, labels), logits.detach()

    return TrainStep(top)


def _addmm_pass() -> Any:
    from executorch.exir.dialects._ops import ops as exir_ops
    from executorch.exir.pass_base import ExportPass

    class AddmmToMmAdd(ExportPass):
        """``addmm(bias, x, w)`` -> ``add(mm(x, w), bias)`` (beta = alpha = 1, as linear layers emit it)."""

        def call_operator(self, op, args, kwargs, meta):  # noqa: ANN001, ANN201 (ExportPass's signature)
            if op != exir_ops.edge.aten.addmm.default or kwargs.get("beta", 1) != 1 or kwargs.get("alpha", 1) != 1:
                return super().call_operator(op, args, kwargs, meta)
            bias, x, w = args[:3]
            mm = super().call_operator(exir_ops.edge.aten.mm.default, (x, w), {}, meta)
            return super().call_operator(exir_ops.edge.aten.add.Tensor, (mm, bias), {}, meta)

    return AddmmToMmAdd()


def _linear_pass(graph_module: Any) -> Any:
    """Two rewrites that save the runtime's ``permute_copy`` (a quarter of ``top_train.pte``'s kernel time, an
    element-by-element copy) without changing a result: ``permute_copy(permute_copy(x, p), q)`` that composes to
    the identity (the backward's transpose of a weight's transpose) -> ``x``; ``mm(x, permute_copy(w, [1, 0]))``
    and ``addmm(b, x, permute_copy(w, [1, 0]))`` (a linear layer as the joint graph decomposes it) ->
    ``linear(x, w[, b])``, whose optimized kernel reads ``w`` transposed in place."""
    from executorch.exir.dialects._ops import ops as exir_ops
    from torch.fx import Node
    from torch.fx.passes.infra.pass_base import PassResult

    ops = exir_ops.edge.aten
    graph, changed = graph_module.graph, False

    def is_permute(node: Any) -> bool:
        return isinstance(node, Node) and node.target == ops.permute_copy.default

    for node in list(graph.nodes):
        if is_permute(node) and is_permute(node.args[0]) and all(u.op != "output" for u in node.users):
            inner, outer = list(node.args[0].args[1]), list(node.args[1])
            if [inner[j] for j in outer] == list(range(len(outer))):
                node.replace_all_uses_with(node.args[0].args[0])
                graph.erase_node(node)
                changed = True
    graph.eliminate_dead_code()
    for node in list(graph.nodes):
        if node.target == ops.mm.default:
            x, weight_t, bias = node.args[0], node.args[1], None
        elif node.target == ops.addmm.default and node.kwargs.get("beta", 1) == 1 and node.kwargs.get("alpha", 1) == 1:
            bias, x, weight_t = node.args[:3]
        else:
            continue
        if not is_permute(weight_t) or list(weight_t.args[1]) != [1, 0]:
            continue
        with graph.inserting_before(node):
            args = (x, weight_t.args[0]) if bias is None else (x, weight_t.args[0], bias)
            linear = graph.call_function(ops.linear.default, args)
        linear.meta = dict(node.meta)
        node.replace_all_uses_with(linear)
        graph.erase_node(node)
        changed = True
    graph.eliminate_dead_code()
    graph_module.recompile()
    return PassResult(graph_module, changed)


def _examples(hidden_size: int, num_labels: int, max_batch: int, max_length: int) -> tuple[Any, ...]:
    import torch

    b, s = min(4, max_batch), max(MIN_SEQUENCE + 1, min(8, max_length))
    hidden = torch.randn(b, s, hidden_size)
    mask = torch.ones(b, s, dtype=torch.int64)
    mask[0, s // 2 :] = 0
    labels = torch.arange(b, dtype=torch.int64) % num_labels
    return hidden, mask, labels


def _dynamic(max_batch: int, max_length: int, names: Sequence[str]) -> dict[str, dict[int, Any]]:
    from torch.export import Dim

    batch = Dim("batch", min=1, max=max_batch)
    seq = Dim("sequence", min=MIN_SEQUENCE, max=max_length)
    shapes: dict[str, dict[int, Any]] = {names[0]: {0: batch, 1: seq}, names[1]: {0: batch, 1: seq}}
    if len(names) > 2:
        shapes[names[2]] = {0: batch}
    return shapes


def _lower(exported: Any) -> bytes:
    from executorch.exir import EdgeCompileConfig, to_edge

    edge = to_edge(exported, compile_config=EdgeCompileConfig(_check_ir_validity=False))
    edge = edge.transform([_linear_pass, _addmm_pass()])
    return bytes(edge.to_executorch().buffer)


def export_training_program(top: TopModel, options: ExecutorchOptions) -> tuple[bytes, list[str]]:
    """``top_train.pte`` bytes and the trained tensors' names (the top's state-dict names), in program order."""
    return _export_joint(eager_top(top), options)


def _export_joint(eager: TopModel, options: ExecutorchOptions) -> tuple[bytes, list[str]]:
    """A training program of ``eager`` (a top in eval mode): the gradients of the tensors that require grad (the
    others are the program's constants); returns its bytes and those tensors' names in program order."""
    from torch.export import export
    from torch.export.experimental import _export_forward_backward
    from torch.export.graph_signature import OutputKind

    step = _step_module(eager)
    shape = (options.train_max_batch, options.max_length)
    examples = _examples(eager.spec["hidden_size"], eager.spec["num_labels"], *shape)
    exported = export(step, examples, dynamic_shapes=_dynamic(*shape, ("hidden", "mask", "labels")), strict=False)
    joint = _export_forward_backward(exported)
    specs = joint.graph_signature.output_specs
    names = [str(s.target).removeprefix("top.") for s in specs if s.kind == OutputKind.GRADIENT_TO_PARAMETER]
    return _lower(joint), names


def lora_training_top(top: TopModel, rank: int, alpha: float) -> tuple[TopModel, dict[str, Any]]:
    """The eager top with LoRA adapters on its family's default targets in every block (dropout off, as the
    programs are exported), ``A`` drawn Kaiming-uniform from torch's generator seeded :data:`LORA_SEED` and ``B``
    zero (peft's initialization); only the adapters, the final norm and the head require grad. Returns the top
    and the tuner record ``{"name": "lora", "params": ...}`` of the state a run of it writes. Refused
    (:class:`ExportError`) for families whose projections are ``Conv1D`` (the device library folds LoRA into
    (out, in) matrices only) and for a top without blocks."""
    import torch

    from edgetune.families import family_for
    from edgetune.tuners.lora import default_target_modules
    from edgetune.tuners.lora import native as lora_native

    model_type = top.config.model_type
    if family_for(model_type).conv1d_projections:
        raise ExportError(f"{LORA_TRAIN_FILE}: {model_type}'s Conv1D projections are not adapted on the device")
    eager = eager_top(top)
    if not len(eager.blocks):
        raise ExportError(f"{LORA_TRAIN_FILE}: the top has no block to adapt (a head-only plan)")
    targets = default_target_modules(model_type)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(LORA_SEED)
        wrapped = lora_native.inject(eager.blocks, targets, list(range(len(eager.blocks))), rank, alpha, 0.0)
    if not wrapped:
        raise ExportError(f"{LORA_TRAIN_FILE}: no module of the top's blocks matches the LoRA targets {targets}")
    for name, p in eager.named_parameters():
        p.requires_grad_("lora_" in name or name.startswith(("head.", "norm.")))
    params = {"r": rank, "alpha": alpha, "dropout": 0.0, "target_modules": targets, "layers": None}
    return eager.eval(), {"name": "lora", "params": params}


def export_inference_program(top: TopModel, options: ExecutorchOptions) -> bytes:
    """``top.pte`` bytes: ``forward(hidden_state, attention_mask, *tensors) -> logits``, the tensors in the order
    of ``top.named_parameters()`` (the names of ``top.safetensors``)."""
    import torch
    from torch.export import export

    eager = eager_top(top)
    names = names_in_order(eager)
    if names != names_in_order(top):
        raise ExportError("the eager top's tensors are not the top's, in order")

    class TensorsAsInputs(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.top = eager

        def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor, tensors: list[torch.Tensor]) -> Any:
            return torch.func.functional_call(self.top, dict(zip(names, tensors)), (hidden, attention_mask))

    hidden, mask, _ = _examples(top.spec["hidden_size"], top.spec["num_labels"], options.max_batch, options.max_length)
    tensors = [p.detach().clone() for p in eager.parameters()]
    shapes = {
        **_dynamic(options.max_batch, options.max_length, ("hidden", "attention_mask")),
        "tensors": [None] * len(tensors),
    }
    with torch.no_grad():
        exported = export(TensorsAsInputs(), (hidden, mask, tensors), dynamic_shapes=shapes, strict=False)
    return _lower(exported)


def names_in_order(top: TopModel) -> list[str]:
    """The names of ``top.pte``'s tensor inputs, in input order (``top.safetensors``'s names)."""
    return [name for name, _ in top.named_parameters()]


def _trunk_module(classifier: SequenceClassifier, cut: int) -> torch.nn.Module:
    import torch

    class Trunk(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.classifier = classifier

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.classifier.trunk_forward(input_ids, attention_mask, cut)

    return Trunk()


def _trunk_examples(options: ExecutorchOptions) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    b, s = min(4, options.max_batch), max(MIN_SEQUENCE + 1, min(8, options.max_length))
    ids = torch.arange(1, b * s + 1, dtype=torch.int64).reshape(b, s) % 100 + 1
    mask = torch.ones(b, s, dtype=torch.int64)
    mask[0, s // 2 :] = 0
    return ids, mask


def _lower_to_xnnpack(exported: Any) -> Any:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower

    return to_edge_transform_and_lower(
        exported, partitioner=[XnnpackPartitioner()], compile_config=EdgeCompileConfig(_check_ir_validity=False)
    )


def export_trunk_program(classifier: SequenceClassifier, cut: int, options: ExecutorchOptions) -> bytes:
    """``trunk.pte`` bytes: ``forward(input_ids, attention_mask) -> hidden_state``, lowered to XNNPACK."""
    import torch
    from torch.export import export

    examples = _trunk_examples(options)
    classifier.eval()
    with torch.no_grad():
        exported = export(
            _trunk_module(classifier, cut),
            examples,
            dynamic_shapes=_dynamic(options.max_batch, options.max_length, ("input_ids", "attention_mask")),
            strict=False,
        )
    return bytes(_lower_to_xnnpack(exported).to_executorch().buffer)


def _int8_embedding(embedding: torch.nn.Embedding) -> torch.nn.Module:
    """``embedding`` with its table int8, one symmetric scale per row (weight only): ``table[ids] * scale[ids]``.

    Both lookups are plain ``aten.embedding`` (the scales a ``(rows, 1)`` table, so no reshape: XNNPACK, which
    would take an ``unsqueeze``, reshapes one dynamic dimension at most); they run on the runtime's portable
    kernels, which every ExecuTorch build has, where ``quantized_decomposed::embedding_byte`` would need the
    quantized kernel library."""
    import torch

    class Int8Embedding(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            weight = embedding.weight.detach().float()
            scale = (weight.abs().amax(dim=1) / 127).clamp(min=1e-12)
            self.register_buffer("table", torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8))
            self.register_buffer("scale", scale[:, None].contiguous())

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            f = torch.nn.functional
            return f.embedding(input_ids, self.table).to(torch.float32) * f.embedding(input_ids, self.scale)

    return Int8Embedding()


def _as_linear(conv1d: torch.nn.Module) -> torch.nn.Linear:
    """GPT-2's ``Conv1D`` (``x @ weight + bias``, weight stored (in, out)) as the ``nn.Linear`` it is: the quantizer
    annotates ``linear`` alone."""
    import torch

    weight = conv1d.weight.detach()
    linear = torch.nn.Linear(weight.shape[0], weight.shape[1], bias=conv1d.bias is not None)
    with torch.no_grad():
        linear.weight.copy_(weight.t())
        if conv1d.bias is not None:
            linear.bias.copy_(conv1d.bias.detach())
    return linear.eval()


@contextlib.contextmanager
def _int8_ready(classifier: SequenceClassifier) -> Iterator[bool]:
    """The classifier as the quantizer needs it, while the block runs (its own modules put back after): the token
    embedding table int8 (a table that is not a plain ``nn.Embedding`` stays fp32) and ``Conv1D`` projections
    as ``nn.Linear``. Yields whether the embedding table is int8."""
    import torch

    model = classifier.backbone.model
    swapped: list[tuple[torch.nn.Module, str, torch.nn.Module]] = []
    original = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    plain = type(original) is torch.nn.Embedding and original.max_norm is None
    try:
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                weight = getattr(child, "weight", None)
                if type(child).__name__ == "Conv1D" and isinstance(weight, torch.Tensor) and weight.dim() == 2:
                    setattr(parent, name, _as_linear(child))
                    swapped.append((parent, name, child))
        if plain:
            model.set_input_embeddings(_int8_embedding(original))
        yield plain
    finally:
        if plain:
            model.set_input_embeddings(original)
        for parent, name, child in reversed(swapped):
            setattr(parent, name, child)


def _outside_delegates(edge: Any) -> list[str]:
    """The operators an edge program runs on the runtime's kernels (not in an XNNPACK delegate)."""
    graph = edge.exported_program().graph_module.graph
    return sorted({str(n.target) for n in graph.nodes if n.op == "call_function"})


def export_trunk_int8_program(
    classifier: SequenceClassifier, cut: int, options: ExecutorchOptions
) -> tuple[bytes, dict[str, Any]]:
    """``trunk.int8.pte`` bytes (the interface of ``trunk.pte``) and how it was quantized.

    PT2E: the trunk is exported, its Linear layers annotated by ``XNNPACKQuantizer`` (dynamic int8, weights
    symmetric per output channel), observed once on example ids, converted and exported again, then lowered to
    XNNPACK, which runs each quantized Linear as one integer kernel. The token embedding table is int8 per row.
    Linear layers that read the same input (q, k, v) get one dynamic quantization chain each
    (``DuplicateDynamicQuantChainPass``, as ExecuTorch's own Llama export does): with a shared one the XNNPACK
    partitioner of executorch 1.5 can group nodes into partitions that depend on each other ("Invalid partition,
    found dependency cycles", Llama's blocks).
    Refused (:class:`ExportError`) when no Linear was quantized, or when a quantized operator is left outside the
    delegate: the device library links the XNNPACK delegate and the optimized kernels, not the quantized ones.
    """
    import torch
    from executorch.backends.transforms.duplicate_dynamic_quant_chain import DuplicateDynamicQuantChainPass
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torch.export import export
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    examples = _trunk_examples(options)
    shapes = _dynamic(options.max_batch, options.max_length, ("input_ids", "attention_mask"))
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True))
    classifier.eval()
    with torch.no_grad(), _int8_ready(classifier) as int8_embeddings:
        graph = export(_trunk_module(classifier, cut), examples, dynamic_shapes=shapes, strict=False).module()
        prepared = prepare_pt2e(graph, quantizer)
        prepared(*examples)  # the weights' observers see them once (activations are quantized at run time)
        converted = convert_pt2e(prepared)
        DuplicateDynamicQuantChainPass()(converted)  # one dynamic quant chain per Linear (see the docstring)
        linears = [n for n in converted.graph.nodes if n.op == "call_function" and "linear" in str(n.target)]
        quantized = sum(1 for n in linears if "dequantize" in str(getattr(n.args[1], "target", "")))
        exported = export(converted, examples, dynamic_shapes=shapes, strict=False)
    if not quantized:
        raise ExportError(f"{TRUNK_INT8_FILE}: the quantizer found no Linear layer to quantize in the trunk")
    edge = _lower_to_xnnpack(exported)
    left = [op for op in _outside_delegates(edge) if "quantiz" in op or "choose_qparams" in op]
    if left:
        raise ExportError(
            f"{TRUNK_INT8_FILE}: quantized operators outside the XNNPACK delegate ({', '.join(left)}); the device "
            "library has no kernels for them"
        )
    record = {
        "method": "pt2e (torchao prepare_pt2e/convert_pt2e) with ExecuTorch's XNNPACKQuantizer",
        "linear": "int8 dynamic: weights symmetric per output channel, activations quantized at run time",
        "quantized_linears": quantized,
        "linears": len(linears),
        "embeddings": "int8 per row, weight only" if int8_embeddings else "fp32",
    }
    return bytes(edge.to_executorch().buffer), record


def verify_trunk_program(
    classifier: SequenceClassifier,
    cut: int,
    trunk_pte: bytes,
    batches: Sequence[tuple[np.ndarray, np.ndarray]],
    atol: float = TRUNK_ATOL,
) -> dict[str, Any]:
    """Run ``trunk.pte`` in ExecuTorch's Python bindings on real ``(input_ids, attention_mask)`` batches and compare
    with ``classifier.trunk_forward`` over real tokens; raises :class:`ParityError` above ``atol``."""
    worst = 0.0
    for got, want, keep in _trunk_outputs(TRUNK_FILE, trunk_pte, classifier, cut, batches):
        if got.shape != want.shape:
            worst = float("inf")
            break
        if keep.any():
            worst = max(worst, _diff(got[keep], want[keep], 1.0) if np.isfinite(got[keep]).all() else float("inf"))
    if not worst <= atol:
        raise ParityError(
            f"{TRUNK_FILE}: ExecuTorch trunk differs from the torch trunk by max abs diff {worst:.3g} "
            f"(tolerance {atol:g}); the export is not usable",
            worst,
        )
    return {"atol": atol, "max_abs_diff": worst, "batch_shapes": [list(i.shape) for i, _ in batches]}


def _load_program(name: str, pte: bytes) -> Any:
    """ExecuTorch's Python runtime over ``pte`` (the caller keeps the bytes alive: the program reads them)."""
    from executorch.extension.pybindings.portable_lib import _load_for_executorch_from_buffer

    try:
        return _load_for_executorch_from_buffer(pte)
    except Exception as err:  # noqa: BLE001 (the bindings raise RuntimeError or ValueError on a bad program)
        message = f"{name}: ExecuTorch cannot load the program ({err}); the export is not usable"
        raise ParityError(message, float("inf")) from None


def _trunk_outputs(
    name: str,
    trunk_pte: bytes,
    classifier: SequenceClassifier,
    cut: int,
    batches: Sequence[tuple[np.ndarray, np.ndarray]],
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(program output, torch trunk output, real-token mask)`` per batch: a trunk program run in ExecuTorch's
    Python bindings beside ``classifier.trunk_forward``; a program that cannot be loaded or run is a ParityError."""
    import torch

    program = _load_program(name, trunk_pte)
    for ids, mask in batches:
        feeds = (torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(mask.astype(np.int64)))
        with torch.no_grad():
            want = classifier.trunk_forward(*feeds, cut).float().numpy()
        try:
            got = program.run_method("forward", feeds)[0].numpy()
        except Exception as err:  # noqa: BLE001 (the bindings raise RuntimeError on a failed method)
            raise ParityError(f"{name}: the program fails on a batch of shape {list(ids.shape)} ({err})",
                              float("inf")) from None  # fmt: skip
        yield got, want, mask.astype(bool)


def verify_trunk_int8_program(
    classifier: SequenceClassifier,
    cut: int,
    trunk_pte: bytes,
    batches: Sequence[tuple[np.ndarray, np.ndarray]],
    rtol: float = TRUNK_INT8_RTOL,
) -> dict[str, Any]:
    """Run ``trunk.int8.pte`` in ExecuTorch's Python bindings on real ``(input_ids, attention_mask)`` batches and
    compare with the fp32 ``classifier.trunk_forward`` over real tokens: the relative error
    ``||int8 - fp32|| / ||fp32||`` of each batch's hidden states (see :data:`TRUNK_INT8_RTOL`); raises
    :class:`ParityError` when the worst batch is above ``rtol``, or when the program cannot be loaded or run."""
    worst, worst_abs, worst_token = 0.0, 0.0, 0.0
    for got, want, keep in _trunk_outputs(TRUNK_INT8_FILE, trunk_pte, classifier, cut, batches):
        if got.shape != want.shape or not np.isfinite(got[keep]).all():
            worst = worst_abs = worst_token = float("inf")
            break
        if not keep.any():
            continue
        reference = want[keep].astype(np.float64)
        error = got[keep].astype(np.float64) - reference
        norms = np.linalg.norm(reference, axis=-1)
        worst = max(worst, float(np.linalg.norm(error) / max(float(np.linalg.norm(reference)), 1e-12)))
        worst_abs = max(worst_abs, float(np.abs(error).max()))
        worst_token = max(worst_token, float((np.linalg.norm(error, axis=-1) / np.maximum(norms, 1e-12)).max()))
    if not worst <= rtol:
        raise ParityError(
            f"{TRUNK_INT8_FILE}: the int8 ExecuTorch trunk differs from the fp32 torch trunk by a relative error "
            f"of {worst:.3g} (tolerance {rtol:g}); the export is not usable",
            worst,
        )
    return {
        "metric": "relative error ||int8 - fp32|| / ||fp32|| of the hidden states over real tokens, worst batch",
        "rtol": rtol,
        "relative_error": worst,
        "max_abs_diff": worst_abs,
        "max_token_relative_error": worst_token,
        "batch_shapes": [list(i.shape) for i, _ in batches],
    }


def trunk_program_fn(
    trunk_pte: bytes, pad_id: int, name: str = TRUNK_INT8_FILE
) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """``(ids, mask) -> hidden_state`` through a trunk program (a batch narrower than the programs' shortest
    sequence is padded to it); the closure keeps ``trunk_pte`` alive."""
    import torch

    program = _load_program(name, trunk_pte)

    def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        width = ids.shape[1]
        if width < MIN_SEQUENCE:
            ids = np.pad(ids, ((0, 0), (0, MIN_SEQUENCE - width)), constant_values=pad_id)
            mask = np.pad(mask, ((0, 0), (0, MIN_SEQUENCE - width)))
        feeds = (torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(mask.astype(np.int64)))
        _ = trunk_pte  # the program reads these bytes
        return program.run_method("forward", feeds)[0].numpy()[:, :width]

    return run


def _diff(a: Any, b: Any, scale: float | None = None) -> float:
    """Max abs difference, relative to ``scale`` (default: the reference's own scale when that exceeds 1)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return float("inf")
    if not a.size:
        return 0.0
    return float(np.abs(a - b).max() / (scale if scale is not None else max(1.0, float(np.abs(b).max()))))


def gradient_differences(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> dict[str, float]:
    """Each gradient's max abs difference relative to the scale of the batch's backward pass (the largest
    expected gradient of any tensor, at least 1): float32 rounding in a backward pass grows with the gradients
    that flow through it, so a small tensor (a LayerNorm bias) downstream of large ones differs by more than its
    own size suggests; judged against its own size, real models failed on rounding alone."""
    scale = max([1.0, *(float(np.abs(g).max()) for g in expected.values() if np.size(g))])
    return {name: _diff(got[name], expected[name], scale) for name in got}


def torch_loss_and_grads(
    top: TopModel, hidden: np.ndarray, mask: np.ndarray, labels: np.ndarray, names: Sequence[str] | None = None
) -> tuple[float, np.ndarray, dict[str, np.ndarray]]:
    """The torch top's loss, logits and gradients on one batch (eval mode: no dropout): of the tensors ``names``
    (default: every tensor of the top)."""
    import torch

    top = top.eval()
    params = {n: p for n, p in top.named_parameters()}
    trained = set(params if names is None else names)
    for n, p in params.items():
        p.requires_grad_(n in trained)
        p.grad = None
    logits = top(torch.from_numpy(np.ascontiguousarray(hidden)), torch.from_numpy(mask.astype(np.int64)))
    loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels.astype(np.int64)))
    loss.backward()
    grads = {n: p.grad.detach().numpy().copy() for n, p in params.items() if p.grad is not None}
    for p in params.values():
        p.grad = None
    return float(loss.detach()), logits.detach().numpy(), grads


def _feeds(hidden: np.ndarray, mask: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, ...]:
    import torch

    return (
        torch.from_numpy(np.ascontiguousarray(hidden, dtype=np.float32)),
        torch.from_numpy(mask.astype(np.int64)),
        torch.from_numpy(labels.astype(np.int64)),
    )


def verify_training_program(
    top: TopModel,
    train_pte: bytes,
    names: list[str],
    batches: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    atol: float = DEFAULT_ATOL,
    file: str = TRAIN_FILE,
    max_batch: int = DEFAULT_TRAIN_MAX_BATCH,
) -> dict[str, Any]:
    """Run a training program in ExecuTorch's Python bindings on real ``(hidden, mask, labels)`` batches (in calls
    of at most ``max_batch`` rows, the program's largest) and compare its loss, logits and the gradients of
    ``names`` with ``top``'s in torch; raises :class:`ParityError` above ``atol`` or when its outputs are not
    ``(loss, logits, gradients, parameters)`` of ``names``."""
    batches = [
        tuple(a[s : s + max_batch] for a in batch) for batch in batches for s in range(0, len(batch[0]), max_batch)
    ]
    train = _load_program(file, train_pte)
    worst = {"loss": 0.0, "logits": 0.0, "gradients": 0.0}
    worst_grad = ""
    grad_start = int(train.run_method(GRADIENTS_INDEX, ())[0])
    param_start = int(train.run_method(PARAMETERS_INDEX, ())[0])
    fqn = [str(n).removeprefix("top.") for n in train.run_method(FQN_METHOD, ())]
    if fqn != names or param_start - grad_start != len(names) or grad_start != 2:
        raise ParityError(f"{file}: the program's outputs are not (loss, logits, gradients, parameters): {fqn}",
                          float("inf"))  # fmt: skip
    for hidden, mask, labels in batches:
        outputs = train.run_method(TRAIN_METHOD, _feeds(hidden, mask, labels))
        loss, logits, grads = torch_loss_and_grads(top, hidden, mask, labels, names)
        worst["loss"] = max(worst["loss"], _diff(outputs[0].numpy(), np.float32(loss)))
        worst["logits"] = max(worst["logits"], _diff(outputs[1].numpy(), logits))
        got = {name: out.numpy() for name, out in zip(names, outputs[grad_start:param_start])}
        for name, d in gradient_differences(got, grads).items():
            if d > worst["gradients"]:
                worst["gradients"], worst_grad = d, name
    for key, value in worst.items():
        if not value <= atol:
            what = f"gradient of {worst_grad}" if key == "gradients" else key
            raise ParityError(
                f"{file} differs from the torch top: {what} max difference {value:.3e} > atol {atol:g}", value
            )
    return {"atol": atol, "max_abs_diff": worst, "worst_gradient": worst_grad, "num_batches": len(batches),
            "batch_shapes": [list(h.shape[:2]) for h, _, _ in batches]}  # fmt: skip


def verify_programs(
    top: TopModel,
    train_pte: bytes,
    infer_pte: bytes,
    names: list[str],
    batches: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    atol: float = DEFAULT_ATOL,
    train_max_batch: int = DEFAULT_TRAIN_MAX_BATCH,
) -> dict[str, Any]:
    """Run both programs with ExecuTorch's Python bindings on real ``(hidden, mask, labels)`` batches and compare
    with the torch top; raises :class:`ParityError` above ``atol``. Returns the parity record."""
    import torch

    record = verify_training_program(top, train_pte, names, batches, atol, max_batch=train_max_batch)
    infer = _load_program(INFER_FILE, infer_pte)
    worst = 0.0
    for hidden, mask, labels in batches:
        feeds = _feeds(hidden, mask, labels)[:2]
        tensors = [p.detach() for p in top.parameters()]
        with torch.no_grad():
            logits = top.eval()(*feeds).numpy()
        worst = max(worst, _diff(infer.run_method("forward", (*feeds, *tensors))[0].numpy(), logits))
        # other tensors than the global ones (a personal state): the program must read its inputs, not constants
        gen = torch.Generator().manual_seed(4)
        other = [t + 0.05 * torch.randn(t.shape, generator=gen) * (t.abs().mean() + 1e-3) for t in tensors]
        with torch.no_grad():
            want = torch.func.functional_call(top.eval(), dict(zip(names_in_order(top), other)), feeds).numpy()
        worst = max(worst, _diff(infer.run_method("forward", (*feeds, *other))[0].numpy(), want))
    if not worst <= atol:
        raise ParityError(
            f"ExecuTorch program differs from the torch top: inference_logits max difference {worst:.3e} > "
            f"atol {atol:g}",
            worst,
        )
    record["max_abs_diff"]["inference_logits"] = worst
    return record


def _lora_program(
    top: TopModel, batches: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], options: ExecutorchOptions
) -> tuple[bytes, dict[str, Any]]:
    """``top_train_lora.pte`` and its manifest entry (``b""`` and ``{"skipped": why}`` where the top cannot have
    one), verified against the LoRA top in torch like ``top_train.pte``."""
    if not options.lora_rank:
        return b"", {"skipped": "not asked for (lora_rank 0)"}
    try:
        lora_top, tuner = lora_training_top(top, options.lora_rank, LORA_ALPHA)
    except ExportError as err:
        return b"", {"skipped": str(err)}
    pte, names = _export_joint(lora_top, options)
    parity = verify_training_program(
        lora_top, pte, names, batches, options.atol, LORA_TRAIN_FILE, options.train_max_batch
    )
    entry = {
        **_training_entry(LORA_TRAIN_FILE, lora_top, names, options.train_max_batch),
        "tuner": tuner,
        "init": f"lora_A Kaiming-uniform (torch generator seeded {LORA_SEED}), lora_B zero: the program's weights",
        "parity": parity,
    }
    return pte, entry


def _training_entry(file: str, top: TopModel, names: list[str], max_batch: int) -> dict[str, Any]:
    """A training program's manifest entry: its file, interface, largest call and trained tensors (``names``, of
    ``top``)."""
    params = dict(top.named_parameters())
    return {
        "file": file,
        "method": TRAIN_METHOD,
        "max_batch": max_batch,
        "inputs": [
            {"name": "hidden_state", "dtype": "float32", "shape": ["batch", "sequence", top.spec["hidden_size"]]},
            {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "sequence"]},
            {"name": "labels", "dtype": "int64", "shape": ["batch"]},
        ],
        "outputs": ["loss", "logits", "gradients...", "parameters..."],
        "gradients_index": 2,
        "parameters_index": 2 + len(names),
        "parameters": [{"name": n, "shape": list(params[n].shape)} for n in names],
    }


def write_executorch(
    directory: Path,
    top: TopModel,
    batches: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    options: ExecutorchOptions,
    trunk: tuple[SequenceClassifier, int, Sequence[tuple[np.ndarray, np.ndarray]]],
    int8: bool = False,
) -> dict[str, Any]:
    """Write ``top_train.pte``, ``top.pte`` and ``trunk.pte`` (and with ``int8`` ``trunk.int8.pte``) into
    ``directory``, the top's verified on ``batches`` (trunk output, mask, labels), the trunks' on ``trunk =
    (classifier, cut, id batches)``; returns the manifest entry."""
    from edgetune.io import atomic_write_bytes

    start = time.perf_counter()
    train_pte, names = export_training_program(top, options)
    infer_pte = export_inference_program(top, options)
    parity = verify_programs(top, train_pte, infer_pte, names, batches, options.atol, options.train_max_batch)
    classifier, cut, id_batches = trunk
    trunk_pte = export_trunk_program(classifier, cut, options)
    trunk_parity = verify_trunk_program(classifier, cut, trunk_pte, id_batches)
    int8_pte, quantization = export_trunk_int8_program(classifier, cut, options) if int8 else (b"", {})
    int8_parity = verify_trunk_int8_program(classifier, cut, int8_pte, id_batches) if int8 else {}
    lora_pte, lora_entry = _lora_program(top, batches, options)
    atomic_write_bytes(directory / TRAIN_FILE, train_pte)
    if lora_pte:
        atomic_write_bytes(directory / LORA_TRAIN_FILE, lora_pte)
    atomic_write_bytes(directory / INFER_FILE, infer_pte)
    atomic_write_bytes(directory / TRUNK_FILE, trunk_pte)
    if int8:
        atomic_write_bytes(directory / TRUNK_INT8_FILE, int8_pte)
    io_shapes = ["batch", "sequence"]
    trunk_io = {
        "inputs": [
            {"name": "input_ids", "dtype": "int64", "shape": io_shapes},
            {"name": "attention_mask", "dtype": "int64", "shape": io_shapes},
        ],
        "outputs": [{"name": "hidden_state", "dtype": "float32", "shape": [*io_shapes, top.spec["hidden_size"]]}],
    }
    optional_files = [*([TRUNK_INT8_FILE] if int8 else []), *([LORA_TRAIN_FILE] if lora_pte else [])]
    trunk_int8 = None
    if int8:
        trunk_int8 = {
            "file": TRUNK_INT8_FILE,
            "method": "forward",
            "delegate": "xnnpack",
            **trunk_io,
            "precision": "int8",
            "quantization": quantization,
            "parity": int8_parity,
            "size": len(int8_pte),
            "size_ratio": len(int8_pte) / len(trunk_pte),
            "accuracy": None,  # filled by the exporter when it has labelled validation data
        }
    return {
        "exporter": "torch.export + _export_forward_backward + executorch.exir.to_edge/to_executorch; trunk: "
        "to_edge_transform_and_lower with the XNNPACK partitioner"
        + ("; int8 trunk: PT2E with the XNNPACKQuantizer" if int8 else ""),
        "attention": "eager",
        "dropout": False,
        "passes": [
            "transposes of transposes removed",
            "mm/addmm of a transposed weight -> linear",
            "addmm -> mm + add",
        ],
        "max_batch": options.max_batch,
        "max_length": options.max_length,
        "train": {**_training_entry(TRAIN_FILE, top, names, options.train_max_batch), "loss": "cross_entropy (mean)"},
        "inference": {
            "file": INFER_FILE,
            "method": "forward",
            "inputs": ["hidden_state", "attention_mask", "tensors..."],
            "tensor_inputs": names_in_order(top),
            "outputs": ["logits"],
        },
        "trunk": {"file": TRUNK_FILE, "method": "forward", "delegate": "xnnpack", **trunk_io, "parity": trunk_parity},
        "trunk_int8": trunk_int8,
        "train_lora": lora_entry,
        "files": [TRAIN_FILE, INFER_FILE, TRUNK_FILE, *optional_files],
        "parity": parity,
        "seconds": time.perf_counter() - start,
    }


def versions() -> dict[str, str]:
    """The installed ExecuTorch version (empty when it is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return {"executorch": version("executorch")}
    except PackageNotFoundError:
        return {}
