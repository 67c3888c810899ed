"""Prefix reuse: the block-hashed LRU cache itself, and the engine with and without it giving
the same greedy tokens while the second of two overlapping prompts prefills only its tail."""

from __future__ import annotations

import pytest
import torch

from submodel.pruning.store import open_store
from submodel.server.api import EngineObserver, GenerationRequest, SamplingParams, TokenEvent
from submodel.server.engine import Engine
from submodel.server.prefix_cache import BLOCK, PrefixCache, block_hashes
from submodel.vocabulary import DENSE

LAYERS, HEADS, DIM = 2, 2, 4


def kv(tokens: int, fill: float) -> tuple[torch.Tensor, torch.Tensor]:
    k = torch.full((LAYERS, HEADS, tokens, DIM), fill)
    return k, -k


def entry_bytes(tokens: int) -> int:
    return 2 * LAYERS * HEADS * tokens * DIM * 4


def test_longest_cached_prefix_per_mask_leaves_a_token_to_prefill():
    cache = PrefixCache(1 << 20)
    prompt = list(range(3 * BLOCK + BLOCK // 2))
    cache.store("m1", prompt, *kv(len(prompt), 1.0))
    assert cache.nbytes == entry_bytes(len(prompt))
    entry, length = cache.lookup("m1", prompt + [7, 8, 9])  # an extension: only 7, 8, 9 left
    assert length == len(prompt) and torch.equal(entry.k[:, :, :length], kv(length, 1.0)[0])
    assert cache.lookup("m1", prompt)[1] == len(prompt) - 1  # one token left to prefill
    assert cache.lookup("m1", prompt[:BLOCK + 3] + [7, 8])[1] == BLOCK + 3  # an edit mid-block
    assert cache.lookup("m2", prompt)[1] == 0  # another mask: other keys and values
    assert cache.lookup("m1", [1000] + prompt[1:])[1] == 0  # a changed first block
    assert cache.lookup("m1", prompt[:5])[1] == 0  # shorter than a block: never cached
    cache.store("m1", prompt[:BLOCK + 5], *kv(BLOCK + 5, 2.0))  # already covered: kept once
    assert cache.nbytes == entry_bytes(len(prompt))
    longer = prompt + [7, 8, 9]
    cache.store("m1", longer, *kv(len(longer), 3.0))  # extends it: kept
    assert cache.lookup("m1", longer + [1])[1] == len(longer)


def test_least_recently_used_entries_go_first_and_bytes_stay_in_budget():
    cache = PrefixCache(2 * entry_bytes(2 * BLOCK + 1))
    a, b, c = ([base + i for i in range(2 * BLOCK + 1)] for base in (0, 1000, 2000))
    cache.store("m", a, *kv(len(a), 1.0))
    cache.store("m", b, *kv(len(b), 2.0))
    assert cache.lookup("m", a)[1] == 2 * BLOCK  # a is now the most recently used
    cache.store("m", c, *kv(len(c), 3.0))
    assert cache.nbytes <= cache.budget
    assert [cache.lookup("m", p)[1] for p in (a, b, c)] == [2 * BLOCK, 0, 2 * BLOCK]
    assert len(cache.blocks) == 4 and len(block_hashes("m", a)) == 2
    cache.store("m", list(range(5000, 5000 + 9 * BLOCK)), *kv(9 * BLOCK, 4.0))  # over budget
    assert cache.lookup("m", a)[1] == 2 * BLOCK  # not stored, nothing evicted for it


class Lookups(EngineObserver):
    def __init__(self) -> None:
        self.seen: list[tuple[str, int, int]] = []

    def prefix_cache_lookup(self, language, prompt_tokens, hit_tokens):
        self.seen.append((language, prompt_tokens, hit_tokens))


CONTEXT = "".join(f"def f{i}(x):\n    return x * {i}\n\n" for i in range(6))


def greedy(engine: Engine, prompt: str, language: str) -> list[int]:
    handle = engine.submit(GenerationRequest(prompt, language, SamplingParams(max_tokens=10)))
    return [e.token_id for e in handle if isinstance(e, TokenEvent) and e.token_id >= 0]


@pytest.mark.parametrize("strategy", ["swap", "fused"])
def test_greedy_tokens_are_the_same_with_and_without_the_cache(tiny_store, strategy):
    store = open_store(tiny_store)
    lookups = Lookups()
    plain = Engine(store, strategy=strategy, max_batch=2)
    cached = Engine(store, strategy=strategy, max_batch=2, prefix_cache_mb=8, observer=lookups)
    for e in (plain, cached):
        e.start()
    try:
        for language in (DENSE, "python", "java"):
            for prompt in (CONTEXT, CONTEXT + "def g(y):\n    return", CONTEXT + "# edit\n"):
                assert greedy(cached, prompt, language) == greedy(plain, prompt, language)
    finally:
        for e in (plain, cached):
            e.stop()
    by_language = {}
    for language, prompt_tokens, hit in lookups.seen:
        by_language.setdefault(language, []).append((prompt_tokens, hit))
    context_tokens = len(CONTEXT.encode())  # the tiny tokenizer: one token per byte
    for language, rows in by_language.items():
        assert rows[0][1] == 0, language  # nothing cached yet for this mask
        assert [hit for _, hit in rows[1:]] == [context_tokens] * 2  # only the new text prefills
        for prompt_tokens, hit in rows[1:]:  # the later prompts extend the first
            assert hit >= len(CONTEXT.encode()) // BLOCK * BLOCK - BLOCK, (language, hit)
            assert hit < prompt_tokens
