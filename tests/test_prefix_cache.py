"""Prefix reuse: the block tree with its LRU pool itself, and the engine with and without it giving
the same greedy tokens while the second of two overlapping prompts prefills only its tail."""

from __future__ import annotations

import pytest
import torch

from submodel.pruning.store import open_store
from submodel.server.api import EngineObserver, GenerationRequest, SamplingParams, TokenEvent
from submodel.server.engine import Engine
from submodel.server.prefix_cache import BLOCK, PrefixCache
from submodel.vocabulary import DENSE

LAYERS, HEADS, DIM = 2, 2, 4
MAX_LEN = 10 * BLOCK


def block_bytes(blocks: int) -> int:
    return blocks * 2 * LAYERS * HEADS * BLOCK * DIM * 4


def make_cache(blocks: int) -> PrefixCache:
    return PrefixCache(block_bytes(blocks), LAYERS, HEADS, DIM, torch.float32)


def slot_for(ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """A slot's keys and values as the model would write them: each position's from its token
    (and, like real KV, from the tokens before it: here their sum)."""
    k = torch.zeros(LAYERS, HEADS, MAX_LEN, DIM)
    prefix_sums = torch.tensor(ids, dtype=torch.float32).cumsum(0)
    k[:, :, :len(ids)] = (torch.tensor(ids) * 1000 + prefix_sums)[None, None, :, None]
    return k, -k


def restored(cache: PrefixCache, mask: str, ids: list[int]) -> int:
    """The cached prefix length, checking that the slot got exactly those keys and values."""
    k, v = torch.full((LAYERS, HEADS, MAX_LEN, DIM), 0.5), torch.full((LAYERS, HEADS, MAX_LEN,
                                                                        DIM), 0.5)
    length = cache.restore(mask, ids, k, v)
    want_k, want_v = slot_for(ids)
    assert torch.equal(k[:, :, :length], want_k[:, :, :length])
    assert torch.equal(v[:, :, :length], want_v[:, :, :length])
    assert (k[:, :, length:] == 0.5).all()  # nothing written past it
    return length


def test_longest_cached_prefix_per_mask_leaves_a_token_to_prefill():
    cache = make_cache(16)
    prompt = list(range(3 * BLOCK + BLOCK // 2))
    cache.store("m1", prompt, *slot_for(prompt))
    assert cache.nbytes == block_bytes(4)  # three blocks and the tail
    assert restored(cache, "m1", prompt + [7, 8, 9]) == len(prompt)  # an extension: 7, 8, 9
    assert restored(cache, "m1", prompt) == len(prompt) - 1  # one token left to prefill
    assert restored(cache, "m1", prompt[:BLOCK + 3] + [7, 8]) == BLOCK + 3  # an edit mid-block
    assert restored(cache, "m2", prompt) == 0  # another mask: other keys and values
    assert restored(cache, "m1", [1000] + prompt[1:]) == 0  # a changed first token
    cache.store("m1", prompt[:BLOCK + 5], *slot_for(prompt[:BLOCK + 5]))  # held: nothing new
    assert cache.nbytes == block_bytes(4)
    longer = prompt + [7, 8, 9]
    cache.store("m1", longer, *slot_for(longer))  # the longer tail replaces the shorter one
    assert cache.nbytes == block_bytes(4)
    assert restored(cache, "m1", longer + [1]) == len(longer)
    assert restored(cache, "m1", prompt + [1]) == len(prompt)


def test_prompts_sharing_a_start_share_its_blocks():
    cache = make_cache(16)
    a = list(range(4 * BLOCK))
    b = a[:2 * BLOCK] + [500 + i for i in range(2 * BLOCK)]  # the same first two blocks
    cache.store("m", a, *slot_for(a))
    cache.store("m", b, *slot_for(b))
    assert cache.nbytes == block_bytes(6)  # 4 + b's own 2
    assert restored(cache, "m", a + [1]) == len(a)
    assert restored(cache, "m", b + [1]) == len(b)


def test_least_recently_used_leaves_go_first_and_bytes_stay_in_budget():
    cache = make_cache(6)
    a, b, c = ([base + i for i in range(2 * BLOCK + 1)] for base in (0, 1000, 2000))
    cache.store("m", a, *slot_for(a))
    cache.store("m", b, *slot_for(b))
    assert restored(cache, "m", a + [9]) == len(a)  # a is now the most recently used
    cache.store("m", c, *slot_for(c))  # room for c: b's blocks go, its tail first
    assert cache.nbytes <= block_bytes(6)
    assert [restored(cache, "m", p + [9]) for p in (a, b, c)] == [len(a), 0, len(c)]
    big = list(range(5000, 5000 + 9 * BLOCK))  # more blocks than the pool has
    cache.store("m", big, *slot_for(big))
    assert cache.nbytes <= block_bytes(6)
    assert restored(cache, "m", big) == 6 * BLOCK  # as much of its start as fits


def test_a_cache_larger_than_the_machine_is_a_clear_error(tiny_store):
    with pytest.raises(ValueError, match="prefix cache of .* MiB cannot be allocated"):
        Engine(open_store(tiny_store), prefix_cache_mb=1 << 40)


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
