"""The package's tokenizer as an ONNX pre-processing graph (onnxruntime-extensions): text -> ids in onnxruntime.

A device with onnxruntime and onnxruntime-extensions then needs no ``tokenizers`` package: ``predict --tokenizer
onnx`` (the default when ``tokenizers`` is not installed) reads the package's ``tokenizer.json`` as JSON and
builds one graph from it:

* onnxruntime-extensions' ``BertTokenizer`` op (its ``vocab``, lower-casing and accent stripping taken from the
  tokenizer's ``BertNormalizer``, its unknown / special tokens from the file), which adds the first and last
  special tokens of the ``[CLS] A [SEP]`` template itself;
* truncation at the package's ``max_length`` as the ``tokenizers`` library truncates one sequence: the first
  ``max_length - 1`` ids, then the closing special token (``Slice`` + ``Concat``; a text that fits is unchanged).

Supported: a WordPiece model with the BERT normalizer and pre-tokenizer and a ``[CLS] A [SEP]``-shaped
post-processor (a template, ``BertProcessing``, or MPNet's ``RobertaProcessing`` with ``<s> A </s>``) — BERT,
DistilBERT, the MiniLM and MPNet sentence-transformers (all-MiniLM-L6-v2 and all-mpnet-base-v2 give ids identical
to ``tokenizers`` on every text of the bundled BBC news and tweets corpora). Byte-level BPE (GPT-2, RoBERTa) and
SentencePiece (Llama, Mistral, Qwen) tokenizers are refused with :class:`TokenizerNotSupported`: use the
``tokenizers`` path for them.

The op reads at most two texts per call as a *pair*, so the encoder runs the graph once per text; batches are
padded in numpy as :class:`edgetune.tokenization.TextEncoder` pads them (right padding, the package's pad id).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgetune.tokenization import pad_batch
from edgetune_format.errors import PackageError

INT64_MAX = np.iinfo(np.int64).max


class TokenizerNotSupported(PackageError):
    """The package's tokenizer has no onnxruntime-extensions equivalent here; use the ``tokenizers`` path."""


def _bert_shape(spec: dict[str, Any], path: Any, pad_token: str = "") -> dict[str, Any]:
    """The op's attributes for a BERT-shaped WordPiece tokenizer; :class:`TokenizerNotSupported` for any other."""
    model, normalizer = spec.get("model") or {}, spec.get("normalizer") or {}
    pre, post = spec.get("pre_tokenizer") or {}, spec.get("post_processor") or {}
    if model.get("type") != "WordPiece":
        raise TokenizerNotSupported(f"{path}: a {model.get('type')} tokenizer; the in-graph tokenizer reads WordPiece "
                                    "(BERT-style) tokenizers only: use --tokenizer tokenizers")  # fmt: skip
    if normalizer.get("type") != "BertNormalizer" or pre.get("type") != "BertPreTokenizer":
        raise TokenizerNotSupported(
            f"{path}: normalizer {normalizer.get('type')} / pre-tokenizer {pre.get('type')}; the in-graph tokenizer "
            "reads BertNormalizer + BertPreTokenizer only: use --tokenizer tokenizers"
        )
    if post.get("type") in ("BertProcessing", "RobertaProcessing"):  # MPNet's: <s> A </s> for one sequence
        first, last = post["cls"][0], post["sep"][0]
    elif post.get("type") == "TemplateProcessing" and len(post.get("single", [])) == 3:
        single = post["single"]
        if "Sequence" not in single[1] or "SpecialToken" not in single[0] or "SpecialToken" not in single[2]:
            raise TokenizerNotSupported(f"{path}: a template other than <special> A <special>")
        first, last = single[0]["SpecialToken"]["id"], single[2]["SpecialToken"]["id"]
    else:
        raise TokenizerNotSupported(f"{path}: post-processor {post.get('type')} is not a [CLS] A [SEP] template; use "
                                    "--tokenizer tokenizers")  # fmt: skip
    if not normalizer.get("clean_text", True) or not normalizer.get("handle_chinese_chars", True):
        raise TokenizerNotSupported(f"{path}: a BertNormalizer without clean_text / handle_chinese_chars")
    vocab = model["vocab"]
    ids = sorted(vocab.values())
    if ids != list(range(len(ids))):
        raise TokenizerNotSupported(f"{path}: the vocabulary's ids are not 0..{len(ids) - 1}")
    lowercase = bool(normalizer.get("lowercase", True))
    strip = normalizer.get("strip_accents")
    unk = model.get("unk_token", "[UNK]")
    # the op looks its pad and mask tokens up in the vocabulary when it loads (an encoding never emits them)
    mask = next((t for t in ("[MASK]", "<mask>") if t in vocab), unk)
    return {
        "vocab": "\n".join(sorted(vocab, key=vocab.get)),
        "do_lower_case": int(lowercase),
        # tokenizers' BertNormalizer: strip_accents None means "as lowercase"
        "strip_accents": int(lowercase if strip is None else bool(strip)),
        "unk_token": unk,
        "pad_token": pad_token if pad_token in vocab else unk,
        "mask_token": mask,
        "cls_token": first,
        "sep_token": last,
        "suffix_indicator": model.get("continuing_subword_prefix", "##"),
    }


def tokenizer_graph(spec: dict[str, Any], max_length: int, path: Any = "tokenizer.json", pad_token: str = "") -> Any:
    """One ONNX graph ``text`` (string ``[1]``) -> ``input_ids`` (int64 ``[n]``, n <= ``max_length``) for the
    ``tokenizers`` document ``spec`` (see the module docstring)."""
    import onnx
    from onnx import helper
    from onnxruntime_extensions import SingleOpGraph, make_onnx_model

    graph = SingleOpGraph.build_graph("BertTokenizer", **_bert_shape(spec, path, pad_token))
    (ids,) = [o.name for o in graph.output if o.name == "input_ids"]
    consts = {"zero": [0], "last": [-1], "stop": [INT64_MAX], "limit": [max_length], "one": [1]}
    graph.initializer.extend(
        onnx.numpy_helper.from_array(np.array(v, np.int64), f"trunc/{k}") for k, v in consts.items()
    )
    graph.node.extend([
        helper.make_node("Shape", [ids], ["trunc/n"]),
        helper.make_node("Min", ["trunc/n", "trunc/limit"], ["trunc/kept"]),
        helper.make_node("Sub", ["trunc/kept", "trunc/one"], ["trunc/end"]),
        helper.make_node("Slice", [ids, "trunc/zero", "trunc/end"], ["trunc/head"]),
        helper.make_node("Slice", [ids, "trunc/last", "trunc/stop"], ["trunc/tail"]),
        helper.make_node("Concat", ["trunc/head", "trunc/tail"], ["ids"], axis=0),
    ])  # fmt: skip
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, [None]))
    return make_onnx_model(graph)


class OnnxTextEncoder:
    """Texts -> right-padded ``(input_ids, attention_mask)`` int64 arrays through the in-graph tokenizer; the
    interface of :class:`edgetune.tokenization.TextEncoder` that prediction uses."""

    def __init__(self, spec: dict[str, Any], max_length: int, pad_id: int, pad_token: str = "", path: Any = "") -> None:
        import onnxruntime as ort
        from onnxruntime_extensions import get_library_path

        self.max_length, self.pad_id, self.pad_token = int(max_length), int(pad_id), pad_token
        options = ort.SessionOptions()
        options.register_custom_ops_library(get_library_path())
        options.intra_op_num_threads = 1  # one short text per call: threads would only wait on each other
        model = tokenizer_graph(spec, self.max_length, path, pad_token)
        self.session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    @classmethod
    def from_dir(cls, directory: str | Path) -> OnnxTextEncoder:
        """From ``tokenizer.json`` + ``encoder.json`` (as the package holds them)."""
        directory = Path(directory)
        meta = json.loads((directory / "encoder.json").read_text(encoding="utf-8"))
        spec = json.loads((directory / "tokenizer.json").read_text(encoding="utf-8"))
        return cls(spec, meta["max_length"], meta["pad_id"], meta.get("pad_token", ""), directory / "tokenizer.json")

    def config(self) -> dict[str, Any]:
        return {"max_length": self.max_length, "pad_id": self.pad_id, "pad_token": self.pad_token}

    def encode(self, text: str) -> list[int]:
        """The ids of one text, special tokens included, truncated at ``max_length``."""
        return self.session.run(["ids"], {"text": np.array([text], dtype=object)})[0].tolist()

    def _token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(text) for text in texts]

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        return pad_batch(self._token_ids(texts), self.pad_id)

    def lengths(self, texts: Sequence[str]) -> np.ndarray:
        return np.array([len(t) for t in self._token_ids(texts)])


TOKENIZERS = ("auto", "tokenizers", "onnx")


def load_encoder(directory: str | Path, tokenizer: str = "auto") -> Any:
    """The package's text encoder: ``tokenizers`` (the ``tokenizers`` library, as the server encoded), ``onnx``
    (:class:`OnnxTextEncoder`, onnxruntime-extensions) or ``auto`` (``tokenizers`` when it is installed)."""
    import importlib.util

    if tokenizer not in TOKENIZERS:
        raise ValueError(f"tokenizer must be one of {', '.join(TOKENIZERS)}, got {tokenizer!r}")
    if tokenizer == "auto":
        tokenizer = "tokenizers" if importlib.util.find_spec("tokenizers") is not None else "onnx"
    if tokenizer == "tokenizers":
        from edgetune.tokenization import TextEncoder

        return TextEncoder.from_dir(directory)
    if importlib.util.find_spec("onnxruntime_extensions") is None:
        raise TokenizerNotSupported(
            "tokenizing in onnxruntime needs onnxruntime-extensions (pip install onnxruntime-extensions, or "
            "edgetune[hf]); or install tokenizers"
        )
    return OnnxTextEncoder.from_dir(directory)
