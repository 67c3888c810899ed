"""Token choice: the nucleus (top-p) and top-k sets are exact, whatever the vocabulary size."""

import pytest
import torch

from submodel.server import sampling
from submodel.server.api import SamplingParams


def frequencies(logits, params, draws=4000):
    gen = torch.Generator().manual_seed(3)
    counts = torch.zeros(logits.numel())
    for _ in range(draws):
        counts[sampling.choose_token(logits, params, gen)] += 1
    return counts / draws


def nucleus(logits, temperature, top_p, top_k=0):
    """The reference distribution by a full sort."""
    logits = logits / temperature
    if top_k:
        logits = logits.masked_fill(logits < torch.topk(logits, top_k).values[-1], float("-inf"))
    probs = torch.softmax(logits, -1)
    ordered, order = torch.sort(probs, descending=True)
    ordered[torch.cumsum(ordered, -1) - ordered >= top_p] = 0
    out = torch.zeros_like(probs)
    out[order] = ordered
    return out / out.sum()


@pytest.mark.parametrize("top_p,top_k", [(0.8, 0), (0.95, 0), (1.0, 3), (0.7, 4), (1.0, 0)])
def test_sampling_follows_the_nucleus(monkeypatch, top_p, top_k):
    # a tiny first candidate window, so widening (and the full fallback) are exercised
    monkeypatch.setattr(sampling, "CANDIDATES", (2, 4))
    logits = torch.tensor([2.0, 1.5, 1.0, 0.6, 0.3, 0.0, -0.4, -1.0, -2.0, -3.0])
    params = SamplingParams(temperature=0.9, top_p=top_p, top_k=top_k)
    expected = nucleus(logits, 0.9, top_p, top_k)
    got = frequencies(logits, params)
    assert torch.all(got[expected == 0] == 0)
    torch.testing.assert_close(got, expected, atol=0.03, rtol=0)


@pytest.mark.parametrize("top_p,top_k", [(0.9, 0), (1.0, 0), (1.0, 3)])
def test_a_large_vocabulary_is_sampled_from_its_tokens_of_any_weight(top_p, top_k):
    """Tokens e^-30 below the best (over the temperature) are left out of the draw; the others,
    wherever they sit in the vocabulary, keep exactly their share."""
    gen = torch.Generator().manual_seed(1)
    logits = torch.full((50_000,), -60.0) + torch.rand(50_000, generator=gen)  # a far tail
    head = torch.tensor([7, 49_999, 123, 31_000, 0, 2_024])
    logits[head] = torch.tensor([2.0, 1.6, 1.1, 0.7, 0.2, -0.5])
    params = SamplingParams(temperature=0.8, top_p=top_p, top_k=top_k)
    expected = nucleus(logits, 0.8, top_p, top_k)
    got = frequencies(logits, params)
    tail = torch.ones(50_000, dtype=torch.bool)
    tail[head] = False
    assert not got[tail].any()
    torch.testing.assert_close(got[head], expected[head], atol=0.03, rtol=0)


def test_a_flat_distribution_draws_from_the_whole_vocabulary():
    logits = torch.zeros(40_000)  # every token as likely: no tail to leave out
    got = frequencies(logits, SamplingParams(temperature=1.0), draws=2000)
    assert (got > 0).sum() > 1900  # ~1950 distinct tokens in 2000 draws of 40k


def test_nan_logits_fail_the_draw():
    logits = torch.tensor([0.5, float("nan"), 0.1])
    with pytest.raises(ValueError, match="not finite"):
        sampling.choose_token(logits, SamplingParams(temperature=0.7), torch.Generator())


def test_greedy_is_the_argmax():
    logits = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    assert sampling.choose_token(logits, SamplingParams(temperature=0), None) == logits.argmax()


def test_tiny_temperature_is_near_greedy():
    """A temperature so small that logits / T overflows float32 still samples (the best
    token), instead of a NaN softmax failing the request."""
    logits = torch.tensor([1.0, 3.0, 2.0, -50.0])
    for t in (1e-45, 1e-30, 1e-7):
        for top_p, top_k in ((1.0, 0), (0.9, 0), (1.0, 2)):
            params = SamplingParams(max_tokens=1, temperature=t, top_p=top_p, top_k=top_k)
            assert sampling.choose_token(logits, params, torch.Generator().manual_seed(0)) == 1
