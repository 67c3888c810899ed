"""Where calibration and held-out code comes from, per language: the default sources this
machine has, and `--calib LANG=PATH` overrides.

Default sources are real code that this machine already has or that the project's setup
installs from Debian, PyPI or npm (search order in `find_source`). Any language can be given a
source with `--calib LANG=PATH`: a directory, a glob, a .zip, or a JSONL file with a "text" field.
A source is a list of file names; reading and cleaning them is `documents.py`'s.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import sys
import sysconfig
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from submodel.vocabulary import ALIAS, CORPUS_EXTENSIONS, DISPLAY, OTHER_ALIASES

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

class CorpusError(Exception):
    """A missing or unusable source; the message names the language and the flag that fixes it."""


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


def newest_dir(paths: Iterable[Path]) -> Path | None:
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
