"""Generate ``native/src/unicode_tables.inc``: the character tables of the BERT-style (WordPiece) tokenizer.

The tables are read off the reference implementation itself, the ``tokenizers`` library: every code point is
passed through each step of its ``BertNormalizer`` and ``BertPreTokenizer`` alone, and what the step did to it
is recorded. So the C++ tokenizer reproduces that library's Unicode rules (its categories, case mapping and
decompositions), not another library's version of them; Hangul syllables, whose decomposition is arithmetic,
are checked against the formula instead of being listed. Run it again after upgrading ``tokenizers``::

    python native/tools/gen_unicode_tables.py        # rewrites native/src/unicode_tables.inc

The conformance test (``tests/test_native_tokenizer.py``) compares the C++ tokenizer with ``tokenizers`` on
real corpora and on every listed character.
"""

from __future__ import annotations

import sys
from pathlib import Path

import tokenizers
from tokenizers.normalizers import BertNormalizer
from tokenizers.pre_tokenizers import BertPreTokenizer

OUT = Path(__file__).resolve().parent.parent / "src" / "unicode_tables.inc"
HANGUL_FIRST, HANGUL_LAST = 0xAC00, 0xD7A3


def code_points() -> list[int]:
    return [cp for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF]  # surrogates are not characters


def hangul_nfd(cp: int) -> str:
    """The canonical decomposition of a Hangul syllable (Unicode chapter 3.12)."""
    s = cp - HANGUL_FIRST
    lead, vowel, tail = 0x1100 + s // 588, 0x1161 + (s % 588) // 28, 0x11A7 + s % 28
    return chr(lead) + chr(vowel) + (chr(tail) if tail != 0x11A7 else "")


def ranges(members: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for cp in members:
        if out and out[-1][1] == cp - 1:
            out[-1] = (out[-1][0], cp)
        else:
            out.append((cp, cp))
    return out


def step(**flags: bool) -> BertNormalizer:
    settings = {"clean_text": False, "handle_chinese_chars": False, "strip_accents": False, "lowercase": False}
    return BertNormalizer(**{**settings, **flags})


def probe() -> dict[str, object]:
    clean, chinese = step(clean_text=True), step(handle_chinese_chars=True)
    strip, lower = step(strip_accents=True), step(lowercase=True)
    pre = BertPreTokenizer()
    removed, spaced, han, punct, split_space = [], [], [], [], []
    strip_map: dict[int, str] = {}
    lower_map: dict[int, str] = {}
    for cp in code_points():
        c = chr(cp)
        cleaned = clean.normalize_str(c)
        if cleaned == "":
            removed.append(cp)
        elif cleaned == " " and c != " ":
            spaced.append(cp)
        elif cleaned != c:
            raise SystemExit(f"clean_text turned U+{cp:04X} into {cleaned!r}: not a removal or a space")
        isolated = chinese.normalize_str(c)
        if isolated == f" {c} ":
            han.append(cp)
        elif isolated != c:
            raise SystemExit(f"handle_chinese_chars turned U+{cp:04X} into {isolated!r}")
        stripped = strip.normalize_str(c)
        if HANGUL_FIRST <= cp <= HANGUL_LAST:
            if stripped != hangul_nfd(cp):
                raise SystemExit(f"U+{cp:04X}: tokenizers' decomposition is not the Hangul formula")
        elif stripped != c:
            strip_map[cp] = stripped
        lowered = lower.normalize_str(c)
        if lowered != c:
            lower_map[cp] = lowered
        words = [w for w, _ in pre.pre_tokenize_str(f"a{c}a")]
        if words == ["a", "a"]:
            split_space.append(cp)
        elif words == ["a", c, "a"]:
            punct.append(cp)
        elif words != [f"a{c}a"]:
            raise SystemExit(f"BertPreTokenizer split a U+{cp:04X} a as {words!r}")
    return {
        "removed": ranges(removed), "spaced": ranges(spaced), "chinese": ranges(han), "punct": ranges(punct),
        "split_space": ranges(split_space), "strip": strip_map, "lower": lower_map,
    }  # fmt: skip


def wrapped(items: list[str], width: int = 110) -> str:
    """``items`` comma-separated, in lines of at most ``width`` characters (the file stays diffable)."""
    lines, line = [], ""
    for item in items:
        if line and len(line) + len(item) + 1 > width:
            lines.append(line)
            line = ""
        line += item + ","
    return "\n    ".join(lines + [line]) if line or lines else "0"


def c_ranges(name: str, rs: list[tuple[int, int]]) -> str:
    body = "\n    " + wrapped([f"{{0x{a:X},0x{b:X}}}" for a, b in rs]) + "\n"
    return f"static const CodeRange {name}[] = {{{body}}};\nstatic const size_t {name}Size = {len(rs)};\n"


def c_mapping(name: str, mapping: dict[int, str]) -> str:
    data: list[int] = []
    entries = []
    for cp in sorted(mapping):
        out = [ord(ch) for ch in mapping[cp]]
        entries.append(f"{{0x{cp:X},{len(data)},{len(out)}}}")
        data += out
    return (
        f"static const uint32_t {name}Data[] = {{\n    {wrapped([f'0x{x:X}' for x in data])}\n}};\n"
        f"static const CodeMapping {name}[] = {{\n    {wrapped(entries)}\n}};\n"
        f"static const size_t {name}Size = {len(entries)};\n"
    )


def main() -> int:
    tables = probe()
    text = (
        f"// Generated by native/tools/gen_unicode_tables.py from tokenizers {tokenizers.__version__}: do not edit.\n"
        "// Sorted ranges (inclusive) and sorted code point -> replacement mappings of BertNormalizer's and\n"
        "// BertPreTokenizer's steps. Hangul syllables decompose by formula (not listed).\n"
        + c_ranges("kCleanRemoved", tables["removed"])
        + c_ranges("kCleanSpaced", tables["spaced"])
        + c_ranges("kChinese", tables["chinese"])
        + c_ranges("kPunctuation", tables["punct"])
        + c_ranges("kSplitSpace", tables["split_space"])
        + c_mapping("kStripAccents", tables["strip"])
        + c_mapping("kLowercase", tables["lower"])
    )
    OUT.write_text(text)
    print(f"{OUT}: {len(text):,} bytes (tokenizers {tokenizers.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
