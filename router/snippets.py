"""Random snippets of a few lines cut from documents: what the trainer learns from and the bench
measures on (from different files)."""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Sequence

from submodel.router.features import code_lines, scan

MIN_NONSPACE = 8  # a window with fewer non-space characters (`}`, `else:`) is redrawn


def nonspace(text: str) -> int:
    return sum(1 for c in text if not c.isspace())


class SnippetSampler:
    """Draws `n`-line windows starting at a random line of the corpus (every line equally likely).

    A window starting on a blank line moves to the next non-blank one, one running past the end
    of its file moves back; windows with fewer than `min_nonspace` non-space characters are
    redrawn, and so are windows without a line of code if `code_only`. With `whole_comments`, a
    window that would start inside a comment or docstring starts after it instead, so that every
    comment line it holds can be recognised as one (the trainer's choice: prose lines taught as
    Python would make prose look like Python). Both read each file from its start.
    """

    def __init__(self, texts: Sequence[str], rng: random.Random,
                 min_nonspace: int = MIN_NONSPACE, code_only: bool = False,
                 whole_comments: bool = False) -> None:
        self.docs = [lines for lines in (t.splitlines() for t in texts) if lines]
        if not self.docs:
            raise ValueError("no documents to cut snippets from")
        self.code = [code_lines("\n".join(d)) for d in self.docs] if code_only else None
        self.opened = [scan("\n".join(d))[1] for d in self.docs] if whole_comments else None
        self.cum = list(itertools.accumulate(len(d) for d in self.docs))
        self.rng = rng
        self.min_nonspace = min_nonspace

    def draw(self, n: int) -> str:
        for _ in range(1000):
            i = self.rng.randrange(self.cum[-1])
            d = bisect.bisect_right(self.cum, i)
            lines = self.docs[d]
            start = i - (self.cum[d - 1] if d else 0)
            while start < len(lines) and (not lines[start].strip() or (
                    self.opened is not None and self.opened[d][start])):
                start += 1
            if start == len(lines):
                continue
            start = max(0, min(start, len(lines) - n))  # a full window where the file allows
            if self.code is not None and not any(self.code[d][start:start + n]):
                continue
            text = "\n".join(lines[start:start + n])
            if nonspace(text) >= self.min_nonspace:
                return text
        raise ValueError(f"no {n}-line window with {self.min_nonspace}+ non-space characters"
                         + (" and a line of code" if self.code is not None else ""))
