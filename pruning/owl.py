"""OWL (Yin et al., 2024): outlier-weighted layer-wise sparsity.

A block whose Wanda scores have more outliers (scores above M x the block's mean score) is
pruned less. Per block b with layer outlier distribution LOD_b:

    sparsity_b = target - lambda * (LOD_b - mean(LOD)) / max_b |LOD_b - mean(LOD)|

with the means weighted by each block's prunable parameter count. So every block lies within
+-lambda of the target (the most and least outlier-heavy one at the edge) and the
parameter-weighted mean is exactly the target (up to rounding to whole weights per row).

The LODs come from a first, dense statistics pass over all blocks, before any pruning: the
allocation needs every block's LOD at once (its normalisation uses the mean and the extreme
block), and a block reached by the pruning pass has to know its own sparsity then. This is
also how OWL's authors measure them (on the dense model). It costs one extra forward of the
calibration set per block (the pruning pass does two: statistics, then masked outputs).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from submodel.pruning.scores import wanda_score
from submodel.pruning.wanda import ChannelStats, walk_blocks


def outlier_ratio(scores: list[torch.Tensor], m: float) -> float:
    """Fraction of all scores in `scores` (one block's Linears) above m x their mean."""
    count = sum(s.numel() for s in scores)
    mean = sum(float(s.sum(dtype=torch.float64)) for s in scores) / count
    return sum(int((s > m * mean).sum()) for s in scores) / count


def allocate(ratios: list[float], sizes: list[int], target: float,
             lam: float) -> list[float]:
    """Per-block sparsities from outlier ratios (see the module docstring)."""
    if max(ratios) == min(ratios):
        return [target] * len(ratios)
    total = sum(sizes)
    mean = sum(r * n for r, n in zip(ratios, sizes, strict=True)) / total
    spread = max(abs(r - mean) for r in ratios)
    return [target - lam * (r - mean) / spread for r in ratios]


def block_outlier_ratios(model: nn.Module, calib: torch.Tensor, m: float,
                         batch_size: int = 8, device: str | torch.device = "cpu",
                         on_block: Callable[[int, int], None] | None = None
                         ) -> tuple[list[float], list[int]]:
    """(LOD per block, prunable parameters per block) from a dense pass over `calib`."""
    ratios: list[float] = []
    sizes: list[int] = []

    def measure(_index: int, block: dict[str, nn.Linear],
                stats: dict[str, ChannelStats]) -> dict[str, torch.Tensor]:
        scores = [wanda_score(lin.weight, stats[name].sum_sq, stats[name].n_tokens)
                  for name, lin in block.items()]
        ratios.append(outlier_ratio(scores, m))
        sizes.append(sum(lin.weight.numel() for lin in block.values()))
        return {}  # stay dense: the statistics of every block come from the dense model

    walk_blocks(model, calib, measure, batch_size, device, on_block=on_block)
    return ratios, sizes


def owl_block_sparsity(model: nn.Module, calib: torch.Tensor, target: float, m: float,
                       lam: float, batch_size: int = 8, device: str | torch.device = "cpu",
                       on_block: Callable[[int, int], None] | None = None
                       ) -> tuple[list[float], list[float]]:
    """(sparsity per block, LOD per block) for `target` overall."""
    ratios, sizes = block_outlier_ratios(model, calib, m, batch_size, device, on_block)
    return allocate(ratios, sizes, target, lam), ratios
