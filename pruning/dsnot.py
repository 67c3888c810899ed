"""DSnoT (Zhang et al., ICLR 2024): training-free mask swaps that shrink each row's expected
reconstruction error. Weights never change; every row keeps exactly as many weights as before.

For output row i with keep-mask M and input channel means mu_j, the expected output lost to
pruning is e_i = sum_j W_ij * (1 - M_ij) * mu_j. Each cycle swaps one weight per row:

- grow the pruned weight with sign(e)*W_ij*mu_j > 0 (regrowing it moves e towards 0) that is
  largest per unit of variance, sign(e)*W_ij*mu_j / var_j (a low-variance channel's mean is a
  reliable stand-in for its values);
- prune the kept weight with sign(e)*W_ij*mu_j < 0 (pruning it also moves e towards 0) that
  has the least importance (the score that chose the initial mask: Wanda or RIA).

A row stops when |e| <= threshold, when e changes sign, when a swap would not shrink |e|, when
it runs out of candidates, or after `cycles` swaps. Because the candidate sets are fixed by the
sign of the initial error (a grown weight can never be pruned again, a pruned one never grown),
each row's first `cycles` candidates are ranked once and walked in order: a cycle costs O(rows),
not a scan. Ties go to the lower column index.
"""

from __future__ import annotations

import torch

VAR_FLOOR = 1e-12  # a constant channel (variance 0) is the most reliable of all, not a 0/0


def ranked_first(key: torch.Tensor, k: int, largest: bool) -> torch.Tensor:
    """Column indices of each row's k best keys, best first, ties to the lower column: the
    first k of a stable full sort, from a partial selection (several times faster)."""
    extra = min(k + 1, key.shape[1])  # one more, to see whether the k-th value is tied
    values, index = torch.topk(key, extra, dim=1, largest=largest, sorted=True)
    by_column, perm = torch.sort(index[:, :k], dim=1)
    order = torch.sort(values[:, :k].gather(1, perm), dim=1, descending=largest,
                       stable=True).indices
    ranked = by_column.gather(1, order)
    # topk may break a tie at the k-th value for a higher column than a stable sort would
    unsure = torch.isfinite(values[:, k - 1]) & (values[:, k - 1] == values[:, extra - 1])
    if extra > k and bool(unsure.any()):
        full = torch.sort(key[unsure], dim=1, descending=largest, stable=True).indices
        ranked[unsure] = full[:, :k]
    return ranked


def dsnot_refine(weight: torch.Tensor, keep: torch.Tensor, importance: torch.Tensor,
                 mean: torch.Tensor, var: torch.Tensor, cycles: int,
                 threshold: float) -> torch.Tensor:
    """The refined keep-mask (bool [out, in]); `keep` itself is not modified."""
    c = weight.detach().to(torch.float64) * mean.to(torch.float64)[None, :]
    keep = keep.clone()
    e = (c * (~keep)).sum(dim=1)
    sign = torch.sign(e)
    signed = sign[:, None] * c
    growable = ~keep & (signed > 0)
    prunable = keep & (signed < 0)
    grow_key = torch.where(growable, signed / var.to(torch.float64).clamp_min(VAR_FLOOR)[None, :],
                           torch.tensor(-torch.inf, dtype=torch.float64))
    prune_key = torch.where(prunable, importance.to(torch.float64),
                            torch.tensor(torch.inf, dtype=torch.float64))
    depth = min(cycles, keep.shape[1])
    grow_order = ranked_first(grow_key, depth, largest=True)
    prune_order = ranked_first(prune_key, depth, largest=False)
    n_swaps = torch.minimum(growable.sum(dim=1), prunable.sum(dim=1))
    active = e.abs() > threshold
    rows = torch.arange(keep.shape[0], device=keep.device)
    for t in range(depth):
        active &= n_swaps > t
        if not bool(active.any()):
            break
        grow, prune = grow_order[:, t], prune_order[:, t]
        new_e = e - c[rows, grow] + c[rows, prune]
        ok = active & (new_e.abs() < e.abs())
        keep[rows[ok], grow[ok]] = True
        keep[rows[ok], prune[ok]] = False
        e = torch.where(ok, new_e, e)
        active = ok & (e.abs() > threshold) & (torch.sign(e) == sign)
    return keep
