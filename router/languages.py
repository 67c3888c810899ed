"""Language names and file names -> our languages (python, java, cpp, javascript).

The names and tables are `submodel.vocabulary`'s; this module is the lookup the router needs on
top of them (a leading dot, "dense", Pygments' file-name globs for the languages we do not serve).
"""

from __future__ import annotations

import fnmatch
import functools
import os

from submodel.vocabulary import ALIAS, DENSE, EXTENSIONS, OTHER

_EXTENSION = {ext: lang for lang, exts in EXTENSIONS.items() for ext in exts}
# C or C++, plain text, templates: the file name says nothing, the content decides.
AMBIGUOUS = (".h", ".txt", ".in", ".inc", ".tmpl", ".template", ".def")


def normalize_language(name: str) -> str | None:
    """'py' -> 'python', 'C++' -> 'cpp', 'node' -> 'javascript', 'dense' -> 'dense'; None if the
    name is none of our languages (case, spaces and a leading dot are ignored)."""
    key = name.strip().lower().lstrip(".")
    if key == DENSE:
        return DENSE
    return ALIAS.get(key)


@functools.lru_cache(maxsize=1)
def _pygments_patterns() -> tuple[tuple[str, str], ...]:
    """(file-name glob, language) for every built-in Pygments lexer (plugins would cost a slow
    entry-point scan); ours where the lexer's aliases say so."""
    from pygments.lexers import get_all_lexers

    patterns = []
    for _name, aliases, filenames, _mimetypes in get_all_lexers(plugins=False):
        ours = next((ALIAS[a] for a in aliases if a in ALIAS), None)
        patterns += [(glob, ours or OTHER) for glob in filenames]
    return tuple(patterns)


@functools.lru_cache(maxsize=64)
def filename_globs(language: str) -> tuple[str, ...]:
    """File-name globs of the Pygments lexers that have `language` among their aliases
    ('go' -> ('*.go',)): how a store's language that is none of ours is found by file name."""
    from pygments.lexers import get_all_lexers

    return tuple(glob for _name, aliases, filenames, _mimetypes in get_all_lexers(plugins=False)
                 if language in aliases for glob in filenames)


@functools.lru_cache(maxsize=4096)
def language_of_filename(filename: str) -> str | None:
    """One of LANGUAGES, OTHER (a known language or format that is not ours: .rs, .go, .ts,
    Makefile, .md), or None when the name does not tell (.h, .txt, unknown extensions)."""
    base = os.path.basename(filename.strip().replace("\\", "/"))
    lower = base.lower()
    ext = os.path.splitext(lower)[1]
    if ext in _EXTENSION:
        return _EXTENSION[ext]
    if base.endswith(".C"):  # the old Unix C++ convention; Pygments agrees
        return "cpp"
    if not base or ext in AMBIGUOUS:
        return None
    found = {lang for glob, lang in _pygments_patterns() if fnmatch.fnmatchcase(base, glob)}
    if len(found) == 1:
        return found.pop()
    return None  # unknown, or claimed by several lexers of different languages
