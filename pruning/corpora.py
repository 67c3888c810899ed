"""Where calibration and held-out code comes from, per language, and how windows are drawn.

Default sources are real code that this machine already has or that the project's setup
installs from Debian, PyPI or npm (search order in `find_source`). Any language can be given a
source with `--calib LANG=PATH`: a directory, a glob, a .zip, or a JSONL file with a "text" field.

Files are split by a hash of their name: ~90% "calib" (used to choose masks), ~10% "heldout"
(never used for calibration; perplexity and router accuracy); a source of fewer than 10 files
is all "calib". Licence headers are stripped; minified, bundled, generated and near-empty files
are skipped.
"""

from __future__ import annotations

import glob
import hashlib
import itertools
import json
import os
import random
import re
import shutil
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from submodel.vocabulary import ALIAS, CORPUS_EXTENSIONS, DISPLAY, OTHER_ALIASES

SPLITS = ("calib", "heldout")
HELDOUT_PERCENT = 10
MIN_FILES_FOR_HELDOUT = 10  # a smaller source is used whole for calibration

# Debian package that the project's setup installs for each default source (named in errors).
INSTALL_HINT = {
    "java": "install Debian 'openjdk-17-source'",
    "cpp": "install Debian 'libboost-doc wx3.2-examples'",
    "javascript": "install Debian 'npm'",
}
# Debian's openjdk-17-source ships the JDK sources; these modules are ordinary library and tool
# code. Left out: generated locale/charset tables (jdk.localedata, jdk.charsets) and the large
# legacy XML/desktop stacks, so that one JDK module does not dominate the sample.
JAVA_MODULES = ("java.base", "java.net.http", "java.sql", "java.logging", "java.management",
                "java.naming", "java.prefs", "java.rmi", "java.scripting", "jdk.compiler",
                "jdk.jshell", "jdk.httpserver", "jdk.jfr", "jdk.javadoc", "jdk.jlink",
                "jdk.jartool", "jdk.jdeps", "jdk.jdi", "jdk.jpackage", "jdk.jconsole",
                "jdk.dynalink", "jdk.zipfs")
# Example programs shipped by Debian doc packages (globs under /usr/share/doc, newest version
# used): Boost's examples (libboost-doc: ~2,900 files, 10 MB, 60+ libraries: networking, graphs,
# parsing, maths, threads, IPC) and wxWidgets' GUI samples (wx3.2-examples: ~220 files, 3.7 MB).
CPP_EXAMPLE_TREES = ("libboost*-doc/examples", "wx3*-examples/examples")
# Python stdlib parts that are not library code: installed third-party packages (machine
# dependent), test suites (deliberately broken files, py2 fixtures, data tables) and build data.
PY_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__",
                "lib-dynload", "ensurepip"}

MIN_NONSPACE_CHARS = 200  # a file with less code than this is near-empty
MAX_LINE_CHARS = 1000  # a longer line means minified or bundled
MAX_MEAN_LINE_CHARS = 150
MIN_WINDOW_NONSPACE = 0.3  # a window with less non-whitespace than this is skipped
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


class CorpusError(Exception):
    """A missing or unusable source; the message names the language and the flag that fixes it."""


@dataclass(frozen=True)
class Document:
    name: str  # stable name (relative path or zip member): decides the split
    text: str


@dataclass(frozen=True)
class Source:
    language: str
    description: str  # for humans and the manifest
    kind: str  # "files" (root is a directory), "zip" (root is a .zip) or "jsonl"
    root: Path
    names: tuple[str, ...] = ()  # files relative to root, or zip members; empty for jsonl


def canonical_language(name: str) -> str:
    """'C++' -> 'cpp', 'js' -> 'javascript'; other names are lower-cased."""
    name = name.strip().lower()
    return ALIAS.get(name) or OTHER_ALIASES.get(name, name)


def parse_calib_flags(values: list[str]) -> dict[str, str]:
    """['cpp=/src/app', 'python=code.jsonl'] -> {'cpp': '/src/app', 'python': 'code.jsonl'}."""
    out: dict[str, str] = {}
    for item in values:
        lang, sep, path = item.partition("=")
        lang = canonical_language(lang)
        if not sep or not re.fullmatch(r"[a-z0-9_+#-]+", lang) or not path.strip():
            raise CorpusError(f"--calib expects LANG=PATH (e.g. cpp=/src/app), got {item!r}")
        if lang in out:
            raise CorpusError(f"--calib given twice for {lang}")
        out[lang] = path.strip()
    return out


def find_source(language: str, override: str | None = None) -> Source:
    """The source for `language`: `override` (from --calib) if given, else the default.

    Default search order:
    - python: the running interpreter's standard library (sysconfig "stdlib"), without
      site-packages, test suites and build data.
    - java: a JDK `lib/src.zip`: Debian openjdk-17-source's, then $JAVA_HOME's, then the one
      beside `javac` on PATH, then any /usr/lib/jvm/*/lib/src.zip (newest name first).
    - cpp: the C++ example programs of Debian's libboost-doc and wx3.2-examples (each that is
      installed; together), else as a last resort the libstdc++ headers (/usr/include/c++/N),
      which are mostly `__`-prefixed library internals and unlike application code.
    - javascript: npm's own package directory (its lib/ and bundled node_modules), found from
      the `npm` on PATH, then beside the `node` binary, then in /usr/lib/node_modules,
      /usr/local/lib/node_modules and /usr/share/nodejs (Debian's npm: the whole tree holding
      npm and its dependencies).
    """
    language = canonical_language(language)
    if override is not None:
        return _override_source(language, override)
    finder = {"python": _python_source, "java": _java_source, "cpp": _cpp_source,
              "javascript": _javascript_source}.get(language)
    source = finder() if finder else None
    if source is None or (source.kind != "jsonl" and not source.names):
        raise CorpusError(_missing_message(language))
    return source


def _missing_message(language: str) -> str:
    name = DISPLAY.get(language, language)
    hint = INSTALL_HINT.get(language)
    if language not in DISPLAY:
        return f"no default {name} source: pass --calib {language}=PATH"
    how = f"{hint} or pass" if hint else "pass"
    return f"no {name} source found: {how} --calib {language}=PATH"


def documents(source: Source, split: str = "calib") -> list[Document]:
    """The cleaned documents of one split, sorted by name (deterministic)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    docs = []
    for name, text in _read(source, split):
        if _is_junk(name, text):
            continue
        text = strip_license_header(text, source.language)
        if _nonspace(text) >= MIN_NONSPACE_CHARS:
            docs.append(Document(name, text))
    if not docs:
        raise CorpusError(f"no usable {split} files for {source.language} in "
                          f"{source.description}: pass --calib {source.language}=PATH")
    return sorted(docs, key=lambda d: d.name)


def sample_windows(tokenizer, docs: list[Document], nsamples: int, seqlen: int,
                   seed: int) -> torch.LongTensor:
    """[nsamples, seqlen] token ids: seeded random windows of the documents.

    A window starts at a random line of a random document (chosen with probability proportional
    to its length, so every line of the corpus is about equally likely); a document that runs out
    before `seqlen` tokens is continued, after a blank line, with another random document. Only the
    text needed is tokenized. Mostly-whitespace windows are skipped. `tokenizer` is a Hugging
    Face tokenizer (anything with `encode(text, add_special_tokens=False) -> list[int]`).
    """
    if nsamples < 1 or seqlen < 1:
        raise ValueError("nsamples and seqlen must be positive")
    docs = [d for d in docs if d.text.strip()]
    if not docs:
        raise CorpusError("no documents to draw calibration windows from")
    rng = random.Random(seed)
    cum = list(itertools.accumulate(len(d.text) for d in docs))

    def pick() -> str:
        return rng.choices(docs, cum_weights=cum)[0].text

    windows: list[list[int]] = []
    for _ in range(50 * nsamples + 100):
        if len(windows) == nsamples:
            break
        text, ids = _draw_text(pick, rng, seqlen, tokenizer)
        covered = text[: int(len(text) * seqlen / len(ids)) + 1]
        if _nonspace(covered) >= MIN_WINDOW_NONSPACE * len(covered):
            windows.append(list(ids[:seqlen]))
    if len(windows) < nsamples:
        raise CorpusError(f"only {len(windows)} of {nsamples} calibration windows of {seqlen} "
                          "tokens are not mostly whitespace: the documents are too sparse")
    return torch.tensor(windows, dtype=torch.long)


def _draw_text(pick, rng: random.Random, seqlen: int, tokenizer) -> tuple[str, list[int]]:
    """Text from a random line of a random document that tokenizes to more than `seqlen`."""
    doc = pick()
    start = doc.rfind("\n", 0, rng.randrange(len(doc))) + 1
    text = ""
    budget = 6 * seqlen + 64  # characters; code averages ~3-4 characters per token
    margin = 8  # extra tokens, so a piece cut mid-word never reaches the window
    while True:
        piece = doc[start:start + budget]
        ids = tokenizer.encode(text + piece, add_special_tokens=False)
        if len(ids) >= seqlen + margin:
            return text + piece, ids
        if start + budget < len(doc):
            budget *= 2
            continue
        text += piece + "\n\n"
        doc, start, budget = pick(), 0, 6 * seqlen + 64


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


def _nonspace(text: str) -> int:
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


def _override_source(language: str, spec: str) -> Source:
    flag = f"--calib {language}={spec}"
    path = Path(spec).expanduser()
    exts = CORPUS_EXTENSIONS.get(language)
    if glob.has_magic(spec):
        root = _glob_root(spec)
        matches = sorted(p for p in glob.glob(os.path.expanduser(spec), recursive=True)
                         if os.path.isfile(p))
        names = tuple(os.path.relpath(p, root) for p in matches)
        if not names:
            raise CorpusError(f"{flag}: the glob matches no files")
        return Source(language, f"{spec} ({len(names)} files)", "files", root, names)
    if not path.exists():
        raise CorpusError(f"{flag}: no such file or directory")
    if path.is_file() and path.suffix == ".jsonl":
        return Source(language, f"JSONL {path}", "jsonl", path)
    if exts is None:
        raise CorpusError(f"{flag}: file suffixes of {language} are unknown: pass a glob "
                          f"(--calib '{language}=DIR/**/*.EXT') or a JSONL file")
    if path.is_dir():
        names = walk_files(path, exts)
    elif path.suffix == ".zip":
        return zip_source(language, path, exts, modules=None, what="zip")
    else:
        path, names = path.parent, (path.name,)
    if not names:
        raise CorpusError(f"{flag}: no {'/'.join(exts)} files there")
    return Source(language, f"{path} ({len(names)} files)", "files", path, names)


def _glob_root(spec: str) -> Path:
    """The directory part of a glob before its first wildcard."""
    parts = Path(os.path.expanduser(spec)).parts
    fixed = parts[: next(i for i, p in enumerate(parts) if glob.has_magic(p))]
    return Path(*fixed) if fixed else Path(".")


def walk_files(base: Path, exts: tuple[str, ...], skip_dirs: frozenset[str] = frozenset(),
          root: Path | None = None) -> tuple[str, ...]:
    """Files under `root` (default `base`) with one of `exts`, as paths relative to `base`."""
    names = []
    for dirpath, dirnames, filenames in os.walk(root or base):
        dirnames[:] = [d for d in dirnames if d not in skip_dirs and not d.startswith(".")]
        for f in filenames:
            if f.endswith(exts):
                names.append(os.path.relpath(os.path.join(dirpath, f), base))
    return tuple(sorted(names))


def zip_source(language: str, path: Path, exts: tuple[str, ...], modules: tuple[str, ...] | None,
                what: str) -> Source:
    with zipfile.ZipFile(path) as z:
        names = [n for n in z.namelist() if n.endswith(exts)]
    if modules is not None:
        picked = [n for n in names if n.split("/", 1)[0] in modules]
        names = picked or names  # a pre-module JDK (8) has no module folders
    names = tuple(sorted(names))
    return Source(language, f"{what} {path} ({len(names)} files)", "zip", path, names)


def _python_source() -> Source | None:
    root = Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        return None
    skip = frozenset(PY_SKIP_DIRS) | {d.name for d in root.glob("config-*")}
    names = walk_files(root, CORPUS_EXTENSIONS["python"], skip)
    version = "{}.{}".format(*sys.version_info[:2])
    return Source("python", f"CPython {version} standard library {root} ({len(names)} files)",
                  "files", root, names)


def _java_source() -> Source | None:
    candidates = sorted(glob.glob("/usr/lib/jvm/java-17-openjdk-*/lib/src.zip"))
    if os.environ.get("JAVA_HOME"):
        candidates.append(os.path.join(os.environ["JAVA_HOME"], "lib", "src.zip"))
    javac = shutil.which("javac")
    if javac:
        candidates.append(str(Path(javac).resolve().parent.parent / "lib" / "src.zip"))
    candidates += sorted(glob.glob("/usr/lib/jvm/*/lib/src.zip"), reverse=True)
    for c in candidates:
        if os.path.isfile(c):  # Debian's src.zip links dangle without openjdk-17-source
            return zip_source("java", Path(c).resolve(), CORPUS_EXTENSIONS["java"], JAVA_MODULES,
                               "JDK sources")
    return None


def _cpp_source() -> Source | None:
    doc = Path("/usr/share/doc")
    trees = [newest_dir(doc.glob(pattern)) for pattern in CPP_EXAMPLE_TREES]
    trees = [t for t in trees if t is not None]
    exts = CORPUS_EXTENSIONS["cpp"]
    names = tuple(sorted(n for t in trees for n in walk_files(doc, exts, root=t)))
    if names:
        where = " + ".join(str(t) for t in trees)
        return Source("cpp", f"C++ example programs {where} ({len(names)} files)", "files",
                      doc, names)
    include = newest_dir(Path("/usr/include/c++").glob("[0-9]*"))
    if include is None:
        return None
    names = tuple(sorted(os.path.relpath(p, include) for p in include.rglob("*")
                         if p.is_file() and p.suffix in ("", ".h", ".tcc")))
    return Source("cpp", f"libstdc++ headers {include} ({len(names)} files; last resort: "
                  "library internals, not application code)", "files", include, names)


def newest_dir(paths) -> Path | None:
    """The path whose name holds the highest version number (1.81 > 1.74, 12 > 9)."""
    def version(p: Path) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", str(p)))
    found = sorted((p for p in paths if p.is_dir()), key=version)
    return found[-1] if found else None


def _javascript_source() -> Source | None:
    npm_dirs = []
    npm = shutil.which("npm")
    if npm:  # .../node_modules/npm/bin/npm-cli.js
        npm_dirs.append(Path(npm).resolve().parent.parent)
    node = shutil.which("node")
    if node:
        npm_dirs.append(Path(node).resolve().parent.parent / "lib" / "node_modules" / "npm")
    npm_dirs += [Path("/usr/lib/node_modules/npm"), Path("/usr/local/lib/node_modules/npm"),
                 Path("/usr/share/nodejs/npm")]
    for npm_dir in npm_dirs:
        if (npm_dir / "package.json").is_file():
            # npm from nodejs.org bundles its dependencies; Debian's npm has them beside it
            root = npm_dir if (npm_dir / "node_modules").is_dir() else npm_dir.parent
            names = walk_files(root, CORPUS_EXTENSIONS["javascript"])
            return Source("javascript", f"npm's package tree {root} ({len(names)} files)",
                          "files", root, names)
    return None
