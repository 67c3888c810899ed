"""Soak: a fresh `submodel serve` under mixed traffic for a fixed time (or request count), at a
fixed concurrency, with the failure modes clients bring: cancels, tight deadlines, bursts past
the queue limit and clients that vanish mid-stream.

Every request the bench sends is accounted for by its outcome (ok or the gRPC code), compared
with the server's own `submodel_requests_total`, and reported with p50/p99 latency and the
server's RSS per time window (growth after warm-up shows a leak).
"""

from __future__ import annotations

import random
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
from prometheus_client.parser import text_string_to_metric_families

from submodel.bench.humaneval.problems import load_problems
from submodel.bench.load import _percentile, read_memory
from submodel.bench.server_proc import ServerProcess
from submodel.server.client import Client
from submodel.v1 import submodel_pb2 as pb
from submodel.vocabulary import LANGUAGES

# What each request does, and how often (weights).
KINDS = {"stream": 5, "unary": 3, "cancel": 1, "deadline": 1, "vanish": 1, "burst": 0.25}
VANISHED = "vanished"  # the client closed its channel mid-stream (the server sees CANCELLED)
REFUSED = "resource_exhausted"  # the server's queue was full
# A worker refused for a full queue sends again once a request of the soak ends, or after a
# backoff (doubling per refusal in a row, as a gRPC client's retry policy would) where the queue
# holds requests whose clients gave up (a missed deadline ends at the client first).
BACKOFF_FIRST, BACKOFF_MAX = 0.05, 2.0
SETTLE_SECONDS = 30.0  # for the server's counters to catch up with the client's


class SoakError(Exception):
    """The soak cannot go on; the message says why."""


@dataclass(frozen=True)
class SoakConfig:
    store: Path
    seconds: float | None = 60.0  # run this long...
    requests: int | None = None  # ...or until this many were sent
    concurrency: int = 4
    max_tokens: int = 32
    max_queue: int = 4  # the server's: small, so bursts overflow it
    windows: int = 10
    seed: int = 0


@dataclass(frozen=True)
class Outcome:
    kind: str
    start: float  # seconds since the soak began
    latency: float
    outcome: str  # "ok", a gRPC code in lower case, or "vanished"


def _prompts(languages: list[str]) -> list[tuple[str, str]]:
    return [(lang, p.prompt) for lang in languages for p in load_problems(lang)[:20]]


class Traffic:
    """Sends requests of every kind until the budget is spent; records each outcome."""

    def __init__(self, cfg: SoakConfig, server: ServerProcess, client: Client,
                 prompts: list[tuple[str, str]]) -> None:
        self.cfg, self.server, self.client, self.prompts = cfg, server, client, prompts
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._ended = threading.Condition(self._lock)  # notified when a request ends
        self._sent = 0
        self._ended_count = 0  # requests that ended other than refused
        self._start = time.monotonic()
        self._end = self._start + cfg.seconds if cfg.seconds is not None else None

    def _take(self, count: int = 1) -> list[int]:
        """Numbers of the next `count` requests within the budget (fewer at its end)."""
        with self._lock:
            if self._end is not None and time.monotonic() >= self._end:
                return []
            if self.cfg.requests is not None:
                count = min(count, self.cfg.requests - self._sent)
            first = self._sent
            self._sent += max(count, 0)
            return list(range(first, first + max(count, 0)))

    def _record(self, kind: str, started: float, outcome: str) -> None:
        now = time.monotonic()
        with self._lock:
            self.outcomes.append(Outcome(kind, started - self._start, now - started, outcome))
            if outcome != REFUSED:
                self._ended_count += 1
                self._ended.notify_all()

    def _request(self, i: int) -> pb.GenerateRequest:
        lang, prompt = self.prompts[i % len(self.prompts)]
        hint = {"language": lang} if i % 3 == 0 else {}  # routed by content otherwise
        return pb.GenerateRequest(prompt=prompt, max_tokens=self.cfg.max_tokens,
                                  temperature=0.8, seed=i, **hint)

    def _one(self, kind: str, i: int) -> str:
        """Send request `i` as `kind`; returns (and records) its outcome."""
        request, started = self._request(i), time.monotonic()
        try:
            if kind == "unary":
                self.client.generate(request, timeout=300)
            elif kind == "deadline":  # far too short to finish: the server must give up
                self.client.generate(request, timeout=0.05 + (i % 5) * 0.05)
            elif kind == "vanish":
                with Client(self.server.target) as own:
                    stream = own.stream(request, timeout=300)
                    next(iter(stream))  # the routing chunk: the request is in
                self._record(kind, started, VANISHED)
                return VANISHED
            else:
                stream = self.client.stream(request, timeout=300)
                for chunk in stream:
                    if kind == "cancel" and chunk.WhichOneof("chunk") == "delta":
                        stream.cancel()
        except grpc.RpcError as e:
            outcome = e.code().name.lower()
            self._record(kind, started, outcome)
            return outcome
        self._record(kind, started, "ok")
        return "ok"

    def _burst(self) -> bool:
        """More requests at once than the server has batch slots and queue places, yet fewer
        than its RPC threads (max_batch + max_queue + 8, counting the other workers'): beyond
        those grpc itself answers RESOURCE_EXHAUSTED, unseen by the server's metrics. Returns
        whether any was refused."""
        numbers = self._take(self.cfg.max_queue + min(self.cfg.concurrency, 6) + 2)
        if not numbers:
            return False
        with ThreadPoolExecutor(len(numbers)) as pool:
            outcomes = list(pool.map(lambda i: self._one("unary", i), numbers))
        return REFUSED in outcomes

    def worker(self, seed: int) -> None:
        rng = random.Random(seed)
        kinds, weights = list(KINDS), list(KINDS.values())
        backoff = BACKOFF_FIRST
        while not self._finished():
            kind = rng.choices(kinds, weights)[0]
            with self._lock:
                ended = self._ended_count
            if kind == "burst":
                refused = self._burst()
            elif numbers := self._take():
                refused = self._one(kind, numbers[0]) == REFUSED
            else:
                break
            if refused:  # not again at once: a full queue stays full until a request ends
                self._wait_for_an_end(ended, backoff)
                backoff = min(2 * backoff, BACKOFF_MAX)
            else:
                backoff = BACKOFF_FIRST

    def _wait_for_an_end(self, ended: int, seconds: float) -> None:
        """Until a request ends after the `ended`th, `seconds` pass, or the time budget ends."""
        with self._ended:
            if self._end is not None:
                seconds = min(seconds, max(self._end - time.monotonic(), 0.0))
            self._ended.wait_for(lambda: self._ended_count > ended, timeout=seconds)

    def _finished(self) -> bool:
        with self._lock:
            over_time = self._end is not None and time.monotonic() >= self._end
            return over_time or (self.cfg.requests is not None
                                 and self._sent >= self.cfg.requests)

    @property
    def started(self) -> float:
        return self._start


def server_requests(metrics_url: str) -> Counter:
    """submodel_requests_total by status, summed over languages and route sources."""
    with urllib.request.urlopen(metrics_url, timeout=10) as r:
        text = r.read().decode()
    counts: Counter = Counter()
    for family in text_string_to_metric_families(text):
        if family.name == "submodel_requests":
            for s in family.samples:
                if s.name == "submodel_requests_total":
                    counts[s.labels["status"]] += int(s.value)
    return counts


def settled_counts(metrics_url: str, sent: int, before: Counter) -> Counter:
    """The server's counts of this soak's requests, once they add up to `sent` (the server
    records an RPC just after its client sees the status) or SETTLE_SECONDS have passed."""
    end = time.monotonic() + SETTLE_SECONDS
    while True:
        counts = server_requests(metrics_url) - before
        if sum(counts.values()) >= sent or time.monotonic() > end:
            return counts
        time.sleep(0.1)


def agreement(client: Counter, server: Counter) -> dict:
    """Whether both sides count the same requests. A vanished client is a CANCELLED RPC to the
    server. Where a request ended at the moment the client gave up, the server may have
    counted it ok while the client saw CANCELLED or DEADLINE_EXCEEDED: those are the only
    differences allowed, and they are reported."""
    expected = Counter(client)
    expected["cancelled"] += expected.pop(VANISHED, 0)
    late_ok = server["ok"] - expected["ok"]
    given_up = expected["cancelled"] + expected["deadline_exceeded"]
    differ = {k: server[k] - expected[k] for k in set(server) | set(expected)
              if server[k] != expected[k]}
    agrees = (sum(server.values()) == sum(expected.values())
              and 0 <= late_ok <= given_up
              and all(k in ("ok", "cancelled", "deadline_exceeded") for k in differ))
    return {"agrees": agrees, "server_minus_client": differ, "finished_as_client_gave_up":
            max(late_ok, 0)}


def windows(outcomes: list[Outcome], rss: list[tuple[float, int]], seconds: float,
            count: int) -> list[dict]:
    width = max(seconds / count, 1e-9)
    rows = []
    for w in range(count):
        lo, hi = w * width, (w + 1) * width
        inside = [o for o in outcomes if lo <= o.start < hi or (w == count - 1 and o.start >= hi)]
        ok = [o.latency for o in inside if o.outcome == "ok"]
        mem = [r for t, r in rss if lo <= t < hi or (w == count - 1 and t >= hi)]
        rows.append({"start": round(lo, 3), "end": round(hi, 3), "sent": len(inside),
                     "ok": len(ok), "latency_p50": _percentile(ok, 50),
                     "latency_p99": _percentile(ok, 99),
                     "rss_max": max(mem) if mem else None})
    return rows


def run_soak(cfg: SoakConfig, out: Path, progress=print) -> dict:
    with ServerProcess(cfg.store, out / "server.log", max_batch=cfg.concurrency,
                       max_queue=cfg.max_queue) as server, \
            Client(server.target) as client:
        served = [s.id for s in client.sub_models(timeout=60).sub_models if s.id in LANGUAGES]
        if not served:
            raise SoakError(f"{cfg.store} serves no language sub-model")
        prompts = _prompts(served)
        warm_up = prompts[::20]  # each language once, not counted
        for lang, prompt in warm_up:
            client.generate(pb.GenerateRequest(prompt=prompt, language=lang, max_tokens=2),
                            timeout=300)
        before = settled_counts(server.metrics_url, len(warm_up), Counter())
        rss: list[tuple[float, int]] = []
        traffic = Traffic(cfg, server, client, prompts)
        done = threading.Event()

        def sample_rss() -> None:  # at the start, every 0.25 s, and once more at the end
            while True:
                rss.append((time.monotonic() - traffic.started, read_memory(server.pid)["rss"]))
                if done.wait(0.25):
                    break
            rss.append((time.monotonic() - traffic.started, read_memory(server.pid)["rss"]))

        sampler = threading.Thread(target=sample_rss, daemon=True)
        sampler.start()
        progress(f"soak: {len(served)} languages, concurrency {cfg.concurrency}, "
                 + (f"{cfg.seconds:.0f} s" if cfg.seconds else f"{cfg.requests} requests"))
        with ThreadPoolExecutor(cfg.concurrency) as pool:
            list(pool.map(traffic.worker, range(cfg.seed, cfg.seed + cfg.concurrency)))
        seconds = time.monotonic() - traffic.started
        done.set()
        sampler.join()
        by_outcome = Counter(o.outcome for o in traffic.outcomes)
        server_counts = settled_counts(server.metrics_url, len(traffic.outcomes), before)
    rows = windows(traffic.outcomes, rss, seconds, cfg.windows)
    warm = [r["rss_max"] for r in rows[1:] if r["rss_max"]]  # after the first window
    ok = [o.latency for o in traffic.outcomes if o.outcome == "ok"]
    return {
        "store": str(cfg.store), "seconds": round(seconds, 3), "concurrency": cfg.concurrency,
        "max_tokens": cfg.max_tokens, "max_queue": cfg.max_queue, "seed": cfg.seed,
        "languages": served, "sent": len(traffic.outcomes),
        "by_outcome": dict(sorted(by_outcome.items())),
        "by_kind": {k: dict(Counter(o.outcome for o in traffic.outcomes if o.kind == k))
                    for k in KINDS if k != "burst"},
        "server_by_status": dict(sorted(server_counts.items())),
        "metrics": agreement(by_outcome, server_counts),
        "latency_p50": _percentile(ok, 50), "latency_p99": _percentile(ok, 99),
        "rss_growth_after_warmup": (warm[-1] / warm[0] - 1) if len(warm) >= 2 else None,
        "windows": rows,
    }
