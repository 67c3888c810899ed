"""`submodel bench ide`: what an editor user waits for, in this process, as ratios from one run.

1. **An editing session, replayed.** A real file is typed forward from a point deep inside it:
   at each pause in typing the editor sends a fill-in-the-middle request (the text before the
   cursor, up to `context_tokens`, and a few lines after it); some requests are abandoned
   because typing goes on (cancelled `abandon_after` seconds after they were sent). The client
   keeps the context's first line fixed while it fits (as editor plugins do, so consecutive
   prompts share their start) and moves it down by half the budget when it no longer does.
   The session runs on an engine without and with the prefix cache: time to first token
   (TTFT) p50/p99, completion latency, and the cache's hit rate; TTFT of a cache hit is also
   given in decode steps (target: <= 2).
2. **A long prompt admitted under load.** One request decodes; a ~2k-token prompt arrives.
   Inter-token gaps of the running request while the new prompt is prefilled, p99 over the
   unloaded median gap, with chunked prefill (the engine's `prefill_chunk`) and with whole
   prompts (target: <= 2x).
3. **llama.cpp on the same GGUF**, where a `llama-bench` binary is given or on PATH: its batch-1
   decode and 512-token prefill tokens/s next to ours, same threads, in the same run.
"""

from __future__ import annotations

import json
import random
import shutil
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from submodel.bench.kernels import read_bandwidth
from submodel.bench.timing import progress
from submodel.pruning.models import ModelError, resolve_model
from submodel.pruning.store import Store
from submodel.server import kernels
from submodel.server.api import (
    DoneEvent,
    EngineObserver,
    FinishEvent,
    GenerationRequest,
    SamplingParams,
    TokenEvent,
)
from submodel.server.chunking import chunk_name
from submodel.server.engine import Engine
from submodel.server.omp import release_team

SUFFIX_LINES = 8  # lines after the cursor sent as the suffix


@dataclass(frozen=True)
class Settings:
    pauses: int = 24
    context_tokens: int = 1536
    max_tokens: int = 32
    abandon_fraction: float = 0.25
    abandon_after: float = 0.2  # seconds after sending: typing resumed
    prefix_cache_mb: int = 256
    prefill_chunk: int | None = None  # the engine's: None sizes chunks from step times
    admission_chunks: tuple[int | None, ...] = (None, 8, 32, 256)  # timed in phase 2 (+ whole)
    long_prompt_tokens: int = 1900
    seed: int = 0


@dataclass(frozen=True)
class Pause:
    """One request of the session: the editor's text before and after the cursor."""

    prefix: str
    suffix: str
    abandoned: bool


def edit_session(text: str, count_tokens, s: Settings) -> list[Pause]:
    """The pauses of typing `text` forward from a line about 1.5 contexts in: each pause types
    the next 4-40 characters of the file (ending at a word's end)."""
    rng = random.Random(s.seed)
    lines = text.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    tokens_per_char = count_tokens(text[:20000]) / max(1, len(text[:20000]))
    cursor = min(len(text) // 2, int(1.5 * s.context_tokens / tokens_per_char))
    anchor = _line_start(starts, max(0, cursor - int(0.75 * s.context_tokens / tokens_per_char)))
    pauses = []
    for _ in range(s.pauses):
        step = rng.randint(4, 40)
        end = cursor + step
        while end < len(text) and text[end].isalnum():
            end += 1
        cursor = min(end, len(text) - 1)
        if count_tokens(text[anchor:cursor]) > s.context_tokens:
            target = cursor - int(0.5 * s.context_tokens / tokens_per_char)
            anchor = _line_start(starts, target)
        line_end = _line_index(starts, cursor)
        suffix = text[cursor:starts[min(len(lines), line_end + SUFFIX_LINES)]]
        pauses.append(Pause(text[anchor:cursor], suffix,
                            abandoned=rng.random() < s.abandon_fraction))
    return pauses


def _line_index(starts: list[int], offset: int) -> int:
    lo, hi = 0, len(starts) - 1
    while lo < hi:  # the last line starting at or before offset
        mid = (lo + hi + 1) // 2
        if starts[mid] <= offset:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _line_start(starts: list[int], offset: int) -> int:
    return starts[_line_index(starts, offset)]


class CacheCounts(EngineObserver):
    def __init__(self) -> None:
        self.prompt_tokens = self.hit_tokens = 0

    def prefix_cache_lookup(self, language: str, prompt_tokens: int, hit_tokens: int) -> None:
        self.prompt_tokens += prompt_tokens
        self.hit_tokens += hit_tokens


def timed_request(engine: Engine, request: GenerationRequest,
                  cancel_after: float | None = None) -> dict:
    """Send one request; TTFT, latency, token arrival times and how it finished."""
    sent = time.perf_counter()
    handle = engine.submit(request)
    timer = None
    if cancel_after is not None:
        timer = threading.Timer(cancel_after, handle.cancel)
        timer.start()
    arrivals, reason = [], None
    for event in handle:
        if isinstance(event, TokenEvent) and event.token_id >= 0:
            arrivals.append(time.perf_counter() - sent)
        elif isinstance(event, FinishEvent):
            reason = event.finish_reason
        elif isinstance(event, DoneEvent):
            break
    if timer is not None:
        timer.cancel()
    return {"ttft_s": arrivals[0] if arrivals else None, "latency_s": time.perf_counter() - sent,
            "tokens": len(arrivals), "reason": reason,
            "gaps_s": [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]}


def warm_up(engine: Engine, language: str) -> None:
    """One short request first, so no timed one pays for the first forward's set-up."""
    timed_request(engine, GenerationRequest("def f():\n", language, SamplingParams(4)))


def replay(engine: Engine, pauses: list[Pause], language: str, s: Settings) -> list[dict]:
    results = []
    for i, pause in enumerate(pauses):
        request = GenerationRequest(pause.prefix, language, SamplingParams(s.max_tokens),
                                    suffix=pause.suffix)
        r = timed_request(engine, request, s.abandon_after if pause.abandoned else None)
        r.update(pause=i, abandoned=pause.abandoned,
                 prompt_tokens=engine.count_tokens(pause.prefix + pause.suffix))
        results.append(r)
    return results


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summarize_session(results: list[dict], counts: CacheCounts) -> dict:
    answered = [r for r in results if not r["abandoned"] and r["ttft_s"] is not None]
    ttft = [r["ttft_s"] for r in answered]
    latency = [r["latency_s"] for r in answered]
    gaps = [g for r in answered for g in r["gaps_s"]]
    return {"requests": len(results), "answered": len(answered),
            "abandoned": sum(r["abandoned"] for r in results),
            "ttft_p50_s": _percentile(ttft, 0.5), "ttft_p99_s": _percentile(ttft, 0.99),
            "latency_p50_s": _percentile(latency, 0.5),
            "latency_p99_s": _percentile(latency, 0.99),
            "step_p50_s": statistics.median(gaps) if gaps else None,
            "mean_prompt_tokens": statistics.mean(r["prompt_tokens"] for r in results),
            "cache_hit_rate": counts.hit_tokens / counts.prompt_tokens
            if counts.prompt_tokens else 0.0}


def session_phase(store: Store, pauses: list[Pause], language: str, s: Settings,
                  engine_kwargs: dict) -> dict:
    out = {}
    for name, cache_mb in (("no_cache", 0), ("cache", s.prefix_cache_mb)):
        progress("ide", f"editing session, {name}: {len(pauses)} pauses")
        counts = CacheCounts()
        engine = Engine(store, prefix_cache_mb=cache_mb, prefill_chunk=s.prefill_chunk,
                        observer=counts, **engine_kwargs)
        engine.start()
        try:
            warm_up(engine, language)
            results = replay(engine, pauses, language, s)
            extension = extension_ttft(engine, pauses[-1].prefix, language) if cache_mb else None
        finally:
            engine.stop()
        out[name] = {"summary": summarize_session(results, counts), "requests": results}
    cache = out["cache"]["summary"]
    out["extension"] = extension
    hits = [r["ttft_s"] for r in out["cache"]["requests"][1:]
            if not r["abandoned"] and r["ttft_s"] is not None]
    out["ttft_p50_no_cache_over_cache"] = (out["no_cache"]["summary"]["ttft_p50_s"]
                                           / cache["ttft_p50_s"])
    out["cached_ttft_in_steps"] = (statistics.median(hits) / cache["step_p50_s"]
                                   if hits and cache["step_p50_s"] else None)
    return out


def extension_ttft(engine: Engine, prefix: str, language: str) -> dict:
    """TTFT of a completion prompt that extends the one before by a word (the editor's plain
    completion as typing goes on), over the median decode step of the same requests."""
    words = ("value", " =", " compute", "(", "item", ")")
    prompt, ttfts, gaps = prefix, [], []
    for i, word in enumerate(words):
        prompt += word
        r = timed_request(engine, GenerationRequest(prompt, language, SamplingParams(8)))
        gaps += r["gaps_s"]
        if i:  # the first one fills the cache
            ttfts.append(r["ttft_s"])
    step = statistics.median(gaps) if gaps else None  # None: every reply was one token
    ttft = statistics.median(ttfts)
    return {"prompt_tokens": engine.count_tokens(prompt), "ttft_s": ttft, "step_s": step,
            "ttft_in_steps": ttft / step if step else None}


def admission_phase(store: Store, text: str, language: str, s: Settings,
                    engine_kwargs: dict) -> dict:
    """Gaps of a running request while a long prompt is prefilled, chunked and whole."""
    engine = Engine(store, prefill_chunk=s.prefill_chunk, **engine_kwargs)
    ids = engine.tokenizer.encode(text)[:min(s.long_prompt_tokens, engine.max_context - 64)]
    long_prompt = engine.tokenizer.decode(ids)
    engine.start()
    out = {"long_prompt_tokens": engine.count_tokens(long_prompt)}
    try:
        warm_up(engine, language)
        for chunk in (*s.admission_chunks, 0):
            name = chunk_name(chunk)
            progress("ide", f"long prompt admitted under load, prefill chunk {name}")
            engine.set_prefill_chunk(chunk)  # the engine thread idles between requests
            out[name] = _gaps_while_admitting(engine, long_prompt, language)
    finally:
        engine.stop()
    return out


def _gaps_while_admitting(engine: Engine, long_prompt: str, language: str) -> dict:
    arrivals: list[float] = []
    first_token = threading.Event()
    request = GenerationRequest("import os\n", language, SamplingParams(engine.max_context - 16))
    handle = engine.submit(request)

    def consume() -> None:
        for event in handle:
            if isinstance(event, TokenEvent) and event.token_id >= 0:
                arrivals.append(time.perf_counter())
                if len(arrivals) == 24:
                    first_token.set()
        first_token.set()

    reader = threading.Thread(target=consume)
    reader.start()
    first_token.wait()
    admitted_at = time.perf_counter()
    long = timed_request(engine, GenerationRequest(long_prompt, language, SamplingParams(1)))
    answered_at = time.perf_counter()
    handle.cancel()
    reader.join()
    gaps = list(zip(arrivals, arrivals[1:], strict=False))
    unloaded = [b - a for a, b in gaps if b <= admitted_at][1:]  # the first may hold the warm-up
    # every gap that ends after the prompt came in and begins before its answer: the one it
    # arrived in is loaded too (a whole-prompt prefill stalls exactly that one)
    loaded = [b - a for a, b in gaps if b > admitted_at and a < answered_at]
    base = statistics.median(unloaded) if unloaded else None
    return {"unloaded_step_s": base, "loaded_gaps": len(loaded),
            "loaded_p99_s": _percentile(loaded, 0.99), "loaded_max_s": max(loaded, default=None),
            "p99_over_unloaded": _percentile(loaded, 0.99) / base if loaded and base else None,
            "long_prompt_ttft_s": long["ttft_s"]}


LLAMA_ROUNDS = 5


def llama_cpp_phase(binary: str, gguf: Path, threads: int, engine: Engine, language: str,
                    text: str, rounds: int = LLAMA_ROUNDS) -> dict:
    """llama-bench's decode (64 tokens) and prefill (512) next to ours on the same GGUF, in
    `rounds` interleaved rounds (one llama-bench repetition, then one run of ours per
    sub-model): a host whose speed drifts within seconds moves both sides alike. Each side's
    figure is its best round, and the report keeps every round's, and the host's read bandwidth
    before each (our batch-1 decode is bound by it, llama.cpp's less so)."""
    progress("ide", f"llama.cpp: {binary} on {gguf.name}, {rounds} rounds")
    ids = engine.tokenizer.encode(text)[:512]
    prompt = engine.tokenizer.decode(ids)
    theirs: dict[str, list[float]] = {"decode": [], "prefill": []}
    ours = {lang: {"decode": [], "prefill": []} for lang in ("dense", language)}
    rows: list[dict] = []
    reads: list[float] = []
    for _ in range(rounds):
        reads.append(read_bandwidth(3) / 1e9)
        release_team()  # this thread's torch work: one OpenMP team at a time (omp.py)
        proc = subprocess.run([binary, "-m", str(gguf), "-t", str(threads), "-p", "512", "-n",
                               "64", "-r", "1", "-o", "json"], capture_output=True, text=True,
                              timeout=1800)
        if proc.returncode != 0:
            return {"error": f"llama-bench exited {proc.returncode}: "
                             f"{(proc.stderr or proc.stdout).strip().splitlines()[-1:]}"}
        rows = json.loads(proc.stdout)
        for r in rows:
            theirs["prefill" if r["n_prompt"] else "decode"].append(r["avg_ts"])
        for lang, runs in ours.items():
            gaps = timed_request(engine, GenerationRequest("import os\n", lang,
                                                           SamplingParams(65)))["gaps_s"]
            runs["decode"].append(len(gaps) / sum(gaps))
            ttft = timed_request(engine, GenerationRequest(prompt, lang, SamplingParams(1)))
            runs["prefill"].append(len(ids) / ttft["ttft_s"])
    best = {kind: max(v) for kind, v in theirs.items()}
    mine = {lang: {"decode_tokens_per_s": max(r["decode"]),
                   "prefill_tokens_per_s": max(r["prefill"])} for lang, r in ours.items()}
    return {"llama_cpp": best, "ours": mine, "rounds": {"llama_cpp": theirs, "ours": ours},
            "read_gb_s": reads, "build": rows[0].get("build_commit"),
            "type": rows[0].get("model_type"),
            "decode_vs_llama_cpp": {k: v["decode_tokens_per_s"] / best["decode"]
                                    for k, v in mine.items()},
            "prefill_vs_llama_cpp": {k: v["prefill_tokens_per_s"] / best["prefill"]
                                     for k, v in mine.items()}}


PHASES = ("session", "admission", "llama_cpp")


def run(store: Store, text: str, language: str, s: Settings, engine_kwargs: dict,
        llama_bench: str | None, threads: int, phases: tuple[str, ...] = PHASES) -> dict:
    result = {"cpu": kernels.cpu_model(), "threads": threads, "settings": s.__dict__,
              "language": language, "engine": engine_kwargs}
    if "session" in phases:
        counter = store.load_tokenizer()
        pauses = edit_session(text, lambda t: len(counter.encode(t)), s)
        result["session"] = session_phase(store, pauses, language, s, engine_kwargs)
    if "admission" in phases:
        result["admission"] = admission_phase(store, text, language, s, engine_kwargs)
    if "llama_cpp" in phases:
        result["llama_cpp"] = llama_cpp_result(store, text, language, engine_kwargs,
                                               llama_bench, threads)
    return result


def llama_cpp_result(store: Store, text: str, language: str, engine_kwargs: dict,
                     llama_bench: str | None, threads: int) -> dict:
    binary = llama_bench or shutil.which("llama-bench")
    if binary is None:
        return {"skipped": "no llama-bench binary (--llama-bench PATH or on PATH)"}
    try:
        gguf = resolve_model(store.manifest["base_model"]["id"], verify=False)
    except ModelError as e:
        return {"skipped": str(e)}
    if gguf.kind != "gguf":
        return {"skipped": "the store's base model is not a GGUF file"}
    engine = Engine(store, prefill_chunk=0, **engine_kwargs)
    engine.start()
    try:
        warm_up(engine, language)
        return llama_cpp_phase(binary, gguf.path, threads, engine, language, text)
    finally:
        engine.stop()


def _s(x: float | None, scale: float = 1e3, unit: str = " ms") -> str:
    return "-" if x is None else f"{x * scale:.0f}{unit}"


def _x(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def markdown(result: dict) -> str:
    lines = [f"# submodel bench ide ({result['cpu']}, {result['threads']} threads)", ""]
    if "session" in result:
        lines += _session_lines(result["settings"], result["language"], result["engine"],
                                result["session"])
    if "admission" in result:
        lines += _admission_lines(result["admission"])
    if "llama_cpp" in result:
        lines += _llama_cpp_lines(result["llama_cpp"])
    return "\n".join(lines)


def _session_lines(s: dict, language: str, engine: dict, session: dict) -> list[str]:
    lines = [f"Editing session: {s['pauses']} pauses, context up to {s['context_tokens']} tokens, "
             f"{s['max_tokens']} tokens per completion, language {language}, engine {engine}, "
             f"prefill chunk {chunk_name(s['prefill_chunk'])}.", "",
             "| | requests (answered/abandoned) | mean prompt tokens | TTFT p50 | TTFT p99 | "
             "latency p50 | latency p99 | cache hit rate |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name in ("no_cache", "cache"):
        m = session[name]["summary"]
        lines.append(f"| {name.replace('_', ' ')} | {m['requests']} ({m['answered']}/"
                     f"{m['abandoned']}) | {m['mean_prompt_tokens']:.0f} | "
                     f"{_s(m['ttft_p50_s'])} | {_s(m['ttft_p99_s'])} | {_s(m['latency_p50_s'])} | "
                     f"{_s(m['latency_p99_s'])} | {m['cache_hit_rate']:.0%} |")
    speedup = _x(session["ttft_p50_no_cache_over_cache"])
    ext = session["extension"]
    return lines + ["", f"TTFT p50 without / with the cache: {speedup}; a cached FIM prompt's "
                    f"TTFT (median) = {session['cached_ttft_in_steps'] or 0:.1f} decode steps "
                    "(its suffix is prefilled again each time). A completion prompt of "
                    f"{ext['prompt_tokens']} tokens extending the one before by a word: TTFT "
                    f"{_s(ext['ttft_s'])} = {ext['ttft_in_steps'] or 0:.1f} decode steps of "
                    f"{_s(ext['step_s'])} (target <= 2).", ""]


def _admission_lines(adm: dict) -> list[str]:
    lines = [f"A {adm['long_prompt_tokens']}-token prompt admitted while one request decodes: "
             "that request's inter-token gaps until the prompt's first token.", "",
             "| prefill chunk | unloaded step | gaps while admitting | p99 gap | max gap | "
             "p99 / unloaded (target <= 2x) | long prompt TTFT |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, g in adm.items():
        if isinstance(g, dict):
            lines.append(f"| {name} | {_s(g['unloaded_step_s'])} | {g['loaded_gaps']} | "
                         f"{_s(g['loaded_p99_s'])} | {_s(g['loaded_max_s'])} | "
                         f"{_x(g['p99_over_unloaded'])} | "
                         f"{_s(g['long_prompt_ttft_s'], 1, ' s')} |")
    return lines + [""]


def _llama_cpp_lines(lc: dict) -> list[str]:
    lines = ["llama.cpp (`llama-bench`) on the same GGUF, same threads:", ""]
    if "skipped" in lc or "error" in lc:
        return lines + [f"not measured: {lc.get('skipped') or lc.get('error')}"]
    lines += ["| | decode tok/s | prefill 512 tok/s | decode vs llama.cpp | "
              "prefill vs llama.cpp |", "|---|---:|---:|---:|---:|",
              f"| llama.cpp ({lc['type']}, build {lc['build']}) | "
              f"{lc['llama_cpp']['decode']:.1f} | {lc['llama_cpp']['prefill']:.1f} | | |"]
    for name, o in lc["ours"].items():
        lines.append(f"| submodel {name} | {o['decode_tokens_per_s']:.1f} | "
                     f"{o['prefill_tokens_per_s']:.1f} | "
                     f"{_x(lc['decode_vs_llama_cpp'][name])} | "
                     f"{_x(lc['prefill_vs_llama_cpp'][name])} |")
    reads = lc["read_gb_s"]
    return lines + ["", f"Host read bandwidth before each round (a sum over 1 GiB): "
                        f"{min(reads):.0f}-{max(reads):.0f} GB/s."]
