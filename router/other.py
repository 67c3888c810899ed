"""Text in languages we do not serve, found on this machine: the detector's "other" class.

C sources and headers, shell scripts, Go, Rust (the rustup docs' rendered sources), TypeScript
declarations, SQL, Perl, PHP, YAML, JSON, Markdown, CSS, HTML/XML, CMake, Vim script and plain
prose. Each kind is capped, and its files are split into calib/heldout by a hash of the path, so
the bench measures files the trainer never saw. Whatever a machine lacks is simply absent.
"""

from __future__ import annotations

import glob
import hashlib
import html
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

MAX_FILES = 150  # per kind: enough variety, bounded training time
MAX_BYTES = 400_000
MAX_LINES = 300  # per file, so that no single big file stands for its kind
HELDOUT_EVERY = 5  # one file in five is held out


@dataclass(frozen=True)
class OtherDocument:
    kind: str
    name: str
    text: str


def _roots() -> list[str]:
    site = str(Path(os.__file__).parent / "site-packages")
    rust = glob.glob(os.path.expanduser("~/.rustup/toolchains/*/share/doc/rust/html/src"))
    return [
        "/usr/include", *glob.glob(str(Path(os.__file__).parents[2] / "include" / "python3*")),
        "/usr/share/doc", "/usr/share/nodejs", "/usr/share/postgresql",
        "/usr/share/perl", "/usr/share/perl5", "/usr/share/vim", "/usr/share/common-licenses",
        *glob.glob("/usr/share/cmake*/Modules"), "/usr/bin", "/usr/sbin", "/usr/lib/git-core",
        "/etc", site, *rust[:1], "/usr/lib/google-cloud-sdk/platform", "/usr/lib/go/src",
        "/usr/local/go/src",
    ]


# File name suffix -> kind; suffix-less files in bin directories are shell if a shebang says so.
SUFFIXES = {
    ".c": "c", ".sh": "shell", ".bash": "shell", ".go": "go", ".rs.html": "rust", ".rs": "rust",
    ".d.ts": "typescript", ".ts": "typescript", ".sql": "sql", ".pm": "perl", ".pl": "perl",
    ".php": "php", ".yaml": "yaml", ".yml": "yaml", ".json": "json", ".md": "markdown",
    ".css": "css", ".html": "markup", ".xml": "markup", ".cmake": "cmake", ".vim": "vim",
    ".txt": "prose",
}
BIN_DIRS = ("/usr/bin", "/usr/sbin", "/usr/lib/git-core")
KINDS = ("c", "c_header", "shell", "go", "rust", "typescript", "sql", "perl", "php", "yaml", "json",
         "markdown", "css", "markup", "cmake", "vim", "prose")


def kind_of(path: str) -> str | None:
    """Which "other" kind a file is by its name and place, or None."""
    name = os.path.basename(path)
    if name.endswith(".h") and "/include/" in path:
        return "c_header" if "/c++/" not in path else None
    if "/rust/html/src/" in path:
        return "rust" if name.endswith(".rs.html") else None
    readme = name.startswith("README") and "." not in name
    if readme or name in ("copyright", "LICENSE", "COPYING") or "/common-licenses/" in path:
        return "prose"
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return SUFFIXES[suffix]
    if "." not in name and os.path.dirname(path) in BIN_DIRS:
        return "shell"
    return None


CXX_MARKERS = re.compile(r"\bnamespace\b|\btemplate\s*<|\bstd::|\bclass\s+\w+\s*[:{]")
SHEBANG_SH = re.compile(r"#!\s*\S*(?:/|env\s+)(?:ba|da|k|z)?sh\b")
FENCE = re.compile(r"^```.*?^```[^\n]*$|^~~~.*?^~~~[^\n]*$", re.M | re.S)
RUST_LINE_NO = re.compile(r"<a href=#\d+ id=\d+ data-nosnippet>\d+</a>")
TAG = re.compile(r"<[^>]+>")
PRE = re.compile(r"<pre class=\"rust\"><code>(.*?)</code></pre>", re.S)


def _hash(path: str) -> int:
    return int.from_bytes(hashlib.sha1(path.encode()).digest()[:8], "little")


def split_of(path: str) -> str:
    """"heldout" for one path in HELDOUT_EVERY (stable across machines), else "calib"."""
    return "heldout" if _hash(path) % HELDOUT_EVERY == 0 else "calib"


def _read(path: str) -> str | None:
    try:
        if not os.path.isfile(path) or os.path.getsize(path) > MAX_BYTES:
            return None
        data = Path(path).read_bytes()
    except OSError:
        return None
    if b"\0" in data[:4096]:
        return None
    return data.decode("utf-8", errors="replace")


def clean(kind: str, text: str) -> str | None:
    """Keep only the part of a file that really is `kind`, or None to skip the file."""
    if kind in ("c", "c_header") and CXX_MARKERS.search(text):
        return None  # a C++ header living among the C ones
    if kind == "shell" and not SHEBANG_SH.match(text) and not text.startswith("# "):
        return None
    if kind == "rust":
        m = PRE.search(text)
        if m is None:
            return None
        text = html.unescape(TAG.sub("", RUST_LINE_NO.sub("", m.group(1))))
    if kind == "markdown":
        text = FENCE.sub("", text)  # code blocks may be Python/JS: not "other"
    text = "\n".join(text.splitlines()[:MAX_LINES])
    return text if text.strip() else None


def _candidates() -> dict[str, list[str]]:
    by_kind: dict[str, list[str]] = {kind: [] for kind in KINDS}
    for root in _roots():
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in ("__pycache__", "c++"))
            for name in filenames:
                path = os.path.join(dirpath, name)
                kind = kind_of(path)
                if kind is not None:
                    by_kind[kind].append(path)
    return {kind: sorted(set(paths), key=_hash) for kind, paths in by_kind.items()}


def documents(split: str = "calib") -> list[OtherDocument]:
    """The "other" documents of `split`, up to MAX_FILES usable files per kind before the split."""
    if split not in ("calib", "heldout"):
        raise ValueError(f"split must be 'calib' or 'heldout', not {split!r}")
    out = []
    for kind, paths in _candidates().items():
        used = 0
        for path in paths:
            if used >= MAX_FILES:
                break
            text = _read(path)
            text = clean(kind, text) if text is not None else None
            if text is None:
                continue
            used += 1
            if split_of(path) == split:
                out.append(OtherDocument(kind, path, text))
    return out


if __name__ == "__main__":
    for split in ("calib", "heldout"):
        docs = documents(split)
        by_kind: dict[str, int] = {}
        for d in docs:
            by_kind[d.kind] = by_kind.get(d.kind, 0) + 1
        print(split, len(docs), by_kind, file=sys.stderr)
