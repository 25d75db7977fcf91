"""A personal state applied to the package's top tensors, in numpy (torch-free prediction).

The package's ONNX top (``top.onnx``) takes the top's tensors as graph
inputs. Predicting with a personal state feeds the package's tensors
(``top.safetensors``) with the state applied; this module computes them for
every kind of state the project writes:

* ``kept_global`` — the package's tensors, unchanged;
* ``top_delta`` of tuner ``full`` — the state's tensors replace the package's
  (blocks renumbered from the trained view: a state trained above cut ``c``
  names its first block ``blocks.0``, which is the package top's block
  numbered ``k`` = the count of the top's blocks (``top.json`` ``blocks``, from 1) at or below ``c``);
* ``top_delta`` of tuners ``lora`` / ``roselora`` / ``dsee`` — per adapted
  projection ``P`` (peft's names ``P.lora_A.default.weight`` (r, in),
  ``P.lora_B.default.weight`` (out, r)): ``W_P += alpha / r * B A`` in the
  (out, in) convention, transposed for GPT-2's ``Conv1D`` weights stored (in,
  out); RoseLoRA's row/column-sparse factors arrive as ``.values`` +
  ``.indices`` along dim 1 (A) or 0 (B) and are scattered into zeros first;
  DSEE adds its sparse residual ``S`` at ``P.base_layer.dsee_index`` (2, N:
  rows, cols) with ``P.base_layer.dsee_values``; the head and the final norm
  are replaced. DSEE's stage-2 pruning (``prune_ratio`` / ``head_prune_ratio``
  above 0) is not applied here: such a state needs the torch top;
* ``fala`` — the personal matrix ``M`` (``matrix.linear``: d_old x d_new) and
  the old personal head ``H`` fold into one head on the new features:
  ``head.weight = H_W M_W``, ``head.bias = H_W M_b + H_b``; the residual form
  also holds the new global head ``G`` (``base``) and the old global head ``R``
  (``reference``), and its head ``G e + H (M e) - R (M e)`` folds to
  ``head.weight = G_W + (H_W - R_W) M_W``, ``head.bias = G_b + (H_W - R_W) M_b + H_b - R_b``.

Tests compare every kind against the torch top with the tuner's own merge.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from edgetune.families import family_for
from edgetune_format.personal import PersonalState, PersonalStateError

ADAPTERS = ("lora", "roselora", "dsee")
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_FACTOR = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])\.default\.weight$")
_RESIDUAL = ".base_layer.dsee_"


def _renumber(name: str, offset: int) -> str:
    match = _BLOCK.match(name)
    return f"blocks.{int(match.group(1)) + offset}.{match.group(2)}" if match else name


def _dense(tensors: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]], path: Any) -> dict[str, np.ndarray]:
    """RoseLoRA's compact ``.values`` / ``.indices`` pairs scattered into dense factors."""
    out = {k: v for k, v in tensors.items() if not k.endswith((".values", ".indices"))}
    for key in [k for k in tensors if k.endswith(".values")]:
        name = key[: -len(".values")]
        indices = tensors.get(name + ".indices")
        if indices is None:
            raise PersonalStateError(f"{path}: {key} has no {name}.indices")
        dim = 1 if ".lora_A." in name else 0
        shape = list(tensors[key].shape)
        shape[dim] = shapes[name][dim]
        dense = np.zeros(shape, np.float32)
        np.put_along_axis(dense, indices.astype(np.int64), tensors[key].astype(np.float32), axis=dim)
        out[name] = dense
    return out


def _factor_shapes(tensors: dict[str, np.ndarray], weights: dict[str, np.ndarray], conv1d: bool) -> dict:
    """The dense shape of each (possibly compact) LoRA factor, from its base weight: A (r, in), B (out, r)."""
    shapes = {}
    for key, value in tensors.items():
        name = key[: -len(".values")] if key.endswith(".values") else key
        match = _FACTOR.match(name)
        if not match or f"{match['module']}.weight" not in weights:
            continue
        w = weights[f"{match['module']}.weight"]
        out_f, in_f = (w.shape[1], w.shape[0]) if conv1d else w.shape
        r = value.shape[0] if match["which"] == "A" else value.shape[1]
        shapes[name] = (r, in_f) if match["which"] == "A" else (out_f, r)
    return shapes


def _merge_adapters(
    weights: dict[str, np.ndarray], tensors: dict[str, np.ndarray], scale: float, conv1d: bool, path: Any
) -> dict[str, np.ndarray]:
    """Fold every LoRA pair and DSEE residual into the base weights; returns the tensors left to replace."""
    rest = dict(tensors)
    modules = {m["module"] for k in tensors if (m := _FACTOR.match(k))}
    modules |= {k.split(_RESIDUAL)[0] for k in tensors if _RESIDUAL in k}
    for module in sorted(modules):
        key = f"{module}.weight"
        if key not in weights:
            raise PersonalStateError(f"{path}: adapts {module}, which this package's top does not have")
        w = weights[key].astype(np.float32).copy()
        out_in = w.T if conv1d else w  # a view: writes land in w
        a, b = rest.pop(f"{module}.lora_A.default.weight", None), rest.pop(f"{module}.lora_B.default.weight", None)
        if (a is None) != (b is None):
            raise PersonalStateError(f"{path}: {module} has only one of its two LoRA factors")
        if a is not None:
            if b.shape[0] != out_in.shape[0] or a.shape[1] != out_in.shape[1] or a.shape[0] != b.shape[1]:
                raise PersonalStateError(f"{path}: LoRA factors of {module} do not fit its {out_in.shape} weight")
            out_in += scale * (b.astype(np.float32) @ a.astype(np.float32))
        index = rest.pop(f"{module}.base_layer.dsee_index", None)
        values = rest.pop(f"{module}.base_layer.dsee_values", None)
        if (index is None) != (values is None):
            raise PersonalStateError(f"{path}: {module}'s sparse residual lacks its positions or its values")
        if index is not None:
            rows, cols = index.astype(np.int64)
            if rows.size and (
                rows.max() >= out_in.shape[0] or cols.max() >= out_in.shape[1] or min(rows.min(), cols.min()) < 0
            ):
                raise PersonalStateError(f"{path}: {module}'s sparse residual positions are out of range")
            np.add.at(out_in, (rows, cols), values.astype(np.float32))
        weights[key] = w
    return rest


def apply_state(
    weights: dict[str, np.ndarray], spec: dict[str, Any], state: PersonalState | None
) -> dict[str, np.ndarray]:
    """The top's tensors (``weights``, from ``top.safetensors``; ``spec``, ``top.json``) with ``state`` applied,
    as a new dict (see the module docstring). A state this module cannot apply is a :class:`PersonalStateError`
    naming why."""
    out = dict(weights)
    if state is None or state.kind == "kept_global":
        return out
    tensors = {k: np.asarray(v) for k, v in state.tensors.items()}
    if state.kind == "fala":
        weight, bias = fala_head(tensors, out["head.weight"].shape[1], state.path)
        out["head.weight"], out["head.bias"] = weight, bias
        return out
    name, params = state.tuner.get("name"), state.tuner.get("params", {})
    blocks = spec.get("blocks", list(range(spec["cut"] + 1, spec["num_layers"] + 1)))  # 1-based (top.json v2)
    offset = sum(1 for block in blocks if block <= state.train_cut)
    tensors = {_renumber(k, offset): v for k, v in tensors.items()}
    if name in ADAPTERS:
        if name == "dsee" and (params.get("prune_ratio", 0) > 0 or params.get("head_prune_ratio", 0) > 0):
            raise PersonalStateError(f"{state.path}: a DSEE state with stage-2 pruning needs the torch top")
        conv1d = family_for(spec["model_type"]).conv1d_projections
        tensors = _dense(tensors, _factor_shapes(tensors, out, conv1d), state.path)
        tensors = _merge_adapters(out, tensors, float(params["alpha"]) / int(params["r"]), conv1d, state.path)
    elif name != "full":
        raise PersonalStateError(f"{state.path}: tuner {name!r} is not known to the ONNX top; use the torch top")
    for key, value in tensors.items():
        if key not in out:
            raise PersonalStateError(f"{state.path}: {key} is not a tensor of this package's top")
        if tuple(value.shape) != tuple(out[key].shape):
            raise PersonalStateError(
                f"{state.path}: {key} has shape {tuple(value.shape)}, the top's is {out[key].shape}"
            )
        out[key] = value.astype(np.float32)
    return out


def fold_adapters(
    weights: dict[str, np.ndarray], tensors: dict[str, np.ndarray], tuner: dict[str, Any], model_type: str
) -> dict[str, np.ndarray]:
    """A trained candidate's ``tensors`` (the top's numbering) with its LoRA pairs folded into copies of the top's
    ``weights`` (``W + alpha / r * B A``): the tensors that replace the top's to run it."""
    params = tuner["params"]
    merged = dict(weights)
    conv1d = family_for(model_type).conv1d_projections
    rest = _merge_adapters(merged, tensors, float(params["alpha"]) / int(params["r"]), conv1d, "candidate")
    return {**{k: merged[k] for k in merged if merged[k] is not weights.get(k)}, **rest}


def fala_head(tensors: dict[str, np.ndarray], width: int, path: Any) -> tuple[np.ndarray, np.ndarray]:
    """A FaLA state's head (either form) as one linear layer on the new package's ``width`` features."""
    try:
        m_w, m_b = tensors["matrix.linear.weight"], tensors["matrix.linear.bias"]
        h_w, h_b = tensors["head.weight"], tensors["head.bias"]
    except KeyError as err:
        raise PersonalStateError(f"{path}: not a FaLA personal head (no {err})") from None
    if m_w.shape[1] != width or h_w.shape[1] != m_w.shape[0]:
        raise PersonalStateError(
            f"{path}: personal matrix {m_w.shape} and head {h_w.shape} do not fit this package's {width} features"
        )
    weight, bias = h_w @ m_w, h_w @ m_b + h_b
    residual = [name in tensors for name in ("base.weight", "base.bias", "reference.weight", "reference.bias")]
    if any(residual) and not all(residual):
        raise PersonalStateError(f"{path}: a residual FaLA head needs both base.* and reference.* tensors")
    if all(residual):
        g_w, g_b, r_w, r_b = (tensors[n] for n in ("base.weight", "base.bias", "reference.weight", "reference.bias"))
        if g_w.shape != (h_w.shape[0], width) or r_w.shape != h_w.shape:
            raise PersonalStateError(f"{path}: the residual FaLA head's base {g_w.shape} or reference {r_w.shape} "
                                     f"does not fit its head {h_w.shape}")  # fmt: skip
        weight, bias = weight + g_w - r_w @ m_w, bias + g_b - r_w @ m_b - r_b
    return weight.astype(np.float32), bias.astype(np.float32)
