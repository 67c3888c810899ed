"""Random snippets of a few lines cut from documents: what the trainer learns from and the bench
measures on (from different files)."""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Sequence

from .features import code_lines

MIN_NONSPACE = 8  # a window with fewer non-space characters (`}`, `else:`) is redrawn


def nonspace(text: str) -> int:
    return sum(1 for c in text if not c.isspace())


class SnippetSampler:
    """Draws `n`-line windows starting at a random line of the corpus (every line equally likely).

    A window starting on a blank line moves to the next non-blank one, one running past the end
    of its file moves back; windows with fewer than `min_nonspace` non-space characters are
    redrawn, and so are windows without a line of code if `code_only` (comments and docstrings
    are told apart by reading each file from its start).
    """

    def __init__(self, texts: Sequence[str], rng: random.Random,
                 min_nonspace: int = MIN_NONSPACE, code_only: bool = False) -> None:
        self.docs = [lines for lines in (t.splitlines() for t in texts) if lines]
        if not self.docs:
            raise ValueError("no documents to cut snippets from")
        self.code = [code_lines("\n".join(d)) for d in self.docs] if code_only else None
        self.cum = list(itertools.accumulate(len(d) for d in self.docs))
        self.rng = rng
        self.min_nonspace = min_nonspace

    def draw(self, n: int) -> str:
        for _ in range(1000):
            i = self.rng.randrange(self.cum[-1])
            d = bisect.bisect_right(self.cum, i)
            lines = self.docs[d]
            start = i - (self.cum[d - 1] if d else 0)
            while start < len(lines) and not lines[start].strip():
                start += 1
            start = max(0, min(start, len(lines) - n))  # a full window where the file allows
            if self.code is not None and not any(self.code[d][start:start + n]):
                continue
            text = "\n".join(lines[start:start + n])
            if nonspace(text) >= self.min_nonspace:
                return text
        raise ValueError(f"no {n}-line window with {self.min_nonspace}+ non-space characters"
                         + (" and a line of code" if self.code is not None else ""))
