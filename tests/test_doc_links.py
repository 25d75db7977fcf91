"""Every relative link in README.md and docs/*.md points at a file of the checkout, and a link to a heading of a
Markdown file (``results.md#backbone-swap``) at a heading that file has."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def relative_links(text: str) -> list[str]:
    """The link targets of Markdown TEXT outside code blocks, without the web ones and the mail ones."""
    return [t for t in LINK.findall(FENCE.sub("", text)) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def anchors(text: str) -> set[str]:
    """The heading anchors GitHub gives a Markdown file: lower case, punctuation dropped, spaces as hyphens."""
    slugs: set[str] = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *$", FENCE.sub("", text), re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        n = 1
        unique = slug
        while unique in slugs:
            unique, n = f"{slug}-{n}", n + 1
        slugs.add(unique)
    return slugs


def broken_links(path: Path) -> list[str]:
    """One line per relative link of PATH whose file or heading does not exist."""
    broken = []
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    text = path.read_text()
    for target in relative_links(text):
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            broken.append(f"{shown}: {target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text()):
            broken.append(f"{shown}: {target} (no such heading)")
    return broken


def test_relative_links_point_at_existing_files_and_headings() -> None:
    files = markdown_files()
    assert ROOT / "docs" / "results.md" in files and ROOT / "docs" / "README.md" in files
    assert [b for path in files for b in broken_links(path)] == []


def test_the_link_check_finds_a_broken_link(tmp_path: Path) -> None:
    assert relative_links("[a](x.md) [b](https://example.org) `[c](y.md)`\n```\n[d](z.md)\n```\n") == [
        "x.md",
        "y.md",
    ]
    assert anchors("# Results\n## Where to fine-tune: the planner study\n## Export\n## Export\n") == {
        "results",
        "where-to-fine-tune-the-planner-study",
        "export",
        "export-1",
    }
    (tmp_path / "a.md").write_text("# Top\n[ok](b.md#export) [self](#top) [gone](c.png) [heading](b.md#nosuch)\n")
    (tmp_path / "b.md").write_text("## Export\n")
    assert broken_links(tmp_path / "a.md") == [
        f"{tmp_path / 'a.md'}: c.png (no such file)",
        f"{tmp_path / 'a.md'}: b.md#nosuch (no such heading)",
    ]
