"""Load and memory bench: mixed-language traffic through gRPC at a fixed concurrency, one fresh
`submodel serve` process per engine strategy (so its memory is that strategy's alone).

Traffic: HumanEval prompts of every served language in turn, sent without a language hint (the
router decides), streamed so the client sees the first token; "dense" sends the same prompts
with `language=dense` to a fused server: the baseline the ratios are taken against. The server's
RSS and PSS come from /proc/PID/smaps_rollup, sampled while traffic runs; its kernel-kept peak
(VmHWM) is reset after warm-up where the kernel allows, so model loading does not count.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from submodel.bench.cli import LOAD_STRATEGIES
from submodel.bench.humaneval.problems import load_problems
from submodel.bench.server_proc import ServerProcess
from submodel.server.client import Client
from submodel.v1 import submodel_pb2 as pb
from submodel.vocabulary import DEFAULT_STRATEGY, DENSE, LANGUAGES

SAMPLE_SECONDS = 0.05


class LoadError(Exception):
    """The load bench cannot go on; the message says why."""


@dataclass(frozen=True)
class LoadConfig:
    store: Path
    strategies: tuple[str, ...] = LOAD_STRATEGIES
    concurrency: int = 8
    requests: int = 32
    max_tokens: int = 64
    temperature: float = 0.8
    seed: int = 0
    dtype: str | None = None
    http: bool = False  # also send the same requests through the HTTP API; report the ratios


@dataclass(frozen=True)
class Timed:
    language: str  # the prompt's true language
    routed: str
    ttft: float | None
    latency: float
    tokens: int
    error: str | None = None


# ---- memory of a process ----------------------------------------------------------------------

def read_memory(pid: int) -> dict[str, int]:
    """Rss and Pss of a process in bytes (smaps_rollup), and VmHWM (peak RSS) from status."""
    out = {}
    for name, keys in ((f"/proc/{pid}/smaps_rollup", ("Rss", "Pss")),
                       (f"/proc/{pid}/status", ("VmHWM",))):
        with open(name) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in keys:
                    out[key.lower()] = int(value.split()[0]) * 1024
    return out


def reset_peak(pid: int) -> bool:
    """Reset the kernel's peak RSS (VmHWM) of `pid`; False where that is not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class MemoryMonitor:
    """Samples a process's RSS and PSS in a thread; keeps the peaks."""

    def __init__(self, pid: int, interval: float = SAMPLE_SECONDS) -> None:
        self.pid, self.interval = pid, interval
        self.peak = {"rss": 0, "pss": 0}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-memory", daemon=True)

    def _loop(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.interval):
                return

    def sample(self) -> None:
        try:
            now = read_memory(self.pid)
        except OSError:  # the process is gone
            return
        self.samples += 1
        for key in self.peak:
            self.peak[key] = max(self.peak[key], now.get(key, 0))

    def __enter__(self) -> MemoryMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


# ---- traffic --------------------------------------------------------------------------------

def traffic(languages: list[str], count: int, cfg: LoadConfig, dense: bool
            ) -> list[tuple[str, pb.GenerateRequest]]:
    """`count` requests cycling through the languages' HumanEval prompts; seeded sampling, no
    stop strings (so requests run to max_tokens unless the model ends them)."""
    prompts = {lang: [p.prompt for p in load_problems(lang)] for lang in languages}
    out = []
    for i in range(count):
        lang = languages[i % len(languages)]
        prompt = prompts[lang][(i // len(languages)) % len(prompts[lang])]
        fields = {"language": DENSE} if dense else {}
        out.append((lang, pb.GenerateRequest(
            prompt=prompt, max_tokens=cfg.max_tokens, temperature=cfg.temperature, top_p=0.95,
            seed=cfg.seed + i, **fields)))
    return out


def timed_request(client: Client, language: str, request: pb.GenerateRequest) -> Timed:
    start = time.perf_counter()
    ttft, tokens, routed = None, 0, ""
    try:
        for chunk in client.stream(request):
            kind = chunk.WhichOneof("chunk")
            if kind == "routing":
                routed = chunk.routing.language
            elif kind == "delta" and ttft is None:
                ttft = time.perf_counter() - start
            elif kind == "summary":
                tokens = chunk.summary.usage.completion_tokens
    except grpc.RpcError as e:
        return Timed(language, routed, ttft, time.perf_counter() - start, tokens,
                     f"{e.code().name}: {e.details()}")
    return Timed(language, routed, ttft, time.perf_counter() - start, tokens)


def timed_http(address: str, language: str, request: pb.GenerateRequest) -> Timed:
    """The same request through the OpenAI-compatible HTTP API, streamed (SSE)."""
    start = time.perf_counter()
    ttft, tokens, routed = None, 0, ""
    body = {"model": request.language or "auto", "prompt": request.prompt,
            "max_tokens": request.max_tokens, "temperature": request.temperature,
            "top_p": request.top_p, "seed": request.seed, "stream": True,
            "stream_options": {"include_usage": True}}
    host, _, port = address.rpartition(":")
    connection = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=600)
    try:
        connection.request("POST", "/v1/completions", json.dumps(body),
                           {"content-type": "application/json"})
        response = connection.getresponse()
        routed = response.getheader("x-submodel-language", "")
        if response.status != 200:
            message = json.loads(response.read()).get("error", {}).get("message", "")
            return Timed(language, routed, ttft, time.perf_counter() - start, tokens,
                         f"HTTP {response.status}: {message}")
        for line in response:
            if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                return Timed(language, routed, ttft, time.perf_counter() - start, tokens,
                             f"stream error: {chunk['error'].get('message', '')}")
            if ttft is None and any(c.get("text") for c in chunk.get("choices", ())):
                ttft = time.perf_counter() - start
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    except OSError as e:
        return Timed(language, routed, ttft, time.perf_counter() - start, tokens, f"HTTP: {e}")
    finally:
        connection.close()
    return Timed(language, routed, ttft, time.perf_counter() - start, tokens)


def weight_bytes(metrics_url: str | None) -> dict[str, float]:
    """submodel_weight_bytes{kind} from the server's /metrics."""
    if metrics_url is None:
        return {}
    try:
        with urllib.request.urlopen(metrics_url, timeout=10) as r:
            text = r.read().decode()
    except OSError:
        return {}
    return {m[1]: float(m[2]) for m in re.finditer(
        r'^submodel_weight_bytes\{kind="(\w+)"\} (\S+)$', text, re.MULTILINE)}


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def traffic_stats(timed: list[Timed], seconds: float) -> dict:
    """Throughput and latency of one or more measured passes."""
    ok = [t for t in timed if t.error is None]
    tokens = sum(t.tokens for t in ok)
    ttfts = [t.ttft for t in ok if t.ttft is not None]
    return {
        "requests": len(timed), "errors": len(timed) - len(ok),
        "error_examples": sorted({t.error for t in timed if t.error})[:3],
        "seconds": round(seconds, 3), "tokens": tokens,
        "tokens_per_s": tokens / seconds, "requests_per_s": len(ok) / seconds,
        "ttft_p50": _percentile(ttfts, 50), "ttft_p99": _percentile(ttfts, 99),
        "latency_p50": _percentile([t.latency for t in ok], 50),
        "latency_p99": _percentile([t.latency for t in ok], 99),
    }


def _measure(send, requests: list[tuple[str, pb.GenerateRequest]], concurrency: int
             ) -> tuple[list[Timed], float]:
    with ThreadPoolExecutor(concurrency) as pool:
        start = time.perf_counter()
        timed = list(pool.map(lambda lr: send(*lr), requests))
        return timed, time.perf_counter() - start


def run_strategy(strategy: str, cfg: LoadConfig, log_dir: Path) -> dict:
    """One fresh server; warm-up (one short request per language), then the measured load.
    With `cfg.http` the same requests also go through the HTTP API of the same server, after an
    untimed gRPC pass, in the order gRPC, HTTP, HTTP, gRPC, so drift on a noisy machine falls on
    both alike."""
    server_strategy = DEFAULT_STRATEGY if strategy == DENSE else strategy
    with ServerProcess(cfg.store, log_dir / f"server-{strategy}.log", strategy=server_strategy,
                       max_batch=cfg.concurrency, max_queue=max(64, 2 * cfg.concurrency),
                       dtype=cfg.dtype, http=cfg.http) as server, \
            Client(server.target) as client:
        listing = client.sub_models(timeout=60)
        languages = [s.id for s in listing.sub_models if not s.dense and s.id in LANGUAGES]
        if not languages:
            raise LoadError(f"{cfg.store} serves no language sub-model")
        dense = strategy == DENSE
        senders = {"grpc": lambda lang, request: timed_request(client, lang, request),
                   "http": lambda lang, request: timed_http(server.http_address, lang, request)}
        for protocol in ("grpc", "http") if cfg.http else ("grpc",):
            for lang, request in traffic(languages, len(languages), cfg, dense):
                request.max_tokens = 2
                warm = senders[protocol](lang, request)
                if warm.error:
                    raise LoadError(f"{strategy}: the {protocol} warm-up request failed: "
                                    f"{warm.error}")
        idle = read_memory(server.pid)
        peak_reset = reset_peak(server.pid)
        requests = traffic(languages, cfg.requests, cfg, dense)
        if cfg.http:  # untimed: the first full-batch pass ran ~20% slower than the later ones
            _measure(senders["grpc"], requests, cfg.concurrency)
        with MemoryMonitor(server.pid) as memory:
            timed, seconds = _measure(senders["grpc"], requests, cfg.concurrency)
        http = None
        if cfg.http:
            passes = [_measure(senders["http"], requests, cfg.concurrency) for _ in range(2)]
            more, more_seconds = _measure(senders["grpc"], requests, cfg.concurrency)
            grpc = traffic_stats(timed + more, seconds + more_seconds)
            http = traffic_stats([t for p in passes for t in p[0]], sum(p[1] for p in passes))
            http["vs_grpc"] = {key: http[key] / grpc[key] if grpc[key] and http[key] else None
                               for key in ("tokens_per_s", "ttft_p50", "latency_p50")}
            http["grpc_tokens_per_s"] = grpc["tokens_per_s"]
            http["same_tokens"] = http["tokens"] == grpc["tokens"]
        hwm = read_memory(server.pid)["vmhwm"] if peak_reset else None
        weights = weight_bytes(server.metrics_url)
    ok = [t for t in timed if t.error is None]
    return {
        "strategy": strategy, "server_strategy": server_strategy,
        "traffic": "dense (language=dense)" if dense else "mixed, unhinted",
        "languages": languages, "concurrency": cfg.concurrency,
        **traffic_stats(timed, seconds),
        "rss_idle": idle["rss"], "pss_idle": idle["pss"],
        "rss_peak": max(memory.peak["rss"], hwm or 0), "pss_peak": memory.peak["pss"],
        "rss_peak_source": "VmHWM reset after warm-up" if peak_reset else "sampled",
        "memory_samples": memory.samples,
        "weight_bytes": weights,
        "mask_bytes": sum(s.mask_bytes for s in listing.sub_models),
        "routing": {lang: dict(Counter(t.routed for t in ok if t.language == lang))
                    for lang in languages},
        "misroutes": sum(1 for t in ok if not dense and t.routed != t.language),
        "http": http,
    }


def ratios(runs: list[dict]) -> None:
    """Adds each run's ratios to the dense run (same concurrency, same prompts)."""
    base = next((r for r in runs if r["strategy"] == DENSE), None)
    for r in runs:
        if base is None:
            r["vs_dense"] = None
            continue
        extra = r["rss_peak"] - base["rss_peak"]
        r["vs_dense"] = {
            "tokens_per_s": r["tokens_per_s"] / base["tokens_per_s"]
            if base["tokens_per_s"] else None,
            "latency_p50": r["latency_p50"] / base["latency_p50"]
            if r["latency_p50"] and base["latency_p50"] else None,
            "rss_peak": r["rss_peak"] / base["rss_peak"],
            "pss_peak": r["pss_peak"] / base["pss_peak"] if base["pss_peak"] else None,
            "extra_rss_bytes": extra,
            "extra_rss_over_mask_bytes": extra / r["mask_bytes"] if r["mask_bytes"] else None,
        }


def run_load(cfg: LoadConfig, out: Path, progress=print) -> dict:
    runs = []
    for strategy in cfg.strategies:
        progress(f"load: {strategy}: starting a server and sending {cfg.requests} requests "
                 f"at concurrency {cfg.concurrency}")
        run = run_strategy(strategy, cfg, out)
        progress(f"load: {strategy}: {run['tokens_per_s']:.1f} tokens/s, p50 latency "
                 f"{run['latency_p50'] or 0:.2f} s, peak RSS {run['rss_peak'] / 2**20:.0f} MiB")
        if run["http"]:
            progress(f"load: {strategy}: HTTP/gRPC tokens/s "
                     f"{run['http']['vs_grpc']['tokens_per_s'] or 0:.3f}x")
        runs.append(run)
    ratios(runs)
    return {"store": str(cfg.store), "concurrency": cfg.concurrency, "requests": cfg.requests,
            "max_tokens": cfg.max_tokens, "temperature": cfg.temperature, "seed": cfg.seed,
            "http": cfg.http, "runs": runs}
