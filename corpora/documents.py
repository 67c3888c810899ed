"""A source's files as clean documents, split into "calib" and "heldout".

Files are split by a hash of their name: ~90% "calib" (used to choose masks), ~10% "heldout"
(never used for calibration; perplexity and router accuracy); a source of fewer than 10 files
is all "calib". Licence headers are stripped; minified, bundled, generated and near-empty files
are skipped.
"""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
from dataclasses import dataclass

from submodel.corpora.sources import CorpusError, Source

SPLITS = ("calib", "heldout")
HELDOUT_PERCENT = 10
MIN_FILES_FOR_HELDOUT = 10  # a smaller source is used whole for calibration

MIN_NONSPACE_CHARS = 200  # a file with less code than this is near-empty
MAX_LINE_CHARS = 1000  # a longer line means minified or bundled
MAX_MEAN_LINE_CHARS = 150
LICENSE_WORDS = re.compile(
    r"copyright|licen[cs]e|spdx|all rights reserved|permission is hereby granted", re.I)
GENERATED_MARKERS = re.compile(  # looked for in a file's first 2000 characters
    r"@generated|(?-i:DO NOT EDIT)|do not edit( this| by hand| manually|!)|auto-?generated"
    r"|(automatically|mechanically) generated"
    r"|(file|code|header|module|class) (is |was )?generated (by|from)"
    r"|generated (by|from) ['\"]?[\w./-]+\.\w+|sourceMappingURL=data:|webpackBootstrap", re.I)
GENERATED_HINTS = ("generat", "do not edit", "sourcemappingurl", "webpackbootstrap")  # fast check
MINIFIED_NAMES = re.compile(r"[.-]min\.[a-z]+$|\.bundle\.[a-z]+$|\.packed\.[a-z]+$", re.I)
_SPACE = re.compile(r"\s*")
_INDENT = re.compile(r"[ \t]*")


@dataclass(frozen=True)
class Document:
    name: str  # stable name (relative path or zip member): decides the split
    text: str


def documents(source: Source, split: str = "calib") -> list[Document]:
    """The cleaned documents of one split, sorted by name (deterministic)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    docs = []
    for name, text in _read(source, split):
        if _is_junk(name, text):
            continue
        text = strip_license_header(text, source.language)
        if nonspace(text) >= MIN_NONSPACE_CHARS:
            docs.append(Document(name, text))
    if not docs:
        raise CorpusError(f"no usable {split} files for {source.language} in "
                          f"{source.description}: pass --calib {source.language}=PATH")
    return sorted(docs, key=lambda d: d.name)


def strip_license_header(text: str, language: str = "") -> str:
    """Drop the leading comment blocks that carry a copyright or licence; keep other comments.

    Comment blocks: `/* ... */`, runs of `//` lines, and (except in C/C++, where `#` starts a
    preprocessor line) runs of `#` lines, as in Python and shebangs.
    """
    prefixes = ("//",) if language in ("cpp", "c") else ("//", "#")
    pos = kept_from = 0
    while True:
        start = _SPACE.match(text, pos).end()
        end = _comment_block_end(text, start, prefixes)
        if end == start:
            break
        if LICENSE_WORDS.search(text, start, end):
            kept_from = end
        pos = end
    return text[kept_from:].lstrip("\n") if kept_from else text


def _comment_block_end(text: str, start: int, prefixes: tuple[str, ...]) -> int:
    """End of the comment block that begins at `start` (`start` itself if none does)."""
    if text.startswith("/*", start):
        close = text.find("*/", start + 2)
        return start if close < 0 else close + 2
    end = start
    while text.startswith(prefixes, end):
        nl = text.find("\n", end)
        end = len(text) if nl < 0 else _INDENT.match(text, nl + 1).end()
    return end


def _is_junk(name: str, text: str) -> bool:
    """Minified, bundled, generated or binary files."""
    if MINIFIED_NAMES.search(name) or "\0" in text:
        return True
    head = text[:2000]
    lower = head.lower()
    if any(k in lower for k in GENERATED_HINTS) and GENERATED_MARKERS.search(head):
        return True
    lines = [n for n in map(len, text.splitlines()) if n]
    if not lines:
        return True
    return max(lines) > MAX_LINE_CHARS or sum(lines) / len(lines) > MAX_MEAN_LINE_CHARS


def nonspace(text: str) -> int:
    """Characters that are not whitespace."""
    return len(text) - sum(text.count(c) for c in " \t\n\r\f\v")


def _split_of(name: str) -> str:
    h = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    return "heldout" if h % 100 < HELDOUT_PERCENT else "calib"


def _in_split(names: list[str] | tuple[str, ...], split: str) -> list[str]:
    if len(names) < MIN_FILES_FOR_HELDOUT:
        return list(names) if split == "calib" else []
    return [n for n in names if _split_of(n) == split]


def _read(source: Source, split: str):
    """(name, text) for every file of the source in `split`."""
    names = _in_split(source.names, split)
    if source.kind == "files":
        for name in names:
            yield name, (source.root / name).read_bytes().decode("utf-8", "replace")
    elif source.kind == "zip":
        with zipfile.ZipFile(source.root) as z:
            for name in names:
                yield name, z.read(name).decode("utf-8", "replace")
    else:
        records = list(_read_jsonl(source))
        keep = set(_in_split([n for n, _ in records], split))
        yield from ((n, t) for n, t in records if n in keep)


def _read_jsonl(source: Source):
    with open(source.root, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                text = record["text"]
            except (ValueError, KeyError, TypeError):
                raise CorpusError(f"--calib {source.language}={source.root}: line {i} is not a "
                                  'JSON object with a "text" field') from None
            if not isinstance(text, str):
                raise CorpusError(f"--calib {source.language}={source.root}: line {i}: "
                                  '"text" is not a string')
            name = record.get("name") or record.get("path") or f"line {i}"
            yield str(name), text
