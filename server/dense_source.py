"""The store's dense weights, read back one tensor at a time into a reused buffer.

The swap strategy restores pruned values from here instead of keeping a second copy in
memory. Plain reads (not a memory map) from the page cache: a map would fault in every page on
each switch and count the whole file toward the process's RSS while mapped.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}


def read_header(path: Path) -> tuple[int, dict]:
    """(data offset, header) of a safetensors file."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        return 8 + size, json.loads(f.read(size))


class DenseReader:
    """`read(name)` returns a tensor that stays valid until the next read."""

    def __init__(self, path: Path, names: list[str]) -> None:
        self.path = path
        offset, header = read_header(path)
        self.entries = {}
        for name in names:
            meta = header[name]
            start, end = meta["data_offsets"]
            self.entries[name] = (offset + start, end - start, _DTYPES[meta["dtype"]],
                                  meta["shape"])
        self.buffer = torch.empty(max(n for _, n, _, _ in self.entries.values()),
                                  dtype=torch.uint8)

    def read(self, file, name: str) -> torch.Tensor:
        """Read `name` from `file` (opened on self.path, unbuffered)."""
        start, nbytes, dtype, shape = self.entries[name]
        view = memoryview(self.buffer.numpy())[:nbytes]
        file.seek(start)
        got = 0
        while got < nbytes:
            n = file.readinto(view[got:])
            if not n:
                raise OSError(f"{self.path}: truncated while reading {name}")
            got += n
        return self.buffer[:nbytes].view(dtype).view(shape)
