"""How many tokens of a waiting prompt ride along in a decode step (chunked prefill).

A chunk's rows cost compute on top of the running requests' step (its Linear rows, and its
attention against the prompt's earlier tokens, which grows as the prompt goes in), and every
running request waits for that step. A fixed size trades the running requests' inter-token
latency against the new prompt's first token once for all machines and prompt lengths; the
default instead sizes each chunk from what steps cost here and now: the last steps without a
chunk give the running requests' own step time, steps with one give the cost per chunk token,
and the next chunk gets the tokens that fit in STEP_BUDGET of the running step on top. The
running step itself grows as its requests' contexts do (and moves with the host), so while a
prompt goes in, every PLAIN_EVERY-th step carries no chunk and measures it afresh: without
that, its growth reads as chunk cost and the chunks shrink to a token (a 1.9k-token prompt
under one decoding request took 1,650 steps and 33 s, AMD EPYC).
"""

from __future__ import annotations

STEP_BUDGET = 0.5      # a chunk adds at most this fraction of the running step (p99 well in 2x)
FIRST_CHUNK = 4        # before anything is measured (a token costs 2-4 ms on 2 cores)
MIN_CHUNK, MAX_CHUNK = 1, 512  # one token when even two would pass the budget (a fast step)
SMOOTHING = 0.3        # weight of the newest measurement in the running averages
PLAIN_EVERY = 16       # chunked steps between two that measure the running step alone
PLAIN_GROWTH = 1.25    # the most one fresh measure of it may raise the running step's time


class ChunkSizer:
    """`fixed` tokens per chunk, or (None) sized per step from measured step times."""

    def __init__(self, fixed: int | None = None) -> None:
        if fixed is not None and fixed < 1:
            raise ValueError("a fixed prefill chunk is at least 1 token")
        self.fixed = fixed
        self.plain_step: float | None = None       # seconds, a decode step without a chunk
        self.per_token: float | None = None        # seconds a chunk token adds to a step
        self.tokens = fixed or FIRST_CHUNK
        self.chunked_steps = 0  # since the last step without a chunk

    def size(self) -> int:
        """Tokens for the next chunk."""
        return self.tokens

    def plain_step_due(self) -> bool:
        """Whether the next step should carry no chunk, to measure the running step again."""
        return self.fixed is None and self.chunked_steps >= PLAIN_EVERY

    def observe(self, seconds: float, chunk: int) -> None:
        """A decode step took `seconds` carrying `chunk` prompt tokens (0: none)."""
        if self.fixed is not None:
            return
        if chunk == 0:
            if self.chunked_steps and self.plain_step is not None:
                # a fresh measure after chunked steps replaces the stale one, but one slow step
                # (a page fault, another process) raises it by at most PLAIN_GROWTH: taken
                # whole, it made the chunk tokens after it look free and chunks double to 3x
                # steps
                self.plain_step = min(seconds, PLAIN_GROWTH * self.plain_step)
            else:
                self.plain_step = _average(self.plain_step, seconds)
            self.chunked_steps = 0
            return
        self.chunked_steps += 1
        if self.plain_step is None:
            return
        self.per_token = _average(self.per_token,
                                  max(seconds - self.plain_step, 0.0) / chunk)
        fits = STEP_BUDGET * self.plain_step / max(self.per_token, 1e-9)
        # at most double per step: one fast step (a page fault, a quiet moment) is not a trend
        self.tokens = int(min(max(fits, MIN_CHUNK), 2 * self.tokens, MAX_CHUNK))


def _average(old: float | None, new: float) -> float:
    return new if old is None else (1 - SMOOTHING) * old + SMOOTHING * new


def parse_prefill_chunk(text: str) -> int | None:
    """`--prefill-chunk`: 'auto' (None: sized per step), or tokens per step (0: whole)."""
    if text == "auto":
        return None
    try:
        tokens = int(text)
    except ValueError:
        tokens = -1
    if tokens < 0:
        raise ValueError(f"--prefill-chunk {text!r}: 'auto', or tokens per step >= 0 "
                         "(0: whole prompts)")
    return tokens


def chunk_name(tokens: int | None) -> str:
    return "auto" if tokens is None else str(tokens) if tokens else "whole"
