"""Keep one OpenMP team alive at a time.

torch's intra-op pool is OpenMP, and libgomp gives every OS thread that opens a parallel region
its own team of workers. Once the process holds more team threads than it has CPUs, libgomp
stops spinning between regions (100 spins instead of about 300,000) and parks the workers, so
every parallel region (~300 per decode step) pays a futex wake-up. That happens as soon as a
second thread has used torch: the one that loaded the weights and the engine's scheduler. On a
2-core machine a batch-1 decode step took 70 ms that way instead of 48 ms.

So a thread that finishes a burst of torch work and goes idle releases its team
(`omp_pause_resource_all`, OpenMP 5.0); the next parallel region it opens builds a new one, at
the cost of starting its worker threads (well under a millisecond).
"""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path

import torch  # noqa: F401  (loads the OpenMP runtime that release_team looks up)

_RUNTIMES = ("libgomp", "libiomp5", "libomp")  # GNU, Intel and LLVM OpenMP runtimes
_OMP_PAUSE_SOFT = 1
_lock = threading.Lock()
_pause = None
_looked = False


def _find_pause():
    """omp_pause_resource_all of the OpenMP runtime torch loaded, or None (not Linux, no OpenMP
    runtime mapped, or one older than OpenMP 5.0)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)  # address perms offset dev inode [path]
        path = fields[5] if len(fields) == 6 else ""
        if Path(path).name.startswith(_RUNTIMES):
            try:
                fn = ctypes.CDLL(path).omp_pause_resource_all
            except (OSError, AttributeError):
                continue
            fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
            return fn
    return None


def release_team() -> bool:
    """Release the calling thread's OpenMP worker threads; True if the runtime did so."""
    global _pause, _looked
    with _lock:
        if not _looked:
            _pause, _looked = _find_pause(), True
    return _pause is not None and _pause(_OMP_PAUSE_SOFT) == 0
