"""Checks that a package's parts fit each other: what a seal or a signature cannot show.

A seal says each file is the one the manifest lists; it says nothing about whether the tokenizer's ids exist in
the trunk's vocabulary, whether ``max_length`` tokens have positions in the trunk, whether a graph's external
data is one of its own component's files, or whether the top's tensors have the shapes the plan and the ONNX top
expect. Each of those, when wrong, used to pass verification and then crash inside onnxruntime mid-job (or, for a
re-sealed tokenizer of the right size, answer wrongly: only a signature catches that one). :func:`fit_problems`
runs them all on a verified snapshot; ``inspect`` and every job call it through the same verification.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgetune.families import FAMILIES


def external_data_problems(root: Path, manifest: dict[str, Any]) -> list[str]:
    """Every ONNX component's external data must be one of that component's own listed files."""
    from device_sim.package import external_data_locations

    problems = []
    for key in ("trunk", "trunk_int8", "top_onnx"):
        entry = manifest.get(key)
        if not entry or not entry.get("file"):
            continue
        files = list(entry.get("files", [entry["file"]]))
        for location in external_data_locations(root / entry["file"]):
            if location not in files or location not in manifest["files"]:
                problems.append(
                    f"{entry['file']}: external data {location!r} is not one of this component's files "
                    f"({', '.join(files)})"
                )
    return problems


def token_positions(spec: dict[str, Any]) -> int | None:
    """How many token positions the trunk has, when they are a learned table (None: rotary or unknown)."""
    config = spec.get("hf_config") or {}
    family = FAMILIES.get(str(spec.get("family") or spec.get("model_type") or ""))
    if family is None or not family.learned_positions:  # rotary positions, or a family this runtime lacks
        return None
    rows = config.get("max_position_embeddings", config.get("n_positions"))
    if not isinstance(rows, int):
        return None
    if family.positions_after_padding:  # RoBERTa and MPNet count positions from padding_idx + 1
        rows -= int(config.get("pad_token_id") or 0) + 1
    return rows


def tokenizer_problems(root: Path, manifest: dict[str, Any], spec: dict[str, Any]) -> list[str]:
    """The tokenizer's largest id against the trunk's vocabulary, and ``max_length`` against its positions."""
    names = manifest["tokenizer"]
    problems = []
    try:
        encoder = json.loads((root / names["encoder"]).read_bytes())
        max_length = encoder["max_length"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return [f"{names['encoder']}: unreadable ({err})"]
    if max_length != names.get("max_length", max_length):
        problems.append(
            f"{names['encoder']}: max_length {max_length!r} differs from the manifest's {names.get('max_length')!r}"
        )
    positions = token_positions(spec)
    if positions is not None and isinstance(max_length, int) and max_length > positions:
        problems.append(
            f"{names['encoder']}: max_length {max_length} is more than the trunk's {positions} token positions"
        )
    vocab = (spec.get("hf_config") or {}).get("vocab_size")
    try:
        largest = _largest_id((root / names["tokenizer"]).read_text(encoding="utf-8"))
    except Exception as err:  # noqa: BLE001 (tokenizers raises its own exception type)
        return [*problems, f"{names['tokenizer']}: cannot be loaded ({type(err).__name__}: {err})"]
    if isinstance(vocab, int) and largest >= vocab:
        problems.append(
            f"{names['tokenizer']}: token id {largest} is outside the trunk's vocabulary of {vocab} "
            f"(ids 0..{vocab - 1})"
        )
    return problems


def _largest_id(text: str) -> int:
    """The largest token id of a ``tokenizers`` document (its vocabulary and added tokens), read by the
    ``tokenizers`` library when it is installed; a device that tokenizes in onnxruntime
    (:mod:`device_sim.onnx_tokenizer`) has no such library, and reads the ids from the JSON document."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        doc = json.loads(text)
        vocab = (doc.get("model") or {}).get("vocab")
        ids = list(vocab.values()) if isinstance(vocab, dict) else list(range(len(vocab or [])))  # Unigram: a list
        return max([*ids, *(int(t["id"]) for t in doc.get("added_tokens") or [])], default=-1)
    return max(Tokenizer.from_str(text).get_vocab(with_added_tokens=True).values(), default=-1)


def top_problems(root: Path, manifest: dict[str, Any], spec: dict[str, Any]) -> list[str]:
    """The top's tensors against the plan (one block per trainable block, a head per label) and the ONNX top."""
    from safetensors import safe_open

    name = manifest["top"]["weights"]
    try:
        with safe_open(str(root / name), "np") as f:
            shapes = {key: list(f.get_slice(key).get_shape()) for key in f.keys()}  # noqa: SIM118 (not a dict)
    except Exception as err:  # noqa: BLE001 (safetensors raises its own exception type)
        return [f"{name}: cannot be read ({type(err).__name__}: {err})"]
    problems = []
    blocks = spec.get("blocks") or []
    present = {int(k.split(".")[1]) for k in shapes if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    if present and present != set(range(len(blocks))):
        problems.append(f"{name}: holds blocks {sorted(present)} but top.json lists {len(blocks)} blocks ({blocks})")
    labels = len(manifest["labels"])
    head = shapes.get("head.weight")
    if head is not None and head[0] != labels:
        problems.append(f"{name}: head.weight has {head[0]} rows for {labels} labels")
    for output in manifest["top"].get("outputs", []):
        if output.get("shape") and output["shape"][-1] != labels:
            problems.append(f"manifest.json: top output {output['name']} has {output['shape'][-1]} classes")
    entry = manifest.get("top_onnx")
    if entry:
        for item in entry.get("inputs", []):
            if item["name"] in shapes and list(item["shape"]) != shapes[item["name"]]:
                problems.append(
                    f"{entry['file']}: input {item['name']} is {item['shape']}, {name} holds {shapes[item['name']]}"
                )
    return problems


def fit_problems(root: Path, manifest: dict[str, Any], spec: dict[str, Any]) -> list[str]:
    """Every fit check, on a snapshot whose files already match the manifest."""
    return [
        *external_data_problems(root, manifest),
        *tokenizer_problems(root, manifest, spec),
        *top_problems(root, manifest, spec),
    ]
