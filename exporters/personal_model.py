"""A personalized model as one standard Hugging Face ONNX model directory (``edgetune export-personal``).

A device package splits the model in two graphs (``trunk.onnx`` and ``top.onnx``, whose tensors are graph
inputs) and a personal state holds only what training changed. Tools outside edgetune
(``optimum.onnxruntime.ORTModelForSequenceClassification``, ``transformers.pipeline``) expect one graph from
``input_ids`` and ``attention_mask`` to ``logits``, a ``config.json`` with the labels, and tokenizer files. This
module writes exactly that:

* ``model.onnx`` — the package's trunk graph followed by its top graph (``top.onnx``; for a package exported
  without it, the same graph exported here from the torch top), the top's tensors baked in as initializers:
  the tensors of the torch top that ``edgetune predict`` runs with the state merged
  (:meth:`device_sim.device.Device.top`), so every kind of state the torch top applies is merged the same way
  (``full``, head only, ``lora``, ``roselora``, ``dsee`` pruned or not, ``fala`` in both forms,
  ``kept_global``); a state whose merged top has tensors the graph does not read is refused;
* ``config.json`` — the backbone's configuration with the package's labels (``id2label`` / ``label2id``);
  ``architectures`` is left out on purpose: the graph pools and classifies as the package's top does (mean
  pooling, for instance), which no ``*ForSequenceClassification`` class of transformers computes;
* ``tokenizer.json`` + ``tokenizer_config.json`` — the package's tokenizer, ``model_max_length`` set to the
  package's ``max_length`` so that ``truncation=True`` cuts texts where the package does;
* ``edgetune_personal.json`` — where it came from (package and state hashes) and the verification.

Like Hugging Face's exporters, the written graph is verified before it is published: its logits on texts made
from the tokenizer's own vocabulary (padded batches, one text longer than ``max_length``) are compared with the
package's trunk + torch top; beyond ``atol`` the export fails and nothing is written.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgetune.io import atomic_directory, check_output_dir, output_lock, private_tempdir, recover, sha256_file
from edgetune_format.personal import PersonalStateError
from exporters.errors import ExportError, ParityError
from exporters.onnx_trunk import EXTERNAL_DATA_BYTES, top_tensor_names
from exporters.options import DEFAULT_ATOL

if TYPE_CHECKING:
    import onnx

    from device_sim.device import Device
    from edgetune.modeling import TopModel

MODEL_FILE = "model.onnx"
MODEL_DATA = "model.onnx_data"  # the name optimum looks for next to model.onnx
INFO_FILE = "edgetune_personal.json"
INFO_FORMAT = "edgetune-personal-model"
_TOP_PREFIX = "top/"
_VERIFY_SENTENCES = (
    "The match ended in a draw after extra time.",
    "Shares fell sharply when the bank reported its results.",
    "a",
)


@dataclass
class PersonalModelExport:
    """What :func:`export_personal_model` wrote and how well the graph reproduced the device's prediction."""

    out: Path
    files: list[str]
    kind: str
    max_abs_diff: float
    num_texts: int
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)
    what: str = ""  # the merged state in words, for the command's summary line (see :func:`describe_state`)


def describe_state(kind: str, tuner: dict[str, Any], train_cut: int, num_layers: int) -> str:
    """What a personal state brings to the merged model, in words: ``merged a lora state (blocks 6..6 + head)``,
    ``merged a full state (the head only)``, ``merged a FaLA state (plain form: ...)`` or, for a state that kept
    the global model, ``a kept-global state: the package's own top, nothing to merge``."""
    if kind == "kept_global":
        return "a kept-global state: the package's own top, nothing to merge"
    if kind == "fala":
        form = tuner.get("params", {}).get("form", "plain")
        return f"merged a FaLA state ({form} form: a personal feature matrix + head)"
    trained = "the head only" if train_cut >= num_layers else f"blocks {train_cut + 1}..{num_layers} + head"
    return f"merged a {tuner.get('name')} state ({trained})"


def _bake(top: onnx.ModelProto, tensors: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The top graph with its tensor inputs turned into initializers holding ``tensors``."""
    from onnx import numpy_helper

    graph = top.graph
    kept = [i for i in graph.input if i.name not in tensors]
    for name, value in tensors.items():
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value, np.float32), name))
    del graph.input[:]
    graph.input.extend(kept)
    return top


def compose_model(trunk: onnx.ModelProto, top: onnx.ModelProto, tensors: dict[str, np.ndarray]) -> onnx.ModelProto:
    """One graph ``(input_ids, attention_mask) -> logits``: ``trunk`` then ``top`` with ``tensors`` baked in.

    The top's names are prefixed so that none collides with the trunk's (both graphs call their mask
    ``attention_mask``); its ``hidden_state`` reads the trunk's output and its mask the trunk's pass-through.
    """
    import onnx
    from onnx import compose, helper

    top = compose.add_prefix(_bake(top, tensors), _TOP_PREFIX)
    # merge_models refuses graphs of different IR versions; both come from the same exporter, but a package
    # written by an older release may differ, and the newer version reads the older graph
    ir = max(trunk.ir_version, top.ir_version)
    trunk.ir_version = top.ir_version = ir
    merged = compose.merge_models(
        trunk,
        top,
        io_map=[("hidden_state", f"{_TOP_PREFIX}hidden_state"), ("attention_mask_out", f"{_TOP_PREFIX}attention_mask")],
        outputs=[f"{_TOP_PREFIX}logits"],
    )
    graph = merged.graph
    graph.node.append(helper.make_node("Identity", [f"{_TOP_PREFIX}logits"], ["logits"], name="logits"))
    logits = onnx.ValueInfoProto()
    logits.CopyFrom(graph.output[0])
    logits.name = "logits"
    del graph.output[:]
    graph.output.append(logits)
    merged.producer_name = "edgetune"
    return merged


def _save(model: onnx.ModelProto, path: Path) -> list[str]:
    """``model.onnx``, its weights in ``model.onnx_data`` when one file would pass protobuf's 2 GiB limit."""
    import onnx

    # the weights' bytes, not ByteSize(): protobuf cannot measure (or write) a message past 2 GiB
    if sum(len(t.raw_data) for t in model.graph.initializer) > EXTERNAL_DATA_BYTES:
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=MODEL_DATA)
        return [path.name, MODEL_DATA]
    onnx.save(model, str(path))
    return [path.name]


def hf_config(spec: dict[str, Any], labels: list[str]) -> dict[str, Any]:
    """The backbone's Hugging Face configuration (``top.json`` ``hf_config``) with the package's labels."""
    config = dict(spec["hf_config"])
    config.pop("architectures", None)  # see the module docstring: no transformers class computes this graph
    config.pop("_name_or_path", None)
    config["id2label"] = {str(i): label for i, label in enumerate(labels)}
    config["label2id"] = {label: i for i, label in enumerate(labels)}
    config["problem_type"] = "single_label_classification"  # pipelines apply a softmax over the labels
    return config


def _special_tokens(tokenizer_json: dict[str, Any], pad_token: str) -> dict[str, str]:
    """The special tokens a transformers tokenizer should name (pad always; unk, cls, sep, mask when present)."""
    tokens = {"pad_token": pad_token}
    unk = (tokenizer_json.get("model") or {}).get("unk_token")
    if unk:
        tokens["unk_token"] = unk
    special = {t["content"] for t in tokenizer_json.get("added_tokens", []) if t.get("special")}
    for role, names in (("cls_token", ("[CLS]", "<s>")), ("sep_token", ("[SEP]", "</s>")),
                        ("mask_token", ("[MASK]", "<mask>"))):  # fmt: skip
        found = [n for n in names if n in special]
        if found:
            tokens[role] = found[0]
    return tokens


def write_tokenizer(device: Device, out: Path) -> list[str]:
    """The package's tokenizer as transformers saves one, truncating at the package's ``max_length``."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    package = device.package
    path = package.file(package.manifest["tokenizer"]["tokenizer"])
    encoder = package.encoder
    backend = Tokenizer.from_file(str(path))  # as stored: no truncation or padding configured in it
    specials = _special_tokens(json.loads(path.read_text(encoding="utf-8")), encoder.pad_token)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=encoder.max_length, **specials)
    if tokenizer.pad_token_id != encoder.pad_id:
        raise ExportError(f"{package.path}: pad token {encoder.pad_token!r} is id {tokenizer.pad_token_id} in "
                          f"tokenizer.json, {encoder.pad_id} in encoder.json; re-export the package")  # fmt: skip
    written = tokenizer.save_pretrained(str(out))
    return sorted({Path(p).name for p in written if Path(p).exists()})


def verification_texts(device: Device, n: int = 12, seed: int = 0) -> list[str]:
    """Texts the model can read: a few sentences, then words drawn from the tokenizer's own vocabulary (a tiny
    or domain vocabulary reads real tokens, not unknowns), of mixed lengths and one past ``max_length``."""
    vocab = device.package.encoder.tokenizer.get_vocab()
    words = sorted(w for w in vocab if w.isalpha() and len(w) > 1)
    texts = list(_VERIFY_SENTENCES)
    if words:
        rng = np.random.default_rng(seed)
        lengths = [*rng.integers(2, 24, size=n - 1), 2 * device.package.encoder.max_length]
        texts += [" ".join(rng.choice(words, size=int(k))) for k in lengths]
    return texts


def merged_top_tensors(top: TopModel, graph: onnx.ModelProto, state: Any) -> dict[str, np.ndarray]:
    """The torch ``top``'s tensors (the state merged), named as the top graph's tensor inputs; a state whose
    merged top has tensors the graph does not read, or lacks some it does, is refused."""
    params = dict(top.named_parameters())
    tensors = {name: params[name].detach().float().numpy() for name in top_tensor_names(top)}
    expected = {i.name for i in graph.graph.input[2:]}  # after hidden_state and attention_mask
    if set(tensors) != expected:
        extra, missing = sorted(set(tensors) - expected), sorted(expected - set(tensors))
        raise PersonalStateError(
            f"{state.path}: a {state.kind} state of tuner {state.tuner.get('name')!r} cannot be merged into the "
            f"package's graph (its top has tensors {extra[:3]} the graph does not read, lacks {missing[:3]}); "
            "predict with the torch top instead"
        )
    return tensors


def verify_model(device: Device, state: Any, path: Path, texts: list[str], atol: float) -> float:
    """Max abs difference between the written graph's logits and ``predict``'s (trunk + torch top) on ``texts``;
    :class:`ParityError` beyond ``atol``."""
    from device_sim.runtime import map_batches, ort_session

    session = ort_session(path, device.threads)
    encoder = device.package.encoder

    def fn(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return session.run(["logits"], {"input_ids": ids, "attention_mask": mask})[0]

    got = map_batches(encoder, texts, fn, batch_size=8)
    want = device.predictor(state, backend="torch").logits(texts, batch_size=8)
    worst = float(np.abs(got.astype(np.float64) - want).max()) if np.isfinite(got).all() else float("inf")
    if not worst <= atol:
        raise ParityError(
            f"{path.name}: the merged graph differs from the package's prediction by max abs diff {worst:.3g} "
            f"(tolerance {atol:g}) on {len(texts)} texts; nothing was written",
            worst,
        )
    return worst


def load_graphs(device: Device, top: TopModel, scratch: Path) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """The package's trunk graph and its top graph (tensors as inputs): ``top.onnx`` when the package has one,
    else ``top`` exported here the way the exporter writes ``top.onnx`` (into ``scratch``)."""
    import onnx

    from exporters.onnx_trunk import export_top_onnx

    package = device.package
    trunk = package.manifest["trunk"]["file"]
    package.trunk_session()  # opened as the device opens it: its external data must be the package's own files
    if package.manifest.get("top_onnx"):
        name = package.onnx_top_entry()["file"]
        package.top_session()
        path = package.file(name)
    else:  # exported without --top-onnx: the same graph, from the torch top that predict runs
        path = export_top_onnx(top, scratch / "top.onnx").path
        name = "top.onnx (exported from the torch top)"
    with package.reading(trunk, name):
        return onnx.load(str(package.file(trunk))), onnx.load(str(path))


def export_personal_model(
    package: str | Path,
    personal: str | Path,
    out: str | Path,
    atol: float = DEFAULT_ATOL,
    threads: int | None = None,
) -> PersonalModelExport:
    """Write ``package`` with the personal state ``personal`` merged as a Hugging Face ONNX model directory at
    ``out`` (see the module docstring), atomically: ``out`` is the previous directory or the complete new one.

    The package and the state are verified as a device verifies them (seal, file hashes, the state belongs to
    this package); a graph that does not reproduce ``edgetune predict`` within ``atol`` is refused."""
    from device_sim.device import Device

    start = time.perf_counter()
    out = Path(out)
    with output_lock(out):
        recover(out.parent, [out.name])
        check_output_dir(out, [("--package", package), ("--personal", personal)], [INFO_FILE], "personalized model")
        with Device(package, threads=threads) as device:
            state = device.load_personal(personal)  # verified, and refused when it belongs to another package
            top = device.top(state, merged=True)
            what = describe_state(state.kind, state.tuner, state.train_cut, device.package.num_layers)
            with private_tempdir("edgetune-personal-model-") as scratch:
                trunk, graph = load_graphs(device, top, Path(scratch))
                model = compose_model(trunk, graph, merged_top_tensors(top, graph, state))
            texts = verification_texts(device)
            with atomic_directory(out) as tmp:
                files = _save(model, tmp / MODEL_FILE)
                worst = verify_model(device, state, tmp / MODEL_FILE, texts, atol)
                config = hf_config(device.package.top_spec(), device.labels)
                (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
                files += ["config.json", *write_tokenizer(device, tmp)]
                info = {
                    "format": INFO_FORMAT,
                    "package": {"path": str(package), "backbone_hash": device.package.manifest["backbone"]["hash"],
                                "cut": device.package.cut, "labels": device.labels},
                    "personal": {"path": str(personal), "kind": state.kind, "tuner": state.tuner.get("name"),
                                 "train_cut": state.train_cut,
                                 "sha256": sha256_file(Path(personal) / "personal.json")},
                    "verification": {"max_abs_diff": worst, "atol": atol, "num_texts": len(texts)},
                    "files": {name: sha256_file(tmp / name) for name in sorted(files)},
                }  # fmt: skip
                (tmp / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return PersonalModelExport(out, sorted([*files, INFO_FILE]), state.kind, worst, len(texts),
                               time.perf_counter() - start, info, what)  # fmt: skip
