"""A device package reader written from docs/package-format.md alone.

It imports none of edgetune's modules: only json, hashlib, base64, numpy,
tokenizers, safetensors, onnxruntime and (for signatures) cryptography's
Ed25519, as a third party's runtime would. The top runs
in ``top.onnx`` or, to check the document's block conventions, in numpy
(tests/conformance/blocks.py). The
conformance test (tests/test_conformance.py) checks that it reproduces
``edgetune predict``'s logits for every family and every personal-state kind
the project writes; anything it needs and the document does not say is a gap
in the document.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from safetensors.numpy import load_file
from tokenizers import Tokenizer


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _ed25519_ok(key: bytes, signature: bytes, data: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(key).verify(signature, data)
    except InvalidSignature:
        return False
    return True


def check_signature(raw_manifest: bytes, signature_file: Path, trusted: list[bytes]) -> None:
    """The document's "Signature" rules: a signer key reached from a trusted key through rotation certificates,
    and its Ed25519 signature over manifest.json's bytes as read."""
    if not signature_file.is_file():
        raise ValueError("unsigned package")
    sig = json.loads(signature_file.read_bytes())
    if sig["format"] != "edgetune-package-signature" or sig["algorithm"] != "ed25519":
        raise ValueError("not a package signature")
    ids = {hashlib.sha256(k).hexdigest(): k for k in trusted}
    for cert in sig.get("rotations", []):
        old, new = ids.get(cert["signed_by"]), base64.b64decode(cert["key"])
        if old is not None and _ed25519_ok(old, base64.b64decode(cert["signature"]),
                                           b"edgetune-key-rotation-v1\n" + new):  # fmt: skip
            ids[hashlib.sha256(new).hexdigest()] = new
    signer = base64.b64decode(sig["key"])
    if hashlib.sha256(signer).hexdigest() not in ids:
        raise ValueError("signed by an untrusted key")
    if not _ed25519_ok(signer, base64.b64decode(sig["signature"]), raw_manifest):
        raise ValueError("signature does not match manifest.json")


def _sealed(path: Path, trusted: list[bytes] | None = None) -> dict:
    """A manifest (package or personal state) whose seal and file table check out (and, given trusted keys, its
    signature)."""
    raw = path.read_bytes()
    if trusted is not None:
        check_signature(raw, path.parent / "manifest.sig", trusted)
    manifest = json.loads(raw)
    body = {k: v for k, v in manifest.items() if k != "integrity"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    if hashlib.sha256(canonical).hexdigest() != manifest["integrity"]["manifest_sha256"]:
        raise ValueError(f"{path}: seal does not match")
    for name, entry in manifest["files"].items():
        file = path.parent / name
        if file.stat().st_size != entry["size"] or _sha256(file) != entry["sha256"]:
            raise ValueError(f"{file}: does not match the manifest")
    return manifest


class Reader:
    def __init__(self, root: str | Path, trusted: list[bytes] | None = None) -> None:
        self.root = Path(root)
        self.manifest = _sealed(self.root / "manifest.json", trusted)
        tok = self.manifest["tokenizer"]
        encoder = json.loads((self.root / tok["encoder"]).read_text())
        self.tokenizer = Tokenizer.from_file(str(self.root / tok["tokenizer"]))
        self.tokenizer.enable_truncation(encoder["max_length"])
        self.tokenizer.no_padding()
        self.pad_id = encoder["pad_id"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.trunk = ort.InferenceSession(str(self.root / self.manifest["trunk"]["file"]), options)
        self.top = ort.InferenceSession(str(self.root / self.manifest["top_onnx"]["file"]), options)
        self.weights = load_file(str(self.root / self.manifest["top"]["weights"]))
        self.spec = json.loads((self.root / self.manifest["top"]["spec"]).read_text())

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        ids = [e.ids for e in self.tokenizer.encode_batch(texts)]
        width = max(len(t) for t in ids)
        out = np.full((len(ids), width), self.pad_id, np.int64)
        mask = np.zeros((len(ids), width), np.int64)
        for i, t in enumerate(ids):
            out[i, : len(t)], mask[i, : len(t)] = t, 1
        return out, mask

    def personal_weights(self, state_dir: str | Path | None) -> dict[str, np.ndarray]:
        weights = {k: v.astype(np.float32) for k, v in self.weights.items()}
        if state_dir is None:
            return weights
        state_dir = Path(state_dir)
        state = _sealed(state_dir / "personal.json")
        identity = state["package"]
        files = self.manifest["files"]
        if (
            identity["cut"] != self.manifest["cut"]
            or identity["labels"] != self.manifest["labels"]
            or any(files.get(name, {}).get("sha256") != digest for name, digest in identity["files"].items())
        ):
            raise ValueError("the personal state belongs to another package")
        kind = state["kind"]
        if kind == "kept_global":
            return weights
        delta = load_file(str(state_dir / state["weights"]))
        if kind == "fala":
            m_w, m_b = delta["matrix.linear.weight"], delta["matrix.linear.bias"]
            h_w, h_b = delta["head.weight"], delta["head.bias"]
            if "base.weight" in delta:  # residual form: base(x) + head(M x) - reference(M x)
                diff = h_w - delta["reference.weight"]
                weights["head.weight"] = delta["base.weight"] + diff @ m_w
                weights["head.bias"] = delta["base.bias"] + diff @ m_b + h_b - delta["reference.bias"]
            else:
                weights["head.weight"] = h_w @ m_w
                weights["head.bias"] = h_w @ m_b + h_b
            return weights
        # top_delta: blocks.{i} of the state is the package top's block at position i + offset, where offset
        # counts the top's blocks (top.json "blocks", numbered from 1) at or below train_cut
        offset = sum(1 for block in self.spec["blocks"] if block <= state["train_cut"])

        def rename(name: str) -> str:
            if not name.startswith("blocks."):
                return name
            _, i, rest = name.split(".", 2)
            return f"blocks.{int(i) + offset}.{rest}"

        delta = {rename(k): v for k, v in delta.items()}
        tuner, params = state["tuner"]["name"], state["tuner"]["params"]
        if tuner == "full":
            weights.update(delta)
            return weights
        transposed = self.spec["model_type"] == "gpt2"  # Conv1D stores (in, out)
        for key in [k for k in delta if k.endswith(".values")]:  # RoseLoRA's compact factors
            name = key[: -len(".values")]
            values, indices = delta.pop(key), delta.pop(name + ".indices").astype(np.int64)
            module = name.split(".lora_")[0]
            w = weights[module + ".weight"]
            out_f, in_f = (w.shape[1], w.shape[0]) if transposed else w.shape
            axis = 1 if ".lora_A." in name else 0
            shape = (values.shape[0], in_f) if axis == 1 else (out_f, values.shape[1])
            dense = np.zeros(shape, np.float32)
            np.put_along_axis(dense, indices, values, axis=axis)
            delta[name] = dense
        scale = params["alpha"] / params["r"]
        for key in [k for k in delta if k.endswith(".lora_A.default.weight")]:
            module = key[: -len(".lora_A.default.weight")]
            update = scale * delta.pop(module + ".lora_B.default.weight") @ delta.pop(key)
            weights[module + ".weight"] = weights[module + ".weight"] + (update.T if transposed else update)
        for key in [k for k in delta if k.endswith(".base_layer.dsee_index")]:  # DSEE's sparse residual
            module = key[: -len(".base_layer.dsee_index")]
            rows, cols = delta.pop(key).astype(np.int64)
            values = delta.pop(module + ".base_layer.dsee_values")
            w = weights[module + ".weight"].copy()
            np.add.at(w.T if transposed else w, (rows, cols), values)
            weights[module + ".weight"] = w
        weights.update(delta)  # the head and the final norm
        return weights

    def logits(self, texts: list[str], state_dir: str | Path | None = None, top: str = "onnx") -> np.ndarray:
        """Logits of ``texts``, one at a time (no padding); ``top``: ``onnx`` runs ``top.onnx``, ``numpy`` the
        top's computation as the document describes it (tests/conformance/blocks.py), in one padded batch."""
        weights = self.personal_weights(state_dir)
        if top == "numpy":
            from tests.conformance.blocks import top_logits

            ids, mask = self.encode(texts)
            hidden = self.trunk.run(["hidden_state"], {"input_ids": ids, "attention_mask": mask})[0]
            return top_logits(self.spec, weights, hidden, mask)
        rows = []
        for text in texts:  # one text at a time: no padding
            ids, mask = self.encode([text])
            hidden = self.trunk.run(["hidden_state"], {"input_ids": ids, "attention_mask": mask})[0]
            feeds = {"hidden_state": hidden, "attention_mask": mask}
            feeds.update({i.name: weights[i.name] for i in self.top.get_inputs()[2:]})
            rows.append(self.top.run(["logits"], feeds)[0][0])
        return np.stack(rows)
