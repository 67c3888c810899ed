"""The pass@k matrix runner: rows are sub-models, columns are problem languages.

A forced row (dense or a language mask) sends every request with `language=<row>`; the "routed"
row sends none, so the router picks the sub-model from the prompt, as it would for an IDE, and
each request's routing is recorded. Each request asks for up to `per_request` samples
(GenerateRequest.n) with a seed drawn from (seed, problem, first sample index) and shared by all
rows, so rows differ by sub-model only. Samples and execution results go to JSONL caches as they
arrive: a rerun sends only the requests whose samples are missing.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from tqdm import tqdm

from submodel.bench.cache import JsonlCache, digest
from submodel.bench.humaneval.executors import get_executor, run_samples
from submodel.bench.humaneval.problems import Problem
from submodel.bench.humaneval.sandbox import SandboxError
from submodel.server.api import Reason
from submodel.server.client import Client
from submodel.server.errors import reason_of
from submodel.v1 import submodel_pb2 as pb

ROUTED = "routed"
RETRY_SECONDS = 1.0


class BenchError(Exception):
    """The run cannot go on; the message says why (samples so far stay cached)."""


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.8
    top_p: float = 0.95
    max_tokens: int = 384
    seed: int = 0


@dataclass(frozen=True)
class Plan:
    model: str  # identity of the served model (store or server fingerprint)
    rows: tuple[str, ...]  # ROUTED, DENSE and/or mask languages
    problems: dict[str, list[Problem]]  # column language -> its problems
    n: int
    row_model: Mapping[str, str] = field(default_factory=dict)  # a row's own identity, if any

    def identity(self, row: str) -> str:
        """The model part of a row's sample keys."""
        return self.row_model.get(row, self.model)
    sampling: Sampling = Sampling()
    per_request: int = 8  # GenerateRequest.n at most
    concurrency: int = 4  # requests in flight


@dataclass(frozen=True)
class Chunk:
    """One request: samples start .. start+count-1 of one problem for one row."""

    row: str
    problem: Problem
    start: int
    count: int
    seed: int  # chunk_seed(problem, start, plan seed)


@dataclass
class Stats:
    requests: int = 0
    samples_generated: int = 0
    samples_cached: int = 0
    tokens_generated: int = 0
    executions_run: int = 0
    seconds: float = 0.0


@dataclass
class Outcome:
    """What the runner leaves for the summary: every sample's record and result."""

    plan: Plan
    samples: dict[tuple[str, str, str], list[dict]]  # (row, language, task) -> records by index
    results: dict[tuple[str, str, str], list[dict]]  # same keys -> execution records
    too_long: dict[str, dict[str, str]] = field(default_factory=dict)  # lang -> task -> why
    stats: Stats = field(default_factory=Stats)


def chunk_seed(problem: Problem, start: int, seed: int) -> int:
    """The sampling seed of a request; the same for every row (common random numbers)."""
    return int(digest(seed, problem.language, problem.task_id, start), 16) % (1 << 31)


def prompt_sha(problem: Problem) -> str:
    return digest(problem.model_input, list(problem.stop))


def sample_key(plan: Plan, row: str, problem: Problem, index: int) -> str:
    s = plan.sampling
    return digest("sample", plan.identity(row), row, problem.language, problem.task_id,
                  prompt_sha(problem), s.temperature, s.top_p, s.max_tokens, s.seed, index)


def execution_key(language: str, program: str) -> str:
    return hashlib.sha256(f"{language}\0{program}".encode()).hexdigest()[:32]


def plan_chunks(plan: Plan, samples: JsonlCache) -> list[Chunk]:
    """The requests still needed: each run of missing sample indexes, cut to per_request."""
    chunks = []
    for row in plan.rows:
        for problems in plan.problems.values():
            for p in problems:
                missing = [i for i in range(plan.n)
                           if sample_key(plan, row, p, i) not in samples]
                for start, count in _runs(missing, plan.per_request):
                    seed = chunk_seed(p, start, plan.sampling.seed)
                    chunks.append(Chunk(row, p, start, count, seed))
    return chunks


def _runs(indexes: list[int], most: int) -> list[tuple[int, int]]:
    """[2, 3, 4, 7] with most=2 -> [(2, 2), (4, 1), (7, 1)]."""
    runs: list[tuple[int, int]] = []
    for i in indexes:
        if runs and runs[-1][0] + runs[-1][1] == i and runs[-1][1] < most:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((i, 1))
    return runs


def request_for(plan: Plan, chunk: Chunk) -> pb.GenerateRequest:
    s = plan.sampling
    fields = {} if chunk.row == ROUTED else {"language": chunk.row}
    return pb.GenerateRequest(prompt=chunk.problem.model_input, stop=list(chunk.problem.stop),
                              max_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p,
                              n=chunk.count, seed=chunk.seed, **fields)


def send(client: Client, request: pb.GenerateRequest) -> grpc.Future:
    """One Generate call, asynchronous (so an interrupted run can cancel what is in flight)."""
    return client.stub.Generate.future(request, metadata=client.metadata)


class _Executions:
    """Runs samples in the sandbox on a small pool while generation goes on; caches results."""

    def __init__(self, cache: JsonlCache, bar: tqdm, stats: Stats) -> None:
        self.cache, self.bar, self.stats = cache, bar, stats
        self._lock = threading.Lock()
        self.pool = ThreadPoolExecutor(2, thread_name_prefix="bench-exec")
        self.futures: list[Future] = []

    def submit(self, problem: Problem, completions: list[str]) -> None:
        self.bar.total += len(completions)
        self.bar.refresh()
        self.futures.append(self.pool.submit(self._run, problem, completions))

    def _run(self, problem: Problem, completions: list[str]) -> None:
        todo: dict[str, str] = {}
        for c in completions:
            key = execution_key(problem.language, problem.program(c))
            if key not in self.cache:
                todo.setdefault(key, c)
        if todo:
            results = run_samples(problem.language, problem, list(todo.values()))
            self.cache.put([{"key": k, "language": problem.language, "task_id": problem.task_id,
                             "passed": r.passed, "status": r.status, "detail": r.detail,
                             "seconds": round(r.seconds, 3)}
                            for k, r in zip(todo, results, strict=True)])
            with self._lock:
                self.stats.executions_run += len(todo)
        self.bar.update(len(completions))

    def wait(self) -> None:
        try:
            for f in self.futures:
                f.result()
        except (SandboxError, OSError) as e:
            raise BenchError(f"the sandbox failed: {e}") from None
        self.pool.shutdown()

    def abort(self) -> None:
        """Drop what has not started; let running sandboxes finish (they are time-limited), so
        their results reach the cache before it closes."""
        self.pool.shutdown(wait=True, cancel_futures=True)


def run_matrix(client: Client, plan: Plan, cache_dir: Path, *, progress: bool = True
               ) -> Outcome:
    """Generate what the caches lack, execute every sample, and return all of them."""
    languages = list(plan.problems)
    for lang in languages:  # a missing compiler fails now, not after hours of generation
        try:
            get_executor(lang)
        except (SandboxError, OSError) as e:
            raise BenchError(f"cannot run {lang} samples: {e}") from None
    started = time.monotonic()
    with JsonlCache(cache_dir / "samples.jsonl") as samples, \
            JsonlCache(cache_dir / "executions.jsonl") as executions:
        chunks = plan_chunks(plan, samples)
        total = len(plan.rows) * sum(len(ps) for ps in plan.problems.values()) * plan.n
        stats = Stats(samples_cached=total - sum(c.count for c in chunks))
        outcome = Outcome(plan, {}, {}, stats=stats)
        gen_bar = tqdm(total=total, initial=stats.samples_cached, desc="generate", unit="sample",
                       disable=not progress, dynamic_ncols=True, position=0)
        exec_bar = tqdm(total=0, desc="execute ", unit="sample", disable=not progress,
                        dynamic_ncols=True, position=1)
        runner = _Executions(executions, exec_bar, stats)
        try:
            _execute_cached(plan, samples, executions, runner)
            _generate(client, plan, chunks, samples, runner, outcome, gen_bar)
            runner.wait()
        except BaseException:
            runner.abort()
            raise
        finally:
            gen_bar.close()
            exec_bar.close()
        _collect(plan, samples, executions, outcome)
    stats.seconds = time.monotonic() - started
    return outcome


def _execute_cached(plan: Plan, samples: JsonlCache, executions: JsonlCache,
                    runner: _Executions) -> None:
    """Samples generated by an earlier run whose execution never finished."""
    for row in plan.rows:
        for problems in plan.problems.values():
            for p in problems:
                todo = []
                for i in range(plan.n):
                    record = samples.get(sample_key(plan, row, p, i))
                    if record is not None and execution_key(
                            p.language, p.program(record["completion"])) not in executions:
                        todo.append(record["completion"])
                if todo:
                    runner.submit(p, todo)


def _generate(client: Client, plan: Plan, chunks: list[Chunk], samples: JsonlCache,
              runner: _Executions, outcome: Outcome, bar: tqdm) -> None:
    """Keeps `plan.concurrency` requests in flight until every chunk is answered."""
    todo = deque(chunks)
    done: queue.Queue[grpc.Future] = queue.Queue()
    inflight: dict[grpc.Future, tuple[Chunk, float]] = {}
    try:
        while todo or inflight:
            while todo and len(inflight) < plan.concurrency:
                chunk = todo.popleft()
                if chunk.problem.task_id in outcome.too_long.get(chunk.problem.language, {}):
                    bar.update(chunk.count)
                    continue
                future = send(client, request_for(plan, chunk))
                inflight[future] = (chunk, time.monotonic())
                outcome.stats.requests += 1
                future.add_done_callback(done.put)
            if not inflight:
                break
            future = done.get()
            chunk, sent = inflight.pop(future)
            try:
                response = future.result()
            except grpc.RpcError as e:
                if _retry_or_skip(e, chunk, outcome, bar):
                    todo.appendleft(chunk)
                continue
            records = _records(plan, chunk, response, time.monotonic() - sent)
            samples.put(records)
            outcome.stats.samples_generated += len(records)
            outcome.stats.tokens_generated += sum(r["tokens"] for r in records)
            bar.update(len(records))
            runner.submit(chunk.problem, [r["completion"] for r in records])
    except BaseException:
        for future in inflight:
            future.cancel()
        raise


def _retry_or_skip(e: grpc.RpcError, chunk: Chunk, outcome: Outcome, bar: tqdm) -> bool:
    """True to send the chunk again (queue full); a prompt longer than the context skips the
    problem (counted in the report); anything else ends the run."""
    code, details = e.code(), e.details() or ""
    reason, field = reason_of(e)
    if reason == Reason.QUEUE_FULL:
        time.sleep(RETRY_SECONDS)
        return True
    p = chunk.problem
    if reason == Reason.PROMPT_TOO_LONG:
        outcome.too_long.setdefault(p.language, {})[p.task_id] = details
        bar.update(chunk.count)
        return False
    hint = ""
    if reason == Reason.INVALID_FIELD and field == "n":
        hint = " (lower --max-batch to at most the server's --max-batch)"
    elif reason == Reason.UNKNOWN_LANGUAGE:
        hint = " (the server does not serve this sub-model; check --submodels)"
    raise BenchError(f"{chunk.row} on {p.task_id} ({p.language}): {code.name}: {details}{hint}")


def _records(plan: Plan, chunk: Chunk, response: pb.GenerateResponse, seconds: float
             ) -> list[dict]:
    p, r = chunk.problem, response.routing
    routing = {"language": r.language, "confidence": round(r.confidence, 4),
               "source": r.source, "sub_model": r.sub_model}
    if len(response.completions) != chunk.count:
        raise BenchError(f"{p.task_id}: asked for {chunk.count} samples, got "
                         f"{len(response.completions)}")
    return [{"key": sample_key(plan, chunk.row, p, chunk.start + c.index),
             "model": plan.identity(chunk.row),
             "row": chunk.row, "language": p.language, "task_id": p.task_id,
             "index": chunk.start + c.index, "seed": chunk.seed, "completion": c.text,
             "finish_reason": c.finish_reason, "tokens": c.tokens, "routing": routing,
             "request_seconds": round(seconds, 3)}
            for c in response.completions]


def _collect(plan: Plan, samples: JsonlCache, executions: JsonlCache, outcome: Outcome) -> None:
    for row in plan.rows:
        for lang, problems in plan.problems.items():
            for p in problems:
                if p.task_id in outcome.too_long.get(lang, {}):
                    continue
                records = [samples.get(sample_key(plan, row, p, i)) for i in range(plan.n)]
                if any(r is None for r in records):
                    raise BenchError(f"{row} on {p.task_id} ({lang}): samples missing after "
                                     "the run")
                results = [executions.get(execution_key(lang, p.program(r["completion"])))
                           for r in records]
                if any(r is None for r in results):
                    raise BenchError(f"{row} on {p.task_id} ({lang}): execution results "
                                     "missing after the run")
                outcome.samples[row, lang, p.task_id] = records
                outcome.results[row, lang, p.task_id] = results
