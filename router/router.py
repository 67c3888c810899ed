"""Which sub-model a request goes to: hint beats file name beats content; unsure -> dense.

Decisions for the inputs that look like ours (the trainer's labels in `projects.py` encode them):
- TypeScript (`.ts`, `.tsx`, `.d.ts`, or TypeScript content) is "other": it goes to dense. The
  JavaScript mask was calibrated on plain JavaScript, and dense serves TypeScript at full quality.
- A `.h` file says nothing by its name: the content decides. A C++ header (namespaces, templates,
  classes, `std::`) goes to cpp; a C header is "other" and goes to dense, like a `.c` file.
- JSX (`.jsx`, or JSX in a `.js` file) is JavaScript; `.tsx` is TypeScript.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

from submodel.router.languages import filename_globs, language_of_filename, normalize_language
from submodel.router.model import ContentModel
from submodel.vocabulary import DENSE, LANGUAGES, OTHER

SOURCES = ("hint", "filename", "content", "fallback")
DEFAULT_THRESHOLD = 0.5
MODEL = ContentModel.load()  # the committed model.json; a few tens of milliseconds


class UnknownLanguage(ValueError):
    """A hint names a language this router does not serve (gRPC NOT_FOUND)."""


@dataclass(frozen=True)
class Detection:
    language: str  # one of the router's languages, or "dense"
    confidence: float  # 1.0 for hint and file name; the detector's top probability otherwise
    source: str  # one of SOURCES


EXTRA_NAME = re.compile(r"[a-z0-9_+#-]+")  # what `prune --calib LANG=PATH` accepts


class Router:
    """Routes text to one of `languages` or to "dense".

    Content detection picks the most probable class among our four languages (LANGUAGES) and
    "other" (C, Go, Rust, TypeScript, shell, SQL, data formats, prose); it routes to that
    language only if it is served here and its probability is at least `threshold`, else to
    dense (source "fallback", confidence = that top probability).

    A served language that is none of LANGUAGES (a store can add any, e.g. `go`) has no class
    in the content model, so it is reached by hint (its exact name) and by file name (the
    globs of the Pygments lexers that have its name among their aliases: `go` -> `*.go`);
    its content alone goes to dense, as "other".
    """

    def __init__(self, languages: Iterable[str] = LANGUAGES,
                 threshold: float = DEFAULT_THRESHOLD, model: ContentModel | None = None) -> None:
        served = []
        for name in languages:
            lang = normalize_language(name)
            if lang is None and EXTRA_NAME.fullmatch(name.strip().lower()):
                lang = name.strip().lower()
            if lang is None or lang == DENSE:
                raise UnknownLanguage(f"cannot route to {name!r}: a language is one of "
                                      f"{', '.join(LANGUAGES)} or a name of [a-z0-9_+#-]")
            served.append(lang)
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        self.languages = tuple(dict.fromkeys(served))
        self.threshold = threshold
        self.model = MODEL if model is None else model  # another one: the bench's --model
        self.extra = {lang: filename_globs(lang) for lang in self.languages
                      if lang not in LANGUAGES}

    def serving(self, languages: Iterable[str]) -> Router:
        """This router for another set of languages (a server reloaded its sub-models)."""
        return Router(languages, self.threshold, self.model)

    def detect(self, text: str, filename: str | None = None,
               hint: str | None = None) -> Detection:
        """Route `text`. Empty `filename`/`hint` count as absent (protobuf defaults).

        Raises UnknownLanguage if `hint` is neither "dense" nor a served language.
        """
        if hint and hint.strip():
            lang = normalize_language(hint)
            if lang is None and hint.strip().lower() in self.extra:
                lang = hint.strip().lower()
            if lang == DENSE:
                return Detection(DENSE, 1.0, "hint")
            if lang not in self.languages:
                known = "unknown language" if lang is None else "language not served here"
                raise UnknownLanguage(f"{known} {hint!r}: use one of "
                                      f"{', '.join(self.languages + (DENSE,))}")
            return Detection(lang, 1.0, "hint")
        if filename and filename.strip():
            lang = language_of_filename(filename)
            if lang == OTHER and self.extra:
                lang = self._extra_of_filename(filename) or OTHER
            if lang == OTHER:
                return Detection(DENSE, 1.0, "filename")
            if lang is not None:
                return Detection(lang if lang in self.languages else DENSE, 1.0, "filename")
        if not text.strip():
            return Detection(DENSE, 0.0, "fallback")
        probs = self.model.probabilities(text)
        best = int(probs.argmax())
        lang, confidence = self.model.labels[best], float(probs[best])
        if lang in self.languages and confidence >= self.threshold:
            return Detection(lang, confidence, "content")
        return Detection(DENSE, confidence, "fallback")

    def _extra_of_filename(self, filename: str) -> str | None:
        base = os.path.basename(filename.strip().replace("\\", "/"))
        found = [lang for lang, globs in self.extra.items()
                 if any(fnmatch.fnmatchcase(base, g) for g in globs)]
        return found[0] if len(found) == 1 else None

    def probabilities(self, text: str) -> dict[str, float]:
        """The content detector's probability of each of our languages and of "other" (the sum
        of its groups)."""
        out = dict.fromkeys(self.model.labels, 0.0)
        for label, p in zip(self.model.labels, self.model.probabilities(text), strict=True):
            out[label] += float(p)
        return out


_DEFAULT = Router()


def detect(text: str, filename: str | None = None, hint: str | None = None) -> Detection:
    """`Router().detect` with all four languages and the default threshold."""
    return _DEFAULT.detect(text, filename, hint)
