import json

import numpy as np
import pytest

from edgetune.data import DataError, LabelMap, TextDataset, load_dataset, sample, stratified_split
from tests.conftest import synthetic_rows, write_csv


def test_csv_and_jsonl_load_the_same_rows(tmp_path):
    rows = synthetic_rows(12)
    csv_ds = load_dataset(write_csv(tmp_path / "d.csv", rows))
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": t, "label": y}) for t, y in rows) + "\n")
    jsonl_ds = load_dataset(jsonl)
    assert csv_ds.texts == jsonl_ds.texts == [t for t, _ in rows]
    assert csv_ds.labels == jsonl_ds.labels
    assert csv_ds.rows[0] == 2  # header is row 1


def test_configurable_columns(tmp_path):
    path = write_csv(tmp_path / "d.csv", [("hello there", "x"), ("bye now", "y")], header=("body", "topic"))
    ds = load_dataset(path, text_column="body", label_column="topic")
    assert ds.labels == ["x", "y"]
    unlabeled = load_dataset(path, text_column="body", label_column=None)
    assert unlabeled.labels == ["", ""]


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_missing_column_names_file_row_and_columns(tmp_path):
    path = write_csv(tmp_path / "d.csv", [("hello", "x")], header=("body", "label"))
    with pytest.raises(DataError) as err:
        load_dataset(path)
    msg = _one_line(err)
    assert str(path) in msg and "row 2" in msg and "'text'" in msg and "'body'" in msg


def test_empty_file_and_header_only(tmp_path):
    empty = tmp_path / "e.csv"
    empty.write_text("")
    with pytest.raises(DataError, match="file is empty"):
        load_dataset(empty)
    header = tmp_path / "h.csv"
    header.write_text("text,label\n")
    with pytest.raises(DataError, match="no rows"):
        load_dataset(header)


def test_empty_text_names_row(tmp_path):
    path = write_csv(tmp_path / "d.csv", [("fine", "x"), ("   ", "y")])
    with pytest.raises(DataError) as err:
        load_dataset(path)
    assert "row 3" in _one_line(err) and "empty text" in str(err.value)


def test_empty_label_names_row(tmp_path):
    path = write_csv(tmp_path / "d.csv", [("fine", "x"), ("text", "")])
    with pytest.raises(DataError, match="row 3: empty label"):
        load_dataset(path)


def test_wrong_encoding_names_row(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("text,label\nok,x\ncaf\u00e9 au lait,y\n".encode("latin-1"))
    with pytest.raises(DataError) as err:
        load_dataset(path)
    msg = _one_line(err)
    assert "row 3" in msg and "UTF-8" in msg and str(path) in msg


def test_unknown_label_names_row_and_known_labels(tmp_path):
    train = load_dataset(write_csv(tmp_path / "t.csv", [("a b", "x"), ("c d", "y")]))
    test = load_dataset(write_csv(tmp_path / "u.csv", [("a", "x"), ("b", "z")]))
    with pytest.raises(DataError) as err:
        test.encoded_labels(train.label_map())
    msg = _one_line(err)
    assert "row 3" in msg and "'z'" in msg and "x, y" in msg and "u.csv" in msg


def test_other_bad_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_dataset(tmp_path / "missing.csv")
    bad = tmp_path / "d.txt"
    bad.write_text("x")
    with pytest.raises(DataError, match="unsupported file type"):
        load_dataset(bad)
    jl = tmp_path / "d.jsonl"
    jl.write_text('{"text": "a", "label": "x"}\n{broken\n')
    with pytest.raises(DataError, match="row 2: invalid JSON"):
        load_dataset(jl)
    ragged = tmp_path / "r.csv"
    ragged.write_text("text,label\na,x\nb,y,extra\n")
    with pytest.raises(DataError, match="row 3: expected 2 fields, found 3"):
        load_dataset(ragged)


def test_label_map_round_trip():
    lm = LabelMap.from_labels(["b", "a", "b", "c"])
    assert lm.labels == ("a", "b", "c")
    idx = lm.encode(["c", "a"])
    assert idx.tolist() == [2, 0] and lm.decode(idx) == ["c", "a"]


def test_stratified_split_is_deterministic_and_keeps_proportions():
    rows = synthetic_rows(120)
    ds = TextDataset([t for t, _ in rows], [y for _, y in rows])
    a_train, a_test = stratified_split(ds, 0.25, seed=3)
    b_train, b_test = stratified_split(ds, 0.25, seed=3)
    c_train, _ = stratified_split(ds, 0.25, seed=4)
    assert a_test.texts == b_test.texts and a_train.texts == b_train.texts
    assert a_train.texts != c_train.texts
    assert len(a_test) == 30
    counts = np.unique(a_test.labels, return_counts=True)[1]
    assert counts.tolist() == [10, 10, 10]
    assert set(a_train.rows).isdisjoint(a_test.rows)


def test_sample_size_and_whole_set():
    rows = synthetic_rows(60)
    ds = TextDataset([t for t, _ in rows], [y for _, y in rows])
    assert len(sample(ds, 21, seed=0)) == 21
    assert sample(ds, 500) is ds


def test_csv_round_trip_is_atomic_write(tmp_path):
    rows = synthetic_rows(5)
    ds = TextDataset([t for t, _ in rows], [y for _, y in rows])
    ds.to_csv(tmp_path / "out.csv")
    assert load_dataset(tmp_path / "out.csv").texts == ds.texts
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
