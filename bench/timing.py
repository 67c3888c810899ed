"""Timing helpers shared by the benches. Every timed figure is given in wall time (what a user
sees) and in CPU time (which does not count the turns other processes took on the cores, so
its ratios stay stable on a shared machine; compare CPU figures at equal threads)."""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable


def clock(per_thread: bool = False) -> tuple[float, float]:
    """(wall, CPU) seconds now; CPU of the whole process, or of this thread only."""
    return time.perf_counter(), time.thread_time() if per_thread else time.process_time()


def since(start: tuple[float, float], per_thread: bool = False) -> tuple[float, float]:
    wall, cpu = clock(per_thread)
    return wall - start[0], cpu - start[1]


def both(times: list[tuple[float, float]], scale: float = 1.0) -> dict:
    """Median wall and CPU of (wall, cpu) samples, times `scale`."""
    return {"wall": statistics.median(t[0] for t in times) * scale,
            "cpu": statistics.median(t[1] for t in times) * scale}


def ratio(a: dict, b: dict) -> dict:
    return {k: a[k] / b[k] for k in ("wall", "cpu")}


def best(runs: list[dict]) -> dict:
    """The highest wall and CPU rates of several runs."""
    return {k: max(r[k] for r in runs) for k in ("wall", "cpu")}


def fastest(fn: Callable[[], object], repeats: int) -> dict:
    """Best wall and CPU milliseconds of `repeats` calls after one warm-up."""
    fn()
    wall = cpu = float("inf")
    for _ in range(repeats):
        start = clock()
        fn()
        w, c = since(start)
        wall, cpu = min(wall, w), min(cpu, c)
    return {"ms": wall * 1e3, "cpu_ms": cpu * 1e3}


def progress(bench: str, message: str) -> None:
    """A time-stamped progress line on stderr, with the load average (is the machine shared?)."""
    print(f"[bench {bench} {time.strftime('%H:%M:%S')}, load {os.getloadavg()[0]:.1f}] "
          f"{message}", file=sys.stderr, flush=True)
