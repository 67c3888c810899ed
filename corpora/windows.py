"""Calibration windows: seeded random token windows of a language's documents.

The one part of the corpora that needs torch (the windows are a LongTensor), kept apart so the
router and its trainer read corpora without importing torch.
"""

from __future__ import annotations

import itertools
import random

import torch

from submodel.corpora.documents import Document, nonspace
from submodel.corpora.sources import CorpusError

MIN_WINDOW_NONSPACE = 0.3  # a window with less non-whitespace than this is skipped


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
        if nonspace(covered) >= MIN_WINDOW_NONSPACE * len(covered):
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
