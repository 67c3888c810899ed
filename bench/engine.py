"""The engine end to end, as ratios from one run (issue 4's and issue 7's benchmark).

`submodel bench engine STORE [--out results/engine] [--quick]` measures, side by side on the
same machine, dtype and threads:
1. batch-1 decode tokens/s of every strategy (dense and masked) vs transformers `generate()`,
   prefill excluded on both sides, in bf16 and fp32;
2. the swap strategy's mask switch time vs one batch-1 decode step;
3. throughput of a mixed 4-language load vs a dense-only (and a one-language) load at the same
   concurrency, per strategy;
4. memory (RSS and PSS, each in a fresh subprocess) that serving 4 languages adds over serving
   dense alone, vs the packed size of the 4 masks;
5. a fused decode step vs the bandwidth floor (weight bytes read per step / read bandwidth);
6. where each decode step's time goes (linears, lm_head, the rest of the forward, sampling,
   the engine's own per-step work), and the same forward with torch's dense F.linear.
engine_report.py renders the Markdown tables; the numbers go to JSON. The CPU may be shared:
each timed figure is the best of a few repeats, ours and transformers' runs are interleaved, and
each is given both in wall time and in process CPU time (bench/timing.py).
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from submodel.bench.engine_report import targets
from submodel.bench.kernels import read_bandwidth
from submodel.bench.timing import best, both, clock, progress, ratio, since
from submodel.pruning.store import Store, open_store
from submodel.server import kernels
from submodel.server.api import (
    DoneEvent,
    GenerationRequest,
    SamplingParams,
    TokenEvent,
)
from submodel.server.dense_source import read_header
from submodel.server.engine import Engine
from submodel.server.model import Linear, Transformer
from submodel.server.omp import release_team
from submodel.server.sampling import TextAssembler, choose_token
from submodel.vocabulary import DENSE, STRATEGIES

DTYPES = ("bfloat16", "float32")  # the dtypes timed: the store's usual one and fp32
MASKED = "python"  # the mask used for "masked" figures when the store has it
PROMPT = ("# A binary search tree with insert, delete, search, and in-order, pre-order and "
          "post-order traversals, plus a small test suite.\n\nclass Node:\n")


class BenchError(Exception):
    """A figure cannot be measured on this store; the message says why."""


@dataclass(frozen=True)
class Settings:
    new_tokens: int = 64  # batch-1 decode length
    repeats: int = 3  # best of
    load_tokens: int = 32  # max_tokens of each request in the load runs
    concurrency: int = 8
    switches: int = 15  # cycles through the languages and dense
    profile_steps: int = 16
    threads: int = 2
    max_context: int = 512
    bandwidth_gib: float = 1.0  # size of the sum that measures read bandwidth


QUICK = Settings(new_tokens=32, repeats=1, load_tokens=8, switches=5, profile_steps=4,
                 bandwidth_gib=0.25)


def hf_generate(model, prompt_ids: list[int], new_tokens: int, streamer=None) -> None:
    ids = torch.tensor([prompt_ids])
    model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                   min_new_tokens=new_tokens, do_sample=False, streamer=streamer,
                   pad_token_id=model.config.eos_token_id)


def hf_decode(model, prompt_ids: list[int], new_tokens: int) -> dict:
    """Decode tokens/s of transformers' greedy generate(), prefill excluded: from the first
    new token to the last, in wall time and in the process's CPU time."""
    from transformers.generation.streamers import BaseStreamer

    class Stamps(BaseStreamer):  # wall and CPU clocks at each new token; decodes nothing
        def __init__(self) -> None:
            self.times: list[tuple[float, float]] = []
            self.prompt_seen = False

        def put(self, value) -> None:
            if self.prompt_seen:
                self.times.append((time.perf_counter(), time.process_time()))
            self.prompt_seen = True

        def end(self) -> None: ...

    hf_generate(model, prompt_ids, 1)  # untimed: the first call pays one-time setup
    stamps = Stamps()
    hf_generate(model, prompt_ids, new_tokens, stamps)
    return between_tokens(stamps.times, "transformers")


def between_tokens(stamps: list[tuple[float, float]], who: str) -> dict:
    """Tokens/s from the (wall, CPU) clocks read as each new token arrived: the steps after
    the first token over the time from it to the last. Measured within the one request, so
    the prefill and the set-up around a request never enter it."""
    if len(stamps) < 2:
        raise BenchError(f"{who}: the request ended after its first token; nothing to time")
    steps = len(stamps) - 1
    (wall0, cpu0), (wall1, cpu1) = stamps[0], stamps[-1]
    return {"wall": steps / (wall1 - wall0), "cpu": steps / max(cpu1 - cpu0, 1e-9)}


def engine_request(engine: Engine, language: str, max_tokens: int) -> list:
    """Every event of one greedy request of PROMPT."""
    return list(engine.submit(GenerationRequest(PROMPT, language, SamplingParams(max_tokens))))


def engine_decode(engine: Engine, language: str, new_tokens: int) -> dict:
    """Decode tokens/s of one greedy request alone in the engine, prefill excluded (clocks
    read as each token arrives, after an untimed 1-token request so that it pays for no mask
    switch), and its prefill (time to first token, wall ms)."""
    engine_request(engine, language, 1)
    stamps, done = [], None
    for event in engine.submit(GenerationRequest(PROMPT, language, SamplingParams(new_tokens))):
        if isinstance(event, TokenEvent) and event.token_id >= 0:
            stamps.append((time.perf_counter(), time.process_time()))
        elif isinstance(event, DoneEvent):
            done = event
    return {"tokens_per_s": between_tokens(stamps, f"engine {language}"),
            "prefill_ms": done.ttft_seconds * 1e3}


def switch_times(engine: Engine, count: int) -> list[dict]:
    """`count` swap switches cycling through the languages and dense (engine idle), each with
    its wall and CPU ms and the fraction of prunable weights whose kept bit differs."""
    strategy = engine.strategy
    order = [*engine.languages, DENSE]
    strategy.switch(order[0])  # warm: the dense file into the page cache
    rows = []
    for i in range(count):
        old, new = order[i % len(order)], order[(i + 1) % len(order)]
        start = clock()
        strategy.switch(new)
        wall, cpu = since(start)
        rows.append({"from": old, "to": new, "wall": wall * 1e3, "cpu": cpu * 1e3,
                     "changed": changed_fraction(strategy, old, new)})
    strategy.switch(DENSE)
    return rows


def changed_fraction(strategy, a: str, b: str) -> float:
    """Fraction of prunable weights kept by exactly one of languages a and b (dense keeps all)."""
    ones = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int32)
    changed = total = 0
    for name, linear in strategy.linears.items():
        w = linear.weight
        total += w.numel()
        if DENSE in (a, b):
            lang = b if a == DENSE else a
            changed += 0 if lang == DENSE else w.numel() - int(
                ones[strategy.masks[lang][name].long()].sum())
        else:
            xor = torch.bitwise_xor(strategy.masks[a][name], strategy.masks[b][name])
            changed += int(ones[xor.long()].sum())
    return changed / total


def load_run(engine: Engine, languages: list[str], max_tokens: int) -> dict:
    """Generated tokens/s of len(languages) concurrent greedy requests, one client thread each."""
    done: list[DoneEvent | None] = [None] * len(languages)
    barrier = threading.Barrier(len(languages) + 1)

    def client(i: int, lang: str) -> None:
        barrier.wait()
        handle = engine.submit(GenerationRequest(PROMPT, lang, SamplingParams(max_tokens)))
        done[i] = list(handle)[-1]

    threads = [threading.Thread(target=client, args=(i, lang))
               for i, lang in enumerate(languages)]
    for t in threads:
        t.start()
    barrier.wait()
    start = clock()
    for t in threads:
        t.join()
    wall, cpu = since(start)
    tokens = sum(d.generated_tokens for d in done)
    return {"tokens": tokens, "seconds": wall, "cpu_seconds": cpu,
            "tokens_per_s": {"wall": tokens / wall, "cpu": tokens / cpu}}


def on_this_thread(engine: Engine, fn, *args, **kwargs):
    """fn's torch work on this thread while the engine's thread is parked, then this thread's
    OpenMP team released: one team at a time, as in serving (see submodel.server.omp)."""
    engine.wait_parked()
    try:
        return fn(*args, **kwargs)
    finally:
        release_team()


def median_ms(fn, repeats: int) -> dict:
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(since(start))
    return both(times, scale=1e3)


def step_profile(engine: Engine, language: str, steps: int) -> dict:
    """Where one batch-1 decode step's time goes, by timing the forward directly (engine idle).

    Decodes `steps` tokens after the prompt in slot 0 three ways: as the engine does, with each
    Linear timed, and with torch's dense F.linear in place of the strategy's kernel. Returns ms.
    """
    prompt = engine.tokenizer.encode(PROMPT)
    slots = torch.tensor([0])
    engine.forward(torch.tensor([prompt]), torch.arange(len(prompt))[None], slots, [language],
                   prefill=True)
    spent = {"linears": [0.0, 0.0], "lm_head": [0.0, 0.0]}
    logits = []

    def decode() -> list[tuple[float, float]]:
        times = []
        for k in range(steps):
            pos = torch.tensor([[len(prompt) + k]])
            start = clock()
            logits[:] = engine.forward(torch.tensor([[prompt[-1]]]), pos, slots, [language],
                                       prefill=False)
            times.append(since(start))
        return times

    parts = {"forward": both(decode(), scale=1e3)}
    with timed_linears(engine.model, spent):
        timed = decode()  # the rest = this run's forward minus its Linears
    for k, (wall, cpu) in spent.items():
        parts[k] = {"wall": wall / steps * 1e3, "cpu": cpu / steps * 1e3}
    parts["rest_of_forward"] = {
        c: sum(t[j] for t in timed) / steps * 1e3 - parts["linears"][c] - parts["lm_head"][c]
        for j, c in enumerate(("wall", "cpu"))}
    parts["sampling"] = median_ms(lambda: choose_token(logits[0], SamplingParams(), None), steps)
    ids = [int(t) for t in torch.randint(0, 1000, (64,))]

    def assemble():
        asm = TextAssembler(engine.tokenizer, ())
        for t in ids:
            asm.add(t)

    parts["text_per_token"] = {c: v / len(ids) for c, v in median_ms(assemble, 3).items()}
    with torch_linears(engine.model):
        parts["torch_dense_forward"] = both(decode(), scale=1e3)
    return parts


@contextlib.contextmanager
def timed_linears(model: Transformer, spent: dict[str, list[float]]):
    """Adds each decoder Linear's (a joint one's for its members) and the LM head's (wall, CPU)
    seconds to `spent`."""
    started: list[tuple[float, float]] = []

    def start(*_) -> None:
        started.append(clock())

    def stop(kind: str) -> None:
        for k, v in enumerate(since(started.pop())):
            spent[kind][k] += v

    hooks = []
    for kind, modules in (("linears", model.called_linears().values()),
                          ("lm_head", [model.lm_head])):
        for m in modules:
            hooks.append(m.register_forward_pre_hook(start))
            hooks.append(m.register_forward_hook(lambda *_, kind=kind: stop(kind)))
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


@contextlib.contextmanager
def torch_linears(model: Transformer):
    """The model with torch's dense F.linear in place of the strategy's Linears (each on the
    weight it holds now), put back on exit."""
    installed = {**model.called_linears(), "lm_head": model.lm_head}
    for name, m in installed.items():
        model.replace(name, Linear(m.weight, m.bias))
    try:
        yield
    finally:
        for name, m in installed.items():
            model.replace(name, m)


def batch_profile(engine: Engine, masked: str, steps: int, batch: int) -> dict:
    """Forward ms of a decode step of `batch` rows: all dense, all `masked`, 4 languages mixed
    (a strategy that mixes languages in one step; engine idle). The three are interleaved."""
    prompt = engine.tokenizer.encode(PROMPT)
    engine.forward(torch.tensor([prompt]), torch.arange(len(prompt))[None], torch.tensor([0]),
                   [DENSE], prefill=True)
    for slot in range(1, batch):
        engine.cache.copy_slot(0, slot, len(prompt))
    langs = engine.languages
    mixes = {"dense": [DENSE] * batch, "one_language": [masked] * batch,
             "mixed": [langs[i % len(langs)] for i in range(batch)]}
    times: dict[str, list] = {k: [] for k in mixes}
    tokens, slots = torch.full((batch, 1), prompt[-1]), torch.arange(batch)
    for k in range(steps):
        pos = torch.full((batch, 1), len(prompt) + k)
        for name, rows in mixes.items():
            start = clock()
            engine.forward(tokens, pos, slots, rows, prefill=False)
            times[name].append(since(start))
    return {name: both(t, scale=1e3) for name, t in times.items()}


def weight_bytes_per_step(engine: Engine, language: str) -> int:
    """Bytes a batch-1 decode step must read: prunable weights, one mask (if any), lm_head."""
    strategy = engine.strategy
    nbytes = sum(m.weight.numel() * m.weight.element_size() for m in strategy.linears.values())
    if language != DENSE:
        nbytes += sum(m.numel() for m in strategy.masks[language].values())
    lm_head = engine.model.lm_head.weight
    return nbytes + lm_head.numel() * lm_head.element_size()


def packed_mask_bytes(store: Store) -> int:
    """Sum of the tensor bytes in every mask file of the store (headers excluded)."""
    total = 0
    for lang in store.languages:
        _, header = read_header(store.mask_file(lang))
        total += sum(m["data_offsets"][1] - m["data_offsets"][0]
                     for k, m in header.items() if k != "__metadata__")
    return total


# ---- memory, each in a fresh process ----

def smaps_rollup() -> dict[str, int]:
    """Bytes of every field of /proc/self/smaps_rollup (Rss, Pss, Pss_Anon, Pss_File, ...)."""
    fields = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        fields[key] = int(value.split()[0]) * 1024
    return fields


def memory_probe(store_path: str, strategy: str, threads: int, max_context: int) -> dict:
    """Load an engine, serve one short request per language, report the process's memory.

    strategy "dense" loads no masks at all (the store seen with no languages): the baseline.
    """
    import ctypes

    torch.set_num_threads(threads)
    store = open_store(store_path, verify=False)
    if strategy == DENSE:
        store = Store(store.path, {**store.manifest, "languages": {}})
    engine = Engine(store, "swap" if strategy == DENSE else strategy, max_batch=4,
                    max_context=max_context)
    engine.start()
    for lang in [*store.languages, DENSE] if store.languages else [DENSE] * 5:
        engine_request(engine, lang, 8)
    engine.stop()  # the engine thread ends; the weights, masks and caches stay referenced
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed heap back to the OS, same for every probe
    fields = smaps_rollup()
    keys = ("Rss", "Pss", "Pss_Anon", "Pss_File", "Private_Dirty")
    return {"strategy": strategy, **{k.lower(): fields.get(k, 0) for k in keys},
            "resident_bytes": engine.strategy.resident_bytes()}


def run_memory_probe(store_path: str, strategy: str, s: Settings) -> dict:
    code = ("import json, sys; from submodel.bench.engine import memory_probe; "
            f"print(json.dumps(memory_probe({store_path!r}, {strategy!r}, {s.threads}, "
            f"{s.max_context})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=900)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchError(f"memory probe for {strategy} failed: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def memory(store: Store, s: Settings) -> dict:
    packed = packed_mask_bytes(store)
    probes = [run_memory_probe(str(store.path), name, s) for name in (DENSE, *STRATEGIES)]
    base = probes[0]
    for p in probes[1:]:
        p["added_rss"] = p["rss"] - base["rss"]
        p["added_pss"] = p["pss"] - base["pss"]
        p["added_rss_vs_masks"] = p["added_rss"] / packed
        p["added_pss_vs_masks"] = p["added_pss"] / packed
    return {"packed_mask_bytes": packed, "probes": probes}


# ---- one run ----

def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def dtype_phase(store: Store, dtype_name: str, s: Settings, result: dict) -> None:
    """Every figure of one dtype: transformers and each strategy's engine, interleaved."""
    dtype = getattr(torch, dtype_name)
    masked = MASKED if MASKED in store.languages else store.languages[0]
    hf = store.load_hf_model(dtype)
    prompt_ids = store.load_tokenizer().encode(PROMPT)
    hf_generate(hf, prompt_ids, 4)  # warm-up
    for name in STRATEGIES:
        if name == "replicas":
            need = 1.2 * len(store.languages) * sum(
                math.prod(shape) for shape in store.prunable.values()) * dtype.itemsize
            if mem_available() < need:
                result["skipped"].append(f"replicas {dtype_name}: needs ~{need / 2**30:.1f} GiB, "
                                         f"{mem_available() / 2**30:.1f} GiB available")
                continue
        engine = Engine(store, name, dtype=dtype, max_batch=s.concurrency,
                        max_context=s.max_context)
        engine.start()
        try:
            progress("engine", f"{name} {dtype_name}")
            strategy_phase(engine, hf, prompt_ids, masked, s, result)
        finally:
            engine.stop()
            del engine
            gc.collect()
    del hf
    gc.collect()


def strategy_phase(engine: Engine, hf, prompt_ids: list[int], masked: str, s: Settings,
                   result: dict) -> None:
    name, dtype_name = engine.strategy.name, str(engine.dtype).removeprefix("torch.")
    for lang in (DENSE, masked):
        engine_request(engine, lang, 4)  # warm-up (and swap's first switch)
    runs: dict[str, list[dict]] = {"hf": [], DENSE: [], masked: []}
    for _ in range(s.repeats):
        runs["hf"].append(on_this_thread(engine, hf_decode, hf, prompt_ids, s.new_tokens))
        for lang in (DENSE, masked):
            runs[lang].append(engine_decode(engine, lang, s.new_tokens))
    hf_best = best(runs["hf"])
    for lang in (DENSE, masked):
        tps = best([r["tokens_per_s"] for r in runs[lang]])
        result["decode"].append({
            "dtype": dtype_name, "strategy": name, "language": lang, "tokens_per_s": tps,
            "step_ms": {k: 1e3 / v for k, v in tps.items()}, "hf_tokens_per_s": hf_best,
            "vs_hf": ratio(tps, hf_best),
            "prefill_ms": min(r["prefill_ms"] for r in runs[lang])})
    step_ms = result["decode"][-1]["step_ms"]  # masked, end to end

    # measured here, next to the profile it scales: the machine's load changes
    bandwidth = on_this_thread(engine, read_bandwidth, repeats=3, gib=s.bandwidth_gib)
    parts = on_this_thread(engine, step_profile, engine, masked, s.profile_steps)
    parts["engine_step"] = step_ms
    parts["engine_overhead"] = {c: step_ms[c] - parts["forward"][c] - parts["sampling"][c]
                                for c in ("wall", "cpu")}
    nbytes = weight_bytes_per_step(engine, masked)
    floor_ms = nbytes / bandwidth * 1e3
    result["steps"].append({
        "dtype": dtype_name, "strategy": name, "language": masked, "parts_ms": parts,
        "weight_bytes": nbytes, "bandwidth_gbs": bandwidth / 1e9, "floor_ms": floor_ms,
        "floor_fraction": floor_ms / step_ms["wall"],
        "vs_torch_dense": ratio(parts["torch_dense_forward"], parts["forward"])})
    if engine.mixes_languages:
        result["steps"][-1]["batch_forward_ms"] = on_this_thread(
            engine, batch_profile, engine, masked, s.profile_steps,
            min(s.concurrency, engine.max_batch))

    if name == "swap":
        rows = switch_times(engine, s.switches)
        entry = {"dtype": dtype_name, "switches": rows, "step_ms": step_ms}
        for kind, dense_involved in (("language", False), ("dense", True)):
            some = [(r["wall"], r["cpu"]) for r in rows if (DENSE in (r["from"], r["to"]))
                    == dense_involved]
            median = both(some)
            entry[kind] = {"count": len(some), "median_ms": median,
                           "vs_step": ratio(median, step_ms),
                           "changed": statistics.median(
                               r["changed"] for r in rows
                               if (DENSE in (r["from"], r["to"])) == dense_involved)}
        result["switch"].append(entry)
    if engine.dtype == engine.store.dtype:
        result["load"].append({"strategy": name, **load_mixes(engine, s)})


def load_mixes(engine: Engine, s: Settings) -> dict:
    """Throughput of dense-only, one-language and mixed 4-language loads, best of repeats."""
    langs = engine.languages
    mixes = {"dense": [DENSE] * s.concurrency,
             "one_language": [MASKED if MASKED in langs else langs[0]] * s.concurrency,
             "mixed": [langs[i % len(langs)] for i in range(s.concurrency)]}
    load_run(engine, mixes["mixed"], 2)  # warm-up
    runs: dict[str, list[dict]] = {k: [] for k in mixes}
    for _ in range(s.repeats):
        for k, languages in mixes.items():
            runs[k].append(load_run(engine, languages, s.load_tokens))
    out = {k: {"runs": v, "tokens_per_s": best([r["tokens_per_s"] for r in v])}
           for k, v in runs.items()}
    out["mixed_vs_dense"] = ratio(out["mixed"]["tokens_per_s"], out["dense"]["tokens_per_s"])
    out["mixed_vs_one_language"] = ratio(out["mixed"]["tokens_per_s"],
                                         out["one_language"]["tokens_per_s"])
    return out


def run(store_path: str, s: Settings) -> dict:
    torch.set_num_threads(s.threads)
    torch.set_grad_enabled(False)
    store = open_store(store_path)
    result = {"store": str(store.path), "model": store.manifest.get("base_model", {}).get("id"),
              "store_dtype": str(store.dtype).removeprefix("torch."), "settings": asdict(s),
              "kernel_path": kernels.kernel_path(), "cpu_features": kernels.cpu_features(),
              "load_average_start": list(os.getloadavg()), "skipped": [], "decode": [], "steps": [],
              "switch": [], "load": []}
    progress("engine", "memory probes")
    result["memory"] = memory(store, s)  # first: no engine of ours maps the store yet
    result["bandwidth_gbs"] = read_bandwidth(repeats=5, gib=s.bandwidth_gib) / 1e9
    for dtype_name in DTYPES:
        dtype_phase(store, dtype_name, s, result)
    result["load_average_end"] = list(os.getloadavg())
    result["targets"] = targets(result)
    return result
