"""Sandbox throughput per language: runs per second of known-good programs (the canonical Python
solutions; our hand-written solutions for the other languages) through a fresh executor, and the
CPU seconds its sandboxed processes used per run (which, unlike runs/s, does not depend on what
else the machine is doing). `submodel bench sandbox --runs 200`.
"""

from __future__ import annotations

import collections
import itertools
import os
import resource
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from submodel.bench.humaneval.executors import EXECUTORS
from submodel.bench.humaneval.problems import load_problems
from submodel.bench.humaneval.reference import RIGHT


@dataclass(frozen=True)
class Throughput:
    language: str
    runs: int
    workers: int
    startup_s: float  # the first run, with executor start (JVM, precompiled header)
    seconds: float  # the measured runs, after the first
    cpu_s: float  # user + system time of every sandboxed process, the first run included
    statuses: dict[str, int]

    @property
    def runs_per_s(self) -> float:
        return self.runs / self.seconds

    @property
    def cpu_ms_per_run(self) -> float:
        return 1000 * self.cpu_s / (self.runs + 1)


def reference_programs(language: str) -> list[str]:
    problems = {p.task_id: p for p in load_problems(language)}
    if language == "python":
        return [p.program(p.canonical_solution) for p in problems.values()]
    return [problems[task].program(code) for task, code in RIGHT[language].items()]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(language: str, runs: int = 100, workers: int | None = None) -> Throughput:
    workers = workers or os.cpu_count() or 1
    programs = reference_programs(language)
    cpu = _children_cpu()
    start = time.monotonic()
    executor = EXECUTORS[language]()
    try:
        executor.run(programs[0])
        startup = time.monotonic() - start
        batch = list(itertools.islice(itertools.cycle(programs), runs))
        start = time.monotonic()
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(executor.run, batch))
        seconds = time.monotonic() - start
    finally:
        executor.close()  # reaps a Java runner, so that its CPU time is counted
    statuses = collections.Counter(r.status for r in results)
    return Throughput(language, runs, workers, startup, seconds, _children_cpu() - cpu,
                      dict(statuses))


def markdown(rows: list[Throughput]) -> str:
    lines = ["| language | runs | workers | startup s | runs/s | CPU ms/run | statuses |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for t in rows:
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(t.statuses.items()))
        lines.append(f"| {t.language} | {t.runs} | {t.workers} | {t.startup_s:.2f} | "
                     f"{t.runs_per_s:.1f} | {t.cpu_ms_per_run:.0f} | {statuses} |")
    return "\n".join(lines)
