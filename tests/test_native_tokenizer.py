"""libedgetune_device's WordPiece tokenizer against the ``tokenizers`` library: the same ids on every text of
the bundled real corpora (truncation and special tokens included), on every Unicode character, for the BERT
(MiniLM) and MPNet post-processors and a cased normalizer; and clear errors, never a crash, on bad input.

The library is really built (CMake, the documented command): never skipped."""

from __future__ import annotations

import ctypes
import json

import pytest

from device_sim.native import NativeError, NativeTokenizer, load_library
from edgetune.datasets import CORPORA, minilm_path

# the real corpora the examples extra installs (the others need the planner study's packages)
EXAMPLE_CORPORA = ("bbc-news", "tweets")

pytestmark = [pytest.mark.timeout(900), pytest.mark.usefixtures("native_library")]


def reference(path, max_length):
    """The spec's procedure (docs/package-format.md, Tokenization) with the tokenizers library."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    tok.no_padding()
    tok.no_truncation()
    if max_length:
        tok.enable_truncation(max_length)
    return tok


def variant(tmp_path, name, change):
    """MiniLM's tokenizer.json with ``change(document)`` applied (another family's post-processor, cased)."""
    doc = json.loads((minilm_path() / "tokenizer.json").read_text())
    change(doc)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(doc))
    return path


def mpnet_style(doc):
    """MPNet's layout: RobertaProcessing with <s> ... </s>, a normalized <unk> and an lstrip <mask>."""
    vocab = doc["model"]["vocab"]
    extra = {"<s>": len(vocab), "</s>": len(vocab) + 1, "<unk>": len(vocab) + 2, "<mask>": len(vocab) + 3}
    vocab.update(extra)
    doc["added_tokens"] += [
        {"id": i, "content": c, "single_word": False, "lstrip": c == "<mask>", "rstrip": False,
         "normalized": c == "<unk>", "special": True}
        for c, i in extra.items()
    ]  # fmt: skip
    doc["post_processor"] = {"type": "RobertaProcessing", "sep": ["</s>", extra["</s>"]],
                             "cls": ["<s>", extra["<s>"]], "trim_offsets": True, "add_prefix_space": False}  # fmt: skip


def cased(doc):
    doc["normalizer"]["lowercase"] = False  # strip_accents null: follows lowercase, so accents are kept too


def assert_same(path, texts, max_length):
    ours = NativeTokenizer(path)
    theirs = [e.ids for e in reference(path, max_length).encode_batch(texts)]
    mismatched = [(t, o, r) for t, r in zip(texts, theirs) if (o := ours.encode(t, max_length)) != r]
    assert not mismatched, f"{len(mismatched)} of {len(texts)} texts differ; first: {mismatched[0]}"


@pytest.mark.parametrize("corpus", EXAMPLE_CORPORA)
def test_every_text_of_the_real_corpora(corpus):
    """100% of each bundled corpus's texts, at a package's usual length (64) and at BERT's limit (512)."""
    texts = CORPORA[corpus]().texts
    for max_length in (64, 512):
        assert_same(minilm_path() / "tokenizer.json", texts, max_length)


def every_character(stride: int = 1):
    """Each Unicode code point (surrogates aside) between letters, beside punctuation and at a word's start,
    in chunks of 50 (every ``stride``-th chunk): with 1, every table row and range boundary is crossed."""
    points = [cp for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF]
    chunks = range(0, len(points), 50 * stride)
    return ["".join(f"a{chr(cp)}b {chr(cp)}x, " for cp in points[i : i + 50]) for i in chunks]


@pytest.mark.parametrize("layout", ["bert", "mpnet", "cased"])
def test_every_character(layout, tmp_path):
    path = {
        "bert": lambda: minilm_path() / "tokenizer.json",
        "mpnet": lambda: variant(tmp_path, "mpnet", mpnet_style),
        "cased": lambda: variant(tmp_path, "cased", cased),
    }[layout]()
    # the tables are the same for every layout: all of them under BERT's, a fifth under the others
    assert_same(path, every_character(1 if layout == "bert" else 5), 0)


def test_special_tokens_and_truncation(tmp_path):
    """Added tokens in the text (raw, normalized, lstrip), the post-processors and truncation from the end."""
    texts = [
        "", " ", "[CLS] hello [SEP] world [MASK]", "[cls] lower case is no special token", "<unk> <UNK> x<mask>y",
        "a  <mask> b", "ﬁnal ﬂow İstanbul ΣΑΣ ǅemal naïve Ångström 한국어 中文字 ｆｕｌｌ", "x" * 101, "x" * 100,
        "word " * 600, "tab\tnew\nline\rcarriage\u00a0nbsp\u200bzero\u0000nul\ufffdrep",
    ]  # fmt: skip
    for path in (minilm_path() / "tokenizer.json", variant(tmp_path, "mpnet", mpnet_style)):
        for max_length in (0, 2, 3, 5, 64):
            assert_same(path, texts, max_length)
    tok = NativeTokenizer(minilm_path() / "tokenizer.json")
    assert tok.encode("[SEP]", 0) == [101, 102, 102]  # the text's [SEP] is the special token, not its pieces
    assert len(tok.encode("word " * 600, 0)) == 602  # no limit: nothing cut


def test_bad_input_is_an_error_with_a_message(tmp_path):
    tok = NativeTokenizer(minilm_path() / "tokenizer.json")
    with pytest.raises(NativeError, match=r"not UTF-8.*\[data\]"):
        tok.encode(b"caf\xe9", 64)
    with pytest.raises(NativeError, match=r"not UTF-8.*\[data\]"):
        tok.encode(b"\xe2\x82", 64)  # a sequence cut short
    with pytest.raises(NativeError, match=r"below the 2 special tokens.*\[data\]"):
        tok.encode("hello", 1)
    with pytest.raises(NativeError, match=r"cannot be read \[io\]"):
        NativeTokenizer(tmp_path / "missing.json")
    truncated = tmp_path / "truncated.json"
    truncated.write_bytes((minilm_path() / "tokenizer.json").read_bytes()[:5000])
    with pytest.raises(NativeError, match=r"invalid JSON at byte .*\[format\]"):
        NativeTokenizer(truncated)
    for name, change, message in [
        ("bpe", lambda d: d["model"].update(type="BPE"), r"model BPE is not supported.*\[unsupported\]"),
        ("seq", lambda d: d.update(normalizer={"type": "Sequence", "normalizers": []}), r"Sequence.*\[unsupported\]"),
        ("nounk", lambda d: d["model"].update(unk_token="<nope>"), r"unk_token <nope>.*\[format\]"),
        ("vocab", lambda d: d["model"].update(vocab=[1, 2]), r"vocab: expected an object.*\[format\]"),
    ]:
        with pytest.raises(NativeError, match=message):
            NativeTokenizer(variant(tmp_path, name, change))


def test_null_pointers_are_refused():
    """The C API itself, called as a careless app would: an error code and a message, no crash."""
    lib = load_library()
    handle = ctypes.c_void_p()
    assert lib.edgetune_tokenizer_open(None, ctypes.byref(handle)) == 1
    assert b"path is NULL" in lib.edgetune_last_error()
    assert lib.edgetune_tokenizer_open(str(minilm_path() / "tokenizer.json").encode(), None) == 1
    assert lib.edgetune_tokenizer_open(str(minilm_path() / "tokenizer.json").encode(), ctypes.byref(handle)) == 0
    count = ctypes.c_size_t()
    ids = (ctypes.c_int64 * 4)()
    assert lib.edgetune_tokenizer_encode(None, b"x", 1, 0, ids, 4, ctypes.byref(count)) == 1
    assert lib.edgetune_tokenizer_encode(handle, None, 3, 0, ids, 4, ctypes.byref(count)) == 1
    assert lib.edgetune_tokenizer_encode(handle, b"x", 1, 0, None, 4, ctypes.byref(count)) == 1
    assert lib.edgetune_tokenizer_encode(handle, b"x", 1, 0, ids, 4, None) == 1
    assert lib.edgetune_tokenizer_encode(handle, None, 0, 0, ids, 4, ctypes.byref(count)) == 0  # empty text
    assert list(ids[: count.value]) == [101, 102]
    assert lib.edgetune_tokenizer_encode(handle, b"hello world", 11, 0, ids, 1, ctypes.byref(count)) == 6
    assert count.value == 4  # the size needed, reported with EDGETUNE_ERROR_CAPACITY
    lib.edgetune_tokenizer_close(handle)
    lib.edgetune_tokenizer_close(None)
    assert lib.edgetune_version().decode().count(".") == 2
