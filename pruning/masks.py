"""Bit-packed masks: 1 bit per weight, rows packed little-endian (bit j of byte b = column 8b+j),
1 = kept. This layout is the store's contract and is what the masked kernels read directly."""

from __future__ import annotations

import numpy as np
import torch

_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def pack(mask: torch.Tensor) -> torch.Tensor:
    """bool [out, in] -> uint8 [out, ceil(in/8)]."""
    bits = np.packbits(mask.cpu().numpy().astype(bool), axis=1, bitorder="little")
    return torch.from_numpy(bits)


def unpack(packed: torch.Tensor, in_features: int) -> torch.Tensor:
    """uint8 [out, ceil(in/8)] -> bool [out, in]."""
    bits = np.unpackbits(packed.cpu().numpy(), axis=1, count=in_features, bitorder="little")
    return torch.from_numpy(bits.astype(bool))


def kept_per_row(packed: torch.Tensor) -> torch.Tensor:
    """Number of kept weights in each row (padding bits are always 0)."""
    return torch.from_numpy(_POPCOUNT[packed.cpu().numpy()].sum(axis=1, dtype=np.int64))


def count_kept(packed: torch.Tensor) -> int:
    return int(_POPCOUNT[packed.cpu().numpy()].sum(dtype=np.int64))


def intersection_union(a: torch.Tensor, b: torch.Tensor) -> tuple[int, int]:
    """|A ∩ B| and |A ∪ B| of two packed masks' kept sets."""
    x, y = a.cpu().numpy(), b.cpu().numpy()
    inter = int(_POPCOUNT[x & y].sum(dtype=np.int64))
    union = int(_POPCOUNT[x | y].sum(dtype=np.int64))
    return inter, union
