"""Per-sequence token choice and text assembly: sampling with its own seeded generator (so a
request's tokens do not depend on what else is in the batch), and stop strings that may span
token boundaries."""

from __future__ import annotations

import numpy as np
import torch

from submodel.server.api import SamplingParams


def make_generator(params: SamplingParams, sample: int) -> torch.Generator | None:
    if params.temperature == 0:
        return None
    g = torch.Generator()
    if params.seed is None:
        g.seed()
    else:
        g.manual_seed((params.seed * 1_000_003 + sample) % (2**63 - 1))  # any uint64 seed
    return g


# Top-p needs the most probable tokens in order, but sorting a 150k vocabulary costs ~30 ms a
# row here; the nucleus is usually far smaller, so look at the top few first and widen only
# when they do not cover top_p.
CANDIDATES = (256, 4096, 32768)


# A token whose logit over the temperature is this far below the best one's has under e^-30 of
# its probability (all of them together, for a 150k vocabulary: under 1.4e-8 of the total, below
# what float32 resolves in it), so sampling draws from the others only: at a code model's usual
# temperatures a few hundred tokens, where softmax, windows and draw over all 150k took 0.4-2.5
# ms a token (AMD EPYC), a tenth of a decode step and more.
NEGLIGIBLE = 30.0


def choose_token(logits: torch.Tensor, params: SamplingParams,
                 generator: torch.Generator | None) -> int:
    """One token from fp32 logits [V]: greedy at temperature 0, else top-k / top-p sampling.
    numpy's argmax and max take 6 us over a 150k vocabulary where torch's take ~80."""
    values = logits.numpy()
    if params.temperature == 0:
        return int(values.argmax())
    top = float(values.max())
    near = np.flatnonzero(values >= top - NEGLIGIBLE * params.temperature)
    if not 0 < len(near) <= CANDIDATES[-1]:  # a flat distribution (or NaN logits): all of them
        return _sample(logits, top, params, generator)
    ids = torch.from_numpy(near)
    return int(ids[_sample(logits[ids], top, params, generator)])


def _sample(logits: torch.Tensor, top: float, params: SamplingParams,
            generator: torch.Generator | None) -> int:
    """The index of one draw from logits / temperature under top-k and top-p (`top`: the best
    logit)."""
    # Shift the best logit to 0 before dividing: a tiny temperature then sends the others to
    # -inf, instead of overflowing every logit to +-inf and the softmax to NaN.
    logits = (logits - top) / params.temperature
    vocab = logits.numel()
    limit = params.top_k if 0 < params.top_k < vocab else vocab
    if limit == vocab and params.top_p >= 1.0:
        return _draw(torch.softmax(logits, -1), generator)
    # The mass of a candidate window is measured against all `limit` tokens' (a window's own
    # total would make every window look complete).
    kept = logits if limit == vocab else torch.topk(logits, limit, sorted=False).values
    total = torch.logsumexp(kept, -1)
    for k in (*[c for c in CANDIDATES if c < limit], limit):
        values, ids = torch.topk(logits, k)  # sorted, most probable first
        probs = torch.exp(values - total)
        if k == limit or float(probs.sum()) >= params.top_p:
            break
    if params.top_p < 1.0:  # keep the smallest prefix whose mass reaches top_p
        probs = probs.masked_fill(torch.cumsum(probs, -1) - probs >= params.top_p, 0.0)
    return int(ids[_draw(probs, generator)])


def _draw(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    """An index drawn with probability probs[i] / sum(probs): the first whose running sum (in
    float64) passes a uniform draw times the total. torch.multinomial took 2.3 ms over a 150k
    vocabulary, this ~0.3."""
    total = torch.cumsum(probs, 0, dtype=torch.float64)
    if not 0 < float(total[-1]) < float("inf"):
        raise ValueError("the token probabilities are not finite, or all zero")
    u = torch.rand((), generator=generator, dtype=torch.float64) * total[-1]
    return int(torch.searchsorted(total, u, right=True).clamp_max(len(probs) - 1))


class TextAssembler:
    """Turns generated token ids into text deltas, holding back what may still become a stop
    string or an incomplete UTF-8 character."""

    def __init__(self, tokenizer, stop: tuple[str, ...]) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.emitted = 0  # characters of the text already handed out
        self.text = ""
        self.stopped = False

    def add(self, token_id: int) -> tuple[str, bool]:
        """Append a token; returns (new text safe to emit, whether a stop string was hit)."""
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        for s in self.stop:
            at = text.find(s, max(0, self.emitted - len(s)))
            if at >= 0:
                self.text = text[:at]
                self.stopped = True
                return self._flush(len(self.text)), True
        self.text = text
        safe = len(text.rstrip("\ufffd"))  # a multi-byte character split across tokens
        for s in self.stop:  # a suffix that starts a stop string must wait
            for n in range(min(len(s) - 1, safe), 0, -1):
                if text[:safe].endswith(s[:n]):
                    safe = min(safe, len(text[:safe]) - n)
                    break
        return self._flush(max(safe, self.emitted)), False

    def finish(self) -> str:
        """Whatever is still held back, at the end of the sequence."""
        if not self.stopped:  # a character cut off by the end is dropped
            self.text = self.text.rstrip("\ufffd")
        return self._flush(len(self.text))

    def _flush(self, upto: int) -> str:
        delta = self.text[self.emitted:upto]
        self.emitted = max(self.emitted, upto)
        return delta
