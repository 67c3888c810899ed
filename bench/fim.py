"""Fill-in-the-middle bench: cut a span out of each HumanEval canonical solution (Python),
ask each sub-model to fill it through `GenerateRequest.suffix`, and run the problem's tests on
the filled program. Two modes, as in HumanEval-infilling: `single` (one non-blank line) and
`multi` (a block of 2 to MULTI_LINES lines); the spans are drawn by a seeded generator from the
canonical solutions, not taken from that dataset. Greedy decoding: one fill per span and
sub-model, so the score is a pass rate."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc

from submodel.bench.humaneval.executors import get_executor
from submodel.bench.humaneval.problems import Problem
from submodel.server.api import Reason
from submodel.server.client import Client
from submodel.server.errors import reason_of
from submodel.v1 import submodel_pb2 as pb

MODES = ("single", "multi")
MULTI_LINES = 4


@dataclass(frozen=True)
class Span:
    problem: Problem
    mode: str
    prefix: str  # the prompt and the solution's lines before the span
    middle: str  # the lines cut out (what a right fill may look like)
    suffix: str  # the solution's lines after the span

    def program(self, fill: str) -> str:
        """The program the tests run: prefix + fill + suffix + tests."""
        return self.prefix + fill + self.suffix + self.problem.tests


def cut_spans(problem: Problem, seed: int) -> list[Span]:
    """One span per mode from the canonical solution (fewer if it is too short)."""
    lines = problem.canonical_solution.splitlines(keepends=True)
    code = [i for i, line in enumerate(lines) if line.strip()]
    rng = random.Random(f"{seed}:{problem.task_id}")
    spans = []
    for mode in MODES:
        if mode == "single":
            start = rng.choice(code)
            stop = start + 1
        else:
            starts = [i for i in code if i + 1 < len(lines)]
            if not starts:
                continue
            start = rng.choice(starts)
            stop = start + rng.randint(2, min(MULTI_LINES, len(lines) - start))
        spans.append(Span(problem, mode, problem.prompt + "".join(lines[:start]),
                          "".join(lines[start:stop]), "".join(lines[stop:])))
    return spans


def trim(span: Span, text: str) -> str:
    """The fill an editor client would insert, from the model's text: a single-line fill keeps
    its first line; a multi-line fill ends before the first line that leaves the function
    (column 0: the spans lie inside a function body) or repeats the suffix's first line (the
    model went on past the span, as an Instruct model does). Every fill ends with the newline
    the span's text had, so the suffix starts a line of its own."""
    if span.mode == "single":
        fill = text.split("\n", 1)[0]
    else:
        anchor = next((line.strip() for line in span.suffix.splitlines() if line.strip()), None)
        kept = []
        for line in text.splitlines(keepends=True):
            if line.strip() and (not line[0].isspace() or line.strip() == anchor):
                break
            kept.append(line)
        fill = "".join(kept)
    if span.middle.endswith("\n") and not fill.endswith("\n"):
        fill += "\n"
    return fill


def request_for(span: Span, row: str, max_tokens: int) -> pb.GenerateRequest:
    return pb.GenerateRequest(prompt=span.prefix, suffix=span.suffix, language=row,
                              filename="solution.py", max_tokens=max_tokens, temperature=0.0)


class FillLog:
    """The model's text for each finished fill (before `trim`), a JSON line each
    (OUT/fills.jsonl), so that an interrupted run resumes where it stopped. A line is reused
    when its row computed with the same thing (the row identity: base files, mask, strategy,
    dtype), with the same seed and max_tokens."""

    def __init__(self, path: Path, identities: dict[str, str], seed: int,
                 max_tokens: int) -> None:
        self.path, self.identities = path, identities
        self.settings = {"seed": seed, "max_tokens": max_tokens}
        self.done: dict[tuple[str, str, str], str | None] = {}
        self._lock = threading.Lock()
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    r = json.loads(line)
                except ValueError:  # a line cut short by the interruption
                    continue
                if (r.get("identity") == identities.get(r.get("row"))
                        and all(r.get(k) == v for k, v in self.settings.items())):
                    self.done[(r["row"], r["task_id"], r["mode"])] = r["fill"]

    def get(self, row: str, span: Span) -> tuple[bool, str | None]:
        key = (row, span.problem.task_id, span.mode)
        return key in self.done, self.done.get(key)

    def add(self, row: str, span: Span, fill: str | None) -> None:
        record = {"row": row, "identity": self.identities.get(row),
                  "task_id": span.problem.task_id, "mode": span.mode, **self.settings,
                  "fill": fill}
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def fill_all(client: Client, spans: list[Span], rows: Iterable[str], max_tokens: int,
             concurrency: int, log: FillLog) -> dict[tuple[str, int], str | None]:
    """(row, span index) -> the model's text, or None when the prompt does not fit the
    server's context; fills already in `log` are not asked again, new ones are added to it.
    Requests go `concurrency` at a time (the server batches them). Any other failure raises
    grpc.RpcError."""
    jobs = [(row, i) for row in rows for i in range(len(spans))]

    def one(job: tuple[str, int]) -> str | None:
        row, i = job
        known, fill = log.get(row, spans[i])
        if known:
            return fill
        try:
            response = client.generate(request_for(spans[i], row, max_tokens), timeout=600)
            fill = response.completions[0].text
        except grpc.RpcError as e:
            if reason_of(e)[0] != Reason.PROMPT_TOO_LONG:
                raise
            fill = None
        log.add(row, spans[i], fill)
        return fill

    with ThreadPoolExecutor(concurrency) as pool:
        return dict(zip(jobs, pool.map(one, jobs), strict=True))


def score(spans: list[Span], texts: dict[tuple[str, int], str | None], rows: Iterable[str],
          workers: int | None = None) -> dict:
    """Pass rates per row and mode of the trimmed fills (over the spans whose prompt fit the
    context; the others are counted as too_long), plus every span's outcome."""
    executor = get_executor("python")
    fills = {k: None if text is None else trim(spans[k[1]], text) for k, text in texts.items()}
    keys = [k for k, fill in fills.items() if fill is not None]
    programs = [spans[i].program(fills[(row, i)]) for row, i in keys]
    with ThreadPoolExecutor(workers or 2) as pool:
        results = dict(zip(keys, pool.map(executor.run, programs), strict=True))
    table: dict[str, dict[str, dict]] = {}
    for row in rows:
        table[row] = {}
        for mode in MODES:
            ran = [results[(row, i)].passed for i, s in enumerate(spans)
                   if s.mode == mode and (row, i) in results]
            too_long = sum(1 for i, s in enumerate(spans)
                           if s.mode == mode and fills[(row, i)] is None)
            table[row][mode] = {"spans": len(ran), "passed": sum(ran), "too_long": too_long,
                                "pass_rate": sum(ran) / len(ran) if ran else None}
    details = [{"row": row, "task_id": spans[i].problem.task_id, "mode": spans[i].mode,
                "text": texts[(row, i)], "fill": fills[(row, i)],
                "passed": results[(row, i)].passed if (row, i) in results else None,
                "status": results[(row, i)].status if (row, i) in results else "too_long"}
               for row, i in fills]
    return {"table": table, "spans": details}


def markdown(table: dict, meta: dict) -> str:
    lines = ["# Fill-in-the-middle: HumanEval (Python) spans, greedy", "",
             f"{meta['problems']} problems, seed {meta['seed']}; served {meta['source']}.",
             "Pass rate of the problem's tests after the sub-model fills the cut span (spans "
             "whose prompt exceeds the server's context are left out and counted).", "",
             "| sub-model | " + " | ".join(f"{m}-line" for m in MODES) + " |",
             "|---|" + "---|" * len(MODES)]
    for row, modes in table.items():
        cells = []
        for mode in MODES:
            c = modes[mode]
            rate = "–" if c["pass_rate"] is None else f"{100 * c['pass_rate']:.1f}%"
            long = f", {c['too_long']} too long" if c["too_long"] else ""
            cells.append(f"{rate} ({c['passed']}/{c['spans']}{long})")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
