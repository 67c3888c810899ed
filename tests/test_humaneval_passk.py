import math

import pytest

from submodel.bench.humaneval.passk import aggregate, pass_at_k


def by_hand(n: int, c: int, k: int) -> float:
    """1 - C(n-c, k) / C(n, k), straight from the definition."""
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@pytest.mark.parametrize(("n", "c", "k", "expected"), [
    (10, 0, 1, 0.0),
    (10, 10, 10, 1.0),
    (5, 2, 1, 0.4),  # one draw: c / n
    (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    (4, 1, 3, 0.75),  # 1 - C(3,3)/C(4,3) = 1 - 1/4
    (10, 3, 8, 1.0),  # n - c < k: some pick must pass
    (20, 1, 10, 0.5),  # 1 - C(19,10)/C(20,10) = 1 - 10/20
])
def test_pass_at_k_matches_hand_computed_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)
    assert pass_at_k(n, c, k) == pytest.approx(by_hand(n, c, k))


def test_pass_at_k_rejects_impossible_counts():
    for n, c, k in [(5, 6, 1), (5, 1, 6), (5, 1, 0), (5, -1, 1)]:
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)


def test_aggregate_is_the_mean_over_problems():
    results = {
        "HumanEval/0": [True] * 10,
        "HumanEval/1": [False] * 10,
        "HumanEval/2": [True, False, False, False, False] * 2,  # c = 2 of 10
    }
    score = aggregate(results, ks=(1, 10))
    assert score.problems == 3 and score.samples == 30
    assert score.get(1) == pytest.approx((1.0 + 0.0 + 0.2) / 3)
    assert score.get(10) == pytest.approx((1.0 + 0.0 + 1.0) / 3)


def test_aggregate_leaves_out_k_beyond_some_problems_sample_count():
    score = aggregate({"a": [True, False], "b": [True] * 10}, ks=(1, 10))
    assert score.get(1) == pytest.approx(0.75)
    assert score.get(10) is None
    with pytest.raises(ValueError):
        aggregate({"a": []})
