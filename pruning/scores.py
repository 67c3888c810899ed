"""Per-weight importance scores of one Linear from its calibration input statistics.

Both scores rank the weights of each output row; the mask keeps the highest of each row.
"""

from __future__ import annotations

import torch

RIA_POWER = 0.5  # exponent of the activation norm in RIA (the paper's a = 0.5)
WANDA_POWER = 1.0


def input_norm(sum_sq: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """||X_j||_2 per input channel j, averaged over tokens (a per-layer constant factor, which
    changes no ranking within a row)."""
    return torch.sqrt(sum_sq / n_tokens).to(torch.float32)


def wanda_score(weight: torch.Tensor, sum_sq: torch.Tensor, n_tokens: int,
                power: float = WANDA_POWER) -> torch.Tensor:
    """Wanda (Sun et al. 2023): |W_ij| * ||X_j||_2 ** power (Wanda: 1; 0 is magnitude)."""
    norm = input_norm(sum_sq, n_tokens).pow(power)
    return weight.detach().abs().to(torch.float32) * norm[None, :]


def ria_score(weight: torch.Tensor, sum_sq: torch.Tensor, n_tokens: int,
              power: float = RIA_POWER) -> torch.Tensor:
    """RIA (Zhang et al., ICLR 2024): relative importance times ||X_j||_2 ** power (RIA: 0.5).

    RI_ij = |W_ij| / sum_k |W_ik| + |W_ij| / sum_k |W_kj|: a weight counts relative to both its
    output row and its input column, so a channel whose weights are all large does not take
    every row's budget.
    """
    a = weight.detach().abs().to(torch.float32)
    row = a.sum(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    col = a.sum(dim=0, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    relative = a / row + a / col
    return relative * input_norm(sum_sq, n_tokens).pow(power)[None, :]


SCORES = {"wanda": wanda_score, "ria": ria_score}
SCORE_POWER = {"wanda": WANDA_POWER, "ria": RIA_POWER}  # each score's own exponent
