"""The package's tokenizer as an onnxruntime-extensions graph: the same ids as the ``tokenizers`` library (special
tokens and truncation included), on a tiny WordPiece tokenizer here and on every text of real corpora (slow), and
`predict` from text to labels with neither tokenizers nor torch importable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from device_sim.onnx_tokenizer import OnnxTextEncoder, TokenizerNotSupported, load_encoder
from edgetune.tokenization import TextEncoder
from tests.conftest import VOCAB, build_tokenizer, synthetic_rows

pytest.importorskip("onnxruntime_extensions")  # the dev extra installs it: CI runs these tests

TRICKY = [
    "Chelsea WON the Cup-final, 3-1!",
    "Café crème à la carte — naïve façade",  # accents stripped by the BERT normalizer
    "unbelievable footballers",  # split into ## pieces
    "zzzz qqq",  # unknown words
    "东京 tokyo",  # Chinese characters are split one by one
    "",
    "  spaces\tand\nnewlines  ",
    " ".join(["goal"] * 40),  # truncated at max_length
]


def wordpiece_tokenizer(directory: Path, max_length: int = 12, family: str = "bert") -> Path:
    """A BERT-style WordPiece tokenizer over a small vocabulary, saved as a package holds it; ``family="mpnet"``:
    MPNet's shape instead (``<s> A </s>`` by a RobertaProcessing post-processor, as all-mpnet-base-v2's)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    specials = ["<s>", "<pad>", "</s>", "[UNK]", "<mask>"] if family == "mpnet" else ["[PAD]", "[UNK]", "[CLS]",
                                                                                      "[SEP]", "[MASK]"]  # fmt: skip
    pieces = [*specials, *VOCAB, "chelsea", "won", "the", "cup", "final", "cafe",
              "creme", "a", "la", "carte", "naive", "facade", "un", "##bel", "##iev", "##able", "football", "##ers",
              "东", "京", "tokyo", "spaces", "and", "new", "##lines", "goal", "-", ",", "!", "—", "3", "1"]  # fmt: skip
    vocab = {piece: i for i, piece in enumerate(dict.fromkeys(pieces))}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    if family == "mpnet":
        tok.post_processor = processors.RobertaProcessing(("</s>", vocab["</s>"]), ("<s>", vocab["<s>"]))
        TextEncoder(tok, max_length, vocab["<pad>"], "<pad>").save(directory)
        return directory
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    TextEncoder(tok, max_length, vocab["[PAD]"], "[PAD]").save(directory)
    return directory


@pytest.mark.parametrize("family", ["bert", "mpnet"])
def test_the_graph_gives_the_tokenizers_ids_on_a_tiny_wordpiece_tokenizer(family, tmp_path):
    directory = wordpiece_tokenizer(tmp_path, family=family)
    texts = TRICKY + [t for t, _ in synthetic_rows(30)]
    want = TextEncoder.from_dir(directory)
    got = OnnxTextEncoder.from_dir(directory)
    assert [got.encode(t) for t in texts] == [want.tokenizer.encode(t).ids for t in texts]
    closing = 3 if family == "bert" else 2  # [SEP] / </s>
    assert max(len(got.encode(t)) for t in texts) == 12 and got.encode(TRICKY[-1])[-1] == closing  # cut, kept
    for a, b in zip(got(texts), want(texts)):  # padded batches too
        assert np.array_equal(a, b)
    assert np.array_equal(got.lengths(texts), want.lengths(texts))


def test_other_tokenizer_families_are_refused(tmp_path):
    build_tokenizer("bert").save_pretrained(tmp_path / "wordlevel")  # the tiny models' WordLevel tokenizer
    TextEncoder.from_pretrained(tmp_path / "wordlevel").save(tmp_path / "wordlevel-package")
    with pytest.raises(TokenizerNotSupported, match="WordLevel"):
        OnnxTextEncoder.from_dir(tmp_path / "wordlevel-package")
    directory = wordpiece_tokenizer(tmp_path / "no-template")
    spec = json.loads((directory / "tokenizer.json").read_text())
    spec["post_processor"] = None
    (directory / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(TokenizerNotSupported, match="template"):
        OnnxTextEncoder.from_dir(directory)
    with pytest.raises(ValueError, match="tokenizer must be one of"):
        load_encoder(directory, "sentencepiece")


@pytest.mark.slow
def test_minilm_ids_are_identical_on_every_text_of_real_corpora(tmp_path):
    """all-MiniLM-L6-v2's WordPiece tokenizer, max_length 128: every BBC news article (long: truncated) and every
    tweet (emoji, mentions, URLs) gives the same ids in the graph as in tokenizers."""
    from edgetune.datasets import bbc_news, minilm_path, tweets

    TextEncoder.from_pretrained(minilm_path(), 128).save(tmp_path)
    want, got = TextEncoder.from_dir(tmp_path), OnnxTextEncoder.from_dir(tmp_path)
    for corpus in (bbc_news(), tweets()):
        texts = list(corpus.texts)
        expected = want._token_ids(texts)
        mismatches = [i for i, text in enumerate(texts) if got.encode(text) != expected[i]]
        assert mismatches == [], f"{corpus.source}: {len(mismatches)} of {len(texts)} texts differ"
        assert max(len(ids) for ids in expected) == 128  # truncation was exercised


PREDICT_WITHOUT_TOKENIZERS = """
import json, sys
sys.modules["torch"] = None  # a device with onnxruntime and its extensions, nothing else
sys.modules["tokenizers"] = None
sys.modules["transformers"] = None
from typer.testing import CliRunner
from edgetune_cli import app
result = CliRunner().invoke(app, ["predict", *sys.argv[1:]])
assert result.exit_code == 0, (result.output, repr(result.exception))
print(json.dumps({"output": result.output, "loaded": sorted(m for m in ("torch", "tokenizers", "transformers")
                  if sys.modules.get(m) is not None)}))
"""


@pytest.mark.slow
def test_predict_runs_text_to_labels_in_onnxruntime_alone(tmp_path):
    """A package whose tokenizer is WordPiece predicts with --tokenizer auto in a process where tokenizers, torch
    and transformers cannot be imported, and answers exactly as the tokenizers + torch path."""
    from transformers import AutoModel, PreTrainedTokenizerFast
    from typer.testing import CliRunner

    from edgetune_cli import app
    from tests.conftest import tiny_config, write_csv
    from tests.devices import export_probe_package

    tokenizer = wordpiece_tokenizer(tmp_path / "tok", max_length=16) / "tokenizer.json"
    config = tiny_config("bert")
    config.vocab_size = len(json.loads(tokenizer.read_text())["model"]["vocab"])
    model = tmp_path / "model"
    AutoModel.from_config(config).save_pretrained(model)
    specials = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]"}
    PreTrainedTokenizerFast(tokenizer_file=str(tokenizer), model_max_length=16, **specials).save_pretrained(model)
    package = export_probe_package(model, tmp_path / "pkg", top_onnx=True)
    texts = [t for t in [*TRICKY, *(t for t, _ in synthetic_rows(8))] if t.strip()]  # a CSV row needs a text
    csv = write_csv(tmp_path / "texts.csv", [(t, "alpha") for t in texts])
    args = ["--package", str(package), "--data", str(csv), "--format", "jsonl", "--logits", "--runtime", "onnx"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    run = subprocess.run([sys.executable, "-c", PREDICT_WITHOUT_TOKENIZERS, *args], capture_output=True, text=True,
                         env=env, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["loaded"] == []
    reference = CliRunner().invoke(app, ["predict", *args[:-2], "--runtime", "torch", "--tokenizer", "tokenizers"])
    assert reference.exit_code == 0, reference.output
    got = [json.loads(line) for line in report["output"].strip().splitlines()]
    want = [json.loads(line) for line in reference.output.strip().splitlines()]
    assert [g["label"] for g in got] == [w["label"] for w in want]
    assert np.abs(np.array([g["logits"] for g in got]) - np.array([w["logits"] for w in want])).max() < 1e-4
