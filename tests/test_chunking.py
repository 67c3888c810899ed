"""Chunk sizing for prefill inside decode steps: fixed sizes stay put; the default sizes each
chunk so it adds about STEP_BUDGET of the running step, from measured step times."""

from __future__ import annotations

import pytest

from submodel.server.chunking import (
    FIRST_CHUNK,
    MAX_CHUNK,
    MIN_CHUNK,
    PLAIN_EVERY,
    PLAIN_GROWTH,
    STEP_BUDGET,
    ChunkSizer,
    chunk_name,
    parse_prefill_chunk,
)


def test_a_fixed_size_ignores_timings():
    sizer = ChunkSizer(8)
    sizer.observe(0.030, 0)
    sizer.observe(5.0, 8)
    assert sizer.size() == 8


def test_chunks_fit_the_budget_measured_from_steps():
    sizer = ChunkSizer()
    sizer.observe(0.050, FIRST_CHUNK)  # no step without a chunk measured yet: nothing to go by
    assert sizer.size() == FIRST_CHUNK
    sizer.observe(0.030, 0)
    per_token = 0.002
    sizer.observe(0.030 + FIRST_CHUNK * per_token, FIRST_CHUNK)
    assert sizer.size() == int(STEP_BUDGET * 0.030 / per_token) == 7
    # the chunk's cost grows as the prompt goes in (attention over more keys): chunks shrink
    sizer.observe(0.030 + 7 * 0.006, 7)
    assert MIN_CHUNK <= sizer.size() < 7


def test_chunks_grow_at_most_twofold_a_step_and_stay_in_bounds():
    sizer = ChunkSizer()
    sizer.observe(0.030, 0)
    sizes = []
    for _ in range(8):
        sizer.observe(0.030 + sizer.size() * 1e-7, sizer.size())
        sizes.append(sizer.size())
    assert sizes == [min(FIRST_CHUNK << (i + 1), MAX_CHUNK) for i in range(8)]
    sizer.observe(0.030 + MAX_CHUNK * 1.0, MAX_CHUNK)  # a chunk token costing a second
    assert sizer.size() == MIN_CHUNK


def test_the_running_step_is_measured_again_while_a_prompt_goes_in():
    """The running requests' step grows with their contexts: every PLAIN_EVERY-th step carries
    no chunk, so that growth is not taken for chunk cost (which would shrink chunks to a token)."""
    sizer = ChunkSizer()
    sizer.observe(0.030, 0)
    plain, per_token = 0.030, 0.002
    for _ in range(PLAIN_EVERY):
        assert not sizer.plain_step_due()
        plain += 0.0004  # the running step alone, 0.4 ms more every step
        sizer.observe(plain + sizer.size() * per_token, sizer.size())
    assert sizer.plain_step_due() and sizer.size() < 7  # its growth was taken for chunk cost
    sizer.observe(plain, 0)
    assert not sizer.plain_step_due() and sizer.plain_step == pytest.approx(plain)
    for _ in range(4):
        sizer.observe(plain + sizer.size() * per_token, sizer.size())
    assert sizer.size() >= int(STEP_BUDGET * plain / per_token / 2)  # back near the budget
    assert not ChunkSizer(8).plain_step_due()


def test_one_slow_plain_step_does_not_make_chunk_tokens_look_free():
    sizer = ChunkSizer()
    sizer.observe(0.030, 0)
    for _ in range(PLAIN_EVERY):
        sizer.observe(0.030 + sizer.size() * 0.002, sizer.size())
    settled = sizer.size()
    sizer.observe(0.090, 0)  # a hiccup: three times the running step
    assert sizer.plain_step == pytest.approx(PLAIN_GROWTH * 0.030)
    for _ in range(3):
        sizer.observe(0.030 + sizer.size() * 0.002, sizer.size())
    assert sizer.size() <= 2 * settled  # chunks stay near what fits, not doubling on


def test_prefill_chunk_flag():
    assert parse_prefill_chunk("auto") is None
    assert parse_prefill_chunk("0") == 0 and parse_prefill_chunk("8") == 8
    for bad in ("-1", "eight", ""):
        with pytest.raises(ValueError, match="--prefill-chunk"):
            parse_prefill_chunk(bad)
    assert [chunk_name(t) for t in (None, 0, 8)] == ["auto", "whole", "8"]
    with pytest.raises(ValueError):
        ChunkSizer(0)
