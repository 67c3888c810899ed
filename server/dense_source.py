"""Read-only views of the store's dense weights through the OS page cache.

The swap strategy restores pruned values from here instead of keeping a second copy in
memory. The file is mapped only while a switch runs: once unmapped, its pages stay in the page
cache (shared, reclaimable) and stop counting toward the process's RSS.
"""

from __future__ import annotations

import json
import mmap
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}


def read_header(path: Path) -> tuple[int, dict]:
    """(data offset, header) of a safetensors file."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        return 8 + size, json.loads(f.read(size))


@contextmanager
def mapped_tensors(path: Path, names: list[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Zero-copy tensors over the mapped file for `names`; invalid after the block exits."""
    offset, header = read_header(path)
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)  # private: never written back
    tensors = {}
    try:
        for name in names:
            meta = header[name]
            dtype = _DTYPES[meta["dtype"]]
            start, end = meta["data_offsets"]
            count = (end - start) // dtype.itemsize
            tensors[name] = torch.frombuffer(mm, dtype=dtype, count=count,
                                             offset=offset + start).view(meta["shape"])
        yield tensors
    finally:
        tensors.clear()
        mm.close()
