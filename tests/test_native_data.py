"""libedgetune_device reads a user's data file as edgetune's Python reader does (edgetune.data.load_dataset):
the same texts, labels and rows on the real corpora written as CSV and as JSON Lines and on generated
CSVs with every quoting and line-ending oddity; where Python refuses a file, the library refuses it at the
same row, with an error code and a message."""

from __future__ import annotations

import json
import random
import re

import pytest

from device_sim.native import NativeError, NativePackage, read_dataset
from edgetune.data import DataError, LabelMap, load_dataset
from edgetune.datasets import CORPORA

# the real corpora the examples extra installs (the others need the planner study's packages)
EXAMPLE_CORPORA = ("bbc-news", "tweets")

pytestmark = [pytest.mark.timeout(900), pytest.mark.usefixtures("native_library")]


def both(path, **columns):
    """Python's reading and the library's, or the row each refused at (``("refused", row)``)."""
    try:
        data = load_dataset(path, **columns)
        python = (data.texts, data.labels, list(data.rows))
    except DataError as err:
        python = ("refused", _row(str(err)))
    try:
        texts, names, _, rows = read_dataset(path, text_column=columns.get("text_column", "text"),
                                             label_column=columns.get("label_column", "label"))  # fmt: skip
        native = (texts, names, rows)
    except NativeError as err:
        assert err.status == "data", err
        native = ("refused", _row(str(err)))
    return python, native


def _row(message: str) -> int | None:
    found = re.search(r": row (\d+):", message)
    return int(found.group(1)) if found else None


@pytest.mark.parametrize("corpus", EXAMPLE_CORPORA)
def test_every_bundled_corpus_as_csv_and_jsonl(corpus, tmp_path):
    data = CORPORA[corpus]()
    data.to_csv(tmp_path / "data.csv")
    with open(tmp_path / "data.jsonl", "w", encoding="utf-8") as f:
        for text, label in zip(data.texts, data.labels):
            f.write(json.dumps({"label": label, "text": text}) + "\n")
    for name in ("data.csv", "data.jsonl"):
        python, native = both(tmp_path / name)
        assert python[0] != "refused" and native == python


PIECES = ["a", "b c", ",", '"', '""', "\n", "\r\n", "\r", " ", "\u00a0", "é", "中", "'", "\t", 'x"y', '"q"z']


def generated_csv(rng: random.Random) -> str:
    """Mostly valid files (a text of random pieces, quoted or not, and a label), with broken ones mixed in."""
    rows = ["text,label"] if rng.random() < 0.95 else [rng.choice(["text,label,text", " text , label ", "text"])]
    for _ in range(rng.randint(0, 6)):
        raw = "w" + "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 4)))
        if rng.random() < 0.5:
            text = '"' + raw.replace('"', '""') + '"'
        else:  # unquoted: what a careless writer leaves (separators and quotes inside are the oddities)
            text = raw if rng.random() < 0.3 else raw.replace(",", ";").replace("\n", " ").replace("\r", " ")
        label = rng.choice(["a", "b", " c ", '"d"', '"e,f"', "", "a,b"] if rng.random() < 0.2 else ["a", "b"])
        rows.append(f"{text},{label}")
        if rng.random() < 0.2:
            rows.append(rng.choice(["", " ", ",", " , "]))
    ending = rng.choice(["\n", "\r\n", "\r"])
    text = ending.join(rows) + rng.choice(["", ending])
    if rng.random() < 0.1:
        text = "\ufeff" + text
    if rng.random() < 0.05:
        text += '"unterminated'
    return text


def test_generated_csvs_read_alike(tmp_path):
    """400 CSVs from random quoting, doubled quotes, separators and line endings (and broken ones)."""
    rng = random.Random(0)
    agree = refused = 0
    for i in range(400):
        path = tmp_path / f"g{i}.csv"
        path.write_bytes(generated_csv(rng).encode("utf-8"))
        python, native = both(path)
        assert native == python, (path.read_bytes(), python, native)
        agree += 1
        refused += python[0] == "refused"
    assert refused > 20 and agree - refused > 150  # both kinds of file were exercised


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        (b"", ".csv", r"file is empty"),
        (b"  \n\n", ".csv", r"file is empty"),
        (b"text,label\n", ".csv", r"header but no rows"),
        (b"words,label\nhi,a\n", ".csv", r"row 2: missing column 'text' \(columns found: 'words', 'label'\)"),
        (b"text,label\nhi,\n", ".csv", r"row 2: empty label in column 'label'"),
        (b"text,label\n  ,a\n", ".csv", r"row 2: empty text"),
        (b"text,label\nok,a\nbad\xff,a\n", ".csv", r"row 3: not valid UTF-8 \(byte 0xff"),
        (b"text,text\nx,y\n", ".csv", r"row 1: column 'text' appears more than once"),
        (b"text,label\nx,a,b\n", ".csv", r"row 2: expected 2 fields, found 3"),
        (b'{"text": "x", "label": "a"}\n[1]\n', ".jsonl", r"row 2: expected a JSON object"),
        (b'{"text": "x", "label": "a"}\n{"text": \n', ".jsonl", r"row 2: invalid JSON"),
        (b'{"text": 5, "label": "a"}\n', ".jsonl", r"row 1: empty text"),
        (b'{"text": "x", "label": null}\n', ".jsonl", r"row 1: empty label"),
        (b"text,label\nx,a\n", ".txt", r"unsupported file type '\.txt'"),
    ],
)
def test_bad_files_are_refused_with_the_row(tmp_path, content, suffix, message):
    path = tmp_path / f"data{suffix}"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        load_dataset(path)
    with pytest.raises(NativeError, match=message + r".*\[data\]"):
        read_dataset(path)


def test_labels_must_be_the_packages(swap_packages, tmp_path):
    pkg = swap_packages["old"]  # a tiny BERT package (shared with the swap tests)
    (tmp_path / "ok.csv").write_text("text,label\nhello,beta\nworld,alpha\n")
    (tmp_path / "bad.csv").write_text("text,label\nhello,beta\nworld,omega\n")
    with NativePackage(pkg) as package:
        assert package.labels == ["alpha", "beta", "gamma"]
        _, names, indices, rows = read_dataset(tmp_path / "ok.csv", package)
        assert names == ["beta", "alpha"] and indices == [1, 0] and rows == [2, 3]
        with pytest.raises(NativeError, match=r"row 3: label 'omega' was not seen in training \(known labels: "
                                              r"alpha, beta, gamma\) \[data\]"):  # fmt: skip
            read_dataset(tmp_path / "bad.csv", package)
        texts, _, unlabelled, _ = read_dataset(tmp_path / "bad.csv", package, labelled=False)
        assert texts == ["hello", "world"] and unlabelled == [-1, -1]
    with pytest.raises(DataError, match=r"row 3: label 'omega' was not seen"):
        data = load_dataset(tmp_path / "bad.csv")
        LabelMap(("alpha", "beta", "gamma")).encode(data.labels, data.source, data.rows)
    with pytest.raises(NativeError, match=r"file not found \[data\]"):
        read_dataset(tmp_path / "missing.csv")
    with pytest.raises(NativeError, match=r"is a directory"):
        read_dataset(tmp_path)
