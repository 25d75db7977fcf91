"""Labelled text data: CSV / JSONL loading, label maps and stratified splits.

Every problem with a user's file is reported as a :class:`DataError` whose
message is one line naming the file and, where there is one, the row, so that
a mistake on a device or in a pipeline is fixed without reading a traceback.
Row numbers are 1-based and count the CSV header as row 1, i.e. they are the
line numbers an editor shows (for JSONL, the line number).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgetune.errors import EdgetuneError

SUPPORTED_SUFFIXES = (".csv", ".jsonl", ".json")


class DataError(EdgetuneError, ValueError):
    """A user's data file cannot be used as given; the message says where and why."""


@dataclass(frozen=True)
class LabelMap:
    """Bidirectional map between label names and class indices (sorted, stable)."""

    labels: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"duplicate labels in label map: {list(self.labels)}")

    @classmethod
    def from_labels(cls, labels: Iterable[str]) -> LabelMap:
        return cls(tuple(sorted(set(labels))))

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def index(self) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.labels)}

    def encode(self, labels: Sequence[str], source: str = "<data>", rows: Sequence[int] | None = None) -> np.ndarray:
        """Class indices for ``labels``; an unknown label names its row."""
        index = self.index
        out = np.empty(len(labels), dtype=np.int64)
        for i, label in enumerate(labels):
            if label not in index:
                row = rows[i] if rows is not None else i + 1
                raise DataError(
                    f"{source}: row {row}: label {label!r} was not seen in training "
                    f"(known labels: {', '.join(self.labels)})"
                )
            out[i] = index[label]
        return out

    def decode(self, indices: Iterable[int]) -> list[str]:
        return [self.labels[int(i)] for i in indices]

    def to_json(self) -> list[str]:
        return list(self.labels)


@dataclass
class TextDataset:
    """Texts with string labels, plus the file rows they came from (for errors)."""

    texts: list[str]
    labels: list[str]
    source: str = "<memory>"
    rows: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ValueError("texts and labels differ in length")
        if not self.rows:
            self.rows = list(range(1, len(self.texts) + 1))

    def __len__(self) -> int:
        return len(self.texts)

    def label_map(self) -> LabelMap:
        return LabelMap.from_labels(self.labels)

    def encoded_labels(self, label_map: LabelMap) -> np.ndarray:
        return label_map.encode(self.labels, source=self.source, rows=self.rows)

    def subset(self, indices: Iterable[int]) -> TextDataset:
        idx = list(indices)
        return TextDataset(
            [self.texts[i] for i in idx], [self.labels[i] for i in idx], self.source, [self.rows[i] for i in idx]
        )

    def to_csv(self, path: str | Path, text_column: str = "text", label_column: str = "label") -> None:
        """Write as CSV (atomically: a crash leaves either the old file or the new one)."""
        from edgetune.io import atomic_write_text

        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow([text_column, label_column])
        writer.writerows(zip(self.texts, self.labels))
        atomic_write_text(path, buf.getvalue())


def _decode(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(
            f"{path}: row {line}: not valid UTF-8 (byte 0x{raw[err.start]:02x} at offset {err.start}); "
            "re-save the file as UTF-8"
        ) from None


def load_dataset(
    path: str | Path,
    text_column: str = "text",
    label_column: str | None = "label",
) -> TextDataset:
    """Load a CSV (with header) or JSONL file of ``text,label`` rows.

    ``label_column=None`` loads unlabelled text (for prediction); labels are then ``""``.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a .csv or .jsonl file")
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DataError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(SUPPORTED_SUFFIXES)}")
    text = _decode(path, path.read_bytes())
    if not text.strip():
        raise DataError(f"{path}: file is empty")
    if suffix == ".csv":
        records = _read_csv(path, text)
    else:
        records = _read_jsonl(path, text)
    if not records:
        raise DataError(f"{path}: file has a header but no rows")

    texts: list[str] = []
    labels: list[str] = []
    rows: list[int] = []
    for row, record in records:
        # every missing column at once: fixing one only to be told of the next wastes a run
        missing = [
            (column, flag)
            for column, flag in ((text_column, "--text-column"), (label_column, "--label-column"))
            if column is not None and column not in record
        ]
        if missing:
            found = ", ".join(repr(c) for c in record) or "none"
            names = " and ".join(repr(c) for c, _ in missing)
            flags = " and ".join(f for _, f in missing)
            raise DataError(
                f"{path}: row {row}: missing column{'s' if len(missing) > 1 else ''} {names} (columns found: "
                f"{found}); name yours with {flags}, or add {'them' if len(missing) > 1 else 'it'}"
            )
        value = record[text_column]
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{path}: row {row}: empty text in column {text_column!r}")
        label = "" if label_column is None else record[label_column]
        if label_column is not None:
            if label is None or (isinstance(label, str) and not label.strip()):
                raise DataError(f"{path}: row {row}: empty label in column {label_column!r}")
            label = str(label).strip()
        texts.append(value)
        labels.append(label)
        rows.append(row)
    return TextDataset(texts, labels, str(path), rows)


# csv's default field limit (131072 characters) would refuse a long document as malformed; the whole file is in
# memory already, so a field may be as long as the file.
_CSV_FIELD_LIMIT = 2**31 - 1


def _read_csv(path: Path, text: str) -> list[tuple[int, dict]]:
    if csv.field_size_limit() < _CSV_FIELD_LIMIT:
        csv.field_size_limit(_CSV_FIELD_LIMIT)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except csv.Error as err:
        raise DataError(f"{path}: row 1: malformed CSV header ({err})") from None
    header = [h.strip() for h in header]
    # dict(zip(...)) would let the last of two equal names win: a silently wrong column, so refuse it
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise DataError(f"{path}: row 1: column {name!r} appears more than once in the header; rename one")
        seen.add(name)
    records = []
    try:
        for values in reader:
            row = reader.line_num
            if not values or all(not v.strip() for v in values):
                continue  # blank line
            if len(values) != len(header):
                raise DataError(f"{path}: row {row}: expected {len(header)} fields, found {len(values)}")
            records.append((row, dict(zip(header, values))))
    except csv.Error as err:
        raise DataError(f"{path}: row {reader.line_num}: malformed CSV ({err})") from None
    return records


def _read_jsonl(path: Path, text: str) -> list[tuple[int, dict]]:
    records = []
    # Records end at "\n" only (JSON Lines): str.splitlines() would also break at U+2028, U+0085 and the other
    # Unicode line separators, which a valid JSON string may hold raw.
    for row, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: row {row}: invalid JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}: row {row}: expected a JSON object per line")
        records.append((row, record))
    return records


def stratified_split(
    dataset: TextDataset, test_size: float | int = 0.2, seed: int = 0
) -> tuple[TextDataset, TextDataset]:
    """Split keeping label proportions; same seed, same split.

    ``test_size`` is a fraction in (0, 1) or a number of examples.
    """
    from sklearn.model_selection import train_test_split

    if isinstance(test_size, float) and not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be in (0, 1), got {test_size}")
    if isinstance(test_size, int) and not 0 < test_size < len(dataset):
        raise ValueError(f"test_size must be between 1 and {len(dataset) - 1}, got {test_size}")
    idx = np.arange(len(dataset))
    counts = {label: dataset.labels.count(label) for label in set(dataset.labels)}
    stratify = dataset.labels if min(counts.values()) >= 2 else None
    train_idx, test_idx = train_test_split(idx, test_size=test_size, random_state=seed, stratify=stratify)
    return dataset.subset(sorted(train_idx)), dataset.subset(sorted(test_idx))


def sample(dataset: TextDataset, n: int, seed: int = 0) -> TextDataset:
    """A stratified sample of at most ``n`` examples (the whole set if smaller)."""
    if n >= len(dataset):
        return dataset
    _, picked = stratified_split(dataset, test_size=int(n), seed=seed)
    return picked


def content_rank(dataset: TextDataset, seed: int = 0) -> np.ndarray:
    """Indices of ``dataset`` ordered by a keyed hash of each example's (label, text): the order depends on the
    examples and the seed, never on the order of the rows (duplicates keep their file order)."""
    import hashlib

    key = seed.to_bytes(8, "little", signed=True)
    digests = [
        hashlib.blake2b(f"{label}\x1f{text}".encode("utf-8", "surrogatepass"), digest_size=8, key=key).digest()
        for text, label in zip(dataset.texts, dataset.labels)
    ]
    return np.array(sorted(range(len(dataset)), key=lambda i: digests[i]), dtype=np.int64)


def order_invariant_sample(dataset: TextDataset, n: int, seed: int = 0) -> TextDataset:
    """A stratified sample of at most ``n`` examples that the row order of the file cannot change.

    Each label gets its share of ``n`` (largest remainders, ties to the label name) and takes its examples
    in :func:`content_rank` order; the sample is returned in that order too. A larger ``n`` with the same seed
    draws a superset wherever the label shares allow it.
    """
    if n >= len(dataset):
        return dataset.subset(content_rank(dataset, seed))
    ranked = content_rank(dataset, seed)
    by_label: dict[str, list[int]] = {}
    for i in ranked:
        by_label.setdefault(dataset.labels[i], []).append(int(i))
    total = len(dataset)
    exact = {label: n * len(rows) / total for label, rows in by_label.items()}
    quota = {label: int(share) for label, share in exact.items()}
    for label in sorted(exact, key=lambda lb: (-(exact[lb] - quota[lb]), lb))[: n - sum(quota.values())]:
        quota[label] += 1
    picked = {i for label, rows in by_label.items() for i in rows[: quota[label]]}
    return dataset.subset([int(i) for i in ranked if int(i) in picked])
