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
each row's candidates are sorted once and walked in order: a cycle costs O(rows), not a scan.
Ties go to the lower column index.
"""

from __future__ import annotations

import torch

VAR_FLOOR = 1e-12  # a constant channel (variance 0) is the most reliable of all, not a 0/0


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
    grow_order = torch.sort(grow_key, dim=1, descending=True, stable=True).indices[:, :depth]
    prune_order = torch.sort(prune_key, dim=1, stable=True).indices[:, :depth]
    n_swaps = torch.minimum(growable.sum(dim=1), prunable.sum(dim=1))
    active = e.abs() > threshold
    rows = torch.arange(keep.shape[0])
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
