"""`python -m submodel.bench.router [--json PATH]`: the router's accuracy and latency.

Snippets of 1-2, 5-15 and 30-60 lines are cut at random lines of each language's held-out files
(`submodel.pruning.corpora`, split "heldout": never seen by the trainer) and routed by content
alone (no hint, no file name); a fallback to dense counts as a miss. A window with fewer than 8
non-space characters (`}`, `else:`) is redrawn. The main columns count windows that hold at
least one line of code; the "any" columns also count windows of nothing but comment or docstring
lines, which are prose and which the router is designed to send to dense when unsure.

"Other" snippets (samples/4 per kind and length) are cut the same way from held-out "other"
files (C, Go, Rust, TypeScript, shell, SQL, data formats, prose): there the number is how often
one of our languages is claimed, and how often with confidence >= 0.9. HumanEval prompts in all
four languages (our translations) are routed too: that is the pass@k bench's traffic. Latency is
per `detect` call, in this process, one call at a time: wall clock and this thread's CPU time.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np

from submodel.bench.report import write_json
from submodel.pruning import corpora
from submodel.router import LANGUAGES, Router, other
from submodel.router.snippets import SnippetSampler

BUCKETS = {"1-2": (1, 2), "5-15": (5, 15), "30+": (30, 60)}
TARGETS = {"1-2": 0.90, "5-15": 0.97, "30+": 0.97}
P50_TARGET_MS = 1.0
SURE = 0.9  # "claimed with high confidence"


def _timed(router: Router, text: str, latencies: list[tuple[float, float]]):
    """Route `text`; record (wall, thread CPU) milliseconds. Returns the Detection."""
    t0, c0 = time.perf_counter_ns(), time.thread_time_ns()
    detection = router.detect(text)
    latencies.append(((time.perf_counter_ns() - t0) / 1e6, (time.thread_time_ns() - c0) / 1e6))
    return detection


def _samplers(texts: list[str], seed: int, code_only: bool) -> dict[str, SnippetSampler]:
    """One sampler per bucket; the 30+ bucket only uses files that have 30 lines (and is left
    out if none has)."""
    long_texts = [t for t in texts if t.count("\n") + 1 >= BUCKETS["30+"][0]]
    return {b: SnippetSampler(long_texts if b == "30+" else texts, random.Random(f"{seed}/{b}"),
                              code_only=code_only)
            for b in BUCKETS if long_texts or b != "30+"}


def _draw(sampler: SnippetSampler, bucket: str, rng: random.Random) -> str:
    lo, hi = BUCKETS[bucket]
    return sampler.draw(rng.randint(lo, hi))


def languages_rows(router: Router, samples: int, seed: int, latencies: dict) -> list[dict]:
    rows = []
    for lang in LANGUAGES:
        source = corpora.find_source(lang)
        texts = [d.text for d in corpora.documents(source, "heldout")]
        row = {"language": lang, "source": source.description}
        for code_only, suffix in ((True, ""), (False, " any")):
            for bucket, sampler in _samplers(texts, seed, code_only).items():
                rng = random.Random(f"{seed}/{lang}/{bucket}{suffix}")
                routed = [_timed(router, _draw(sampler, bucket, rng), latencies[bucket]).language
                          for _ in range(samples)]
                row[bucket + suffix] = sum(r == lang for r in routed) / samples
                row[f"{bucket}{suffix} routed"] = {r: routed.count(r) for r in sorted(set(routed))}
        rows.append(row)
    return rows


def other_rows(router: Router, samples: int, seed: int, latencies: dict) -> list[dict]:
    by_kind: dict[str, list[str]] = {}
    for doc in other.documents("heldout"):
        by_kind.setdefault(doc.kind, []).append(doc.text)
    rows = []
    for kind in sorted(by_kind):
        samplers = _samplers(by_kind[kind], seed, code_only=False)
        row = {"kind": kind, "files": len(by_kind[kind])}
        for bucket, sampler in samplers.items():
            rng = random.Random(f"{seed}/{kind}/{bucket}")
            n = max(1, samples // 4)
            found = [_timed(router, _draw(sampler, bucket, rng), latencies[bucket])
                     for _ in range(n)]
            routed = [d.language for d in found]
            row[bucket] = sum(r != "dense" for r in routed) / n
            row[f"{bucket} sure"] = sum(d.language != "dense" and d.confidence >= SURE
                                        for d in found) / n
            row[f"{bucket} claimed as"] = {r: routed.count(r) for r in sorted(set(routed))
                                           if r != "dense"}
        rows.append(row)
    return rows


def humaneval_rows(router: Router, latencies: list[tuple[float, float]]) -> list[dict]:
    from submodel.bench.humaneval import load_problems

    rows = []
    for lang in LANGUAGES:
        prompts = [p.prompt for p in load_problems(lang)]
        routed = [_timed(router, p, latencies).language for p in prompts]
        rows.append({"language": lang, "prompts": len(prompts),
                     "accuracy": sum(r == lang for r in routed) / len(prompts),
                     "routed": {r: routed.count(r) for r in sorted(set(routed))}})
    return rows


def _percentiles(times: list[tuple[float, float]]) -> dict:
    wall, cpu = np.array(times).T
    return {"calls": len(times), "p50_ms": float(np.percentile(wall, 50)),
            "p99_ms": float(np.percentile(wall, 99)), "cpu_p50_ms": float(np.percentile(cpu, 50)),
            "cpu_p99_ms": float(np.percentile(cpu, 99))}


def run(samples: int, seed: int, threshold: float, humaneval: bool) -> dict:
    router = Router(threshold=threshold)
    for text in ("def f(x):\n    return x\n", "int main() { return 0; }"):  # warm caches
        router.detect(text)
    latencies: dict[str, list[tuple[float, float]]] = {b: [] for b in BUCKETS}
    result = {"samples": samples, "seed": seed, "threshold": threshold,
              "languages": languages_rows(router, samples, seed, latencies),
              "other": other_rows(router, samples, seed, latencies)}
    if humaneval:
        latencies["humaneval"] = []
        result["humaneval"] = humaneval_rows(router, latencies["humaneval"])
    every = [x for ms in latencies.values() for x in ms]
    result["latency"] = {**{k: _percentiles(v) for k, v in latencies.items() if v},
                         "all": _percentiles(every)}
    return result


def markdown(result: dict) -> str:
    pct = "{:.1%}".format
    cols = [*BUCKETS, *(f"{b} any" for b in BUCKETS)]
    lines = [f"Router accuracy on held-out snippets ({result['samples']} per cell, content only, "
             f"threshold {result['threshold']}). Windows holding a line of code; 'any': also "
             "windows of only comments/docstrings", "",
             "| language | " + " | ".join(f"{c} lines" for c in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for row in result["languages"]:
        lines.append(f"| {row['language']} | " + " | ".join(pct(row[c]) for c in cols) + " |")
    mean = {c: np.mean([r[c] for r in result["languages"]]) for c in cols}
    lines.append("| **mean** | " + " | ".join(f"**{pct(mean[c])}**" for c in cols) + " |")
    lines.append("| target | " + " | ".join(f">= {pct(TARGETS[b])}" for b in BUCKETS)
                 + " |" * (len(BUCKETS) + 1))
    lines += ["", "Other languages: share of held-out snippets claimed by one of ours "
              f"(lower is better), and in brackets claimed with confidence >= {SURE}", "",
              "| kind | files | " + " | ".join(f"{b} lines" for b in BUCKETS) + " |",
              "|---|---:|" + "---:|" * len(BUCKETS)]
    for row in result["other"]:
        cells = [f"{pct(row[b])} ({pct(row[b + ' sure'])})" if b in row else "-"
                 for b in BUCKETS]
        lines.append(f"| {row['kind']} | {row['files']} | " + " | ".join(cells) + " |")
    if "humaneval" in result:
        lines += ["", "HumanEval prompts (our translations), routed by content", "",
                  "| language | prompts | accuracy | routed |", "|---|---:|---:|---|"]
        for row in result["humaneval"]:
            routed = ", ".join(f"{k} {v}" for k, v in row["routed"].items())
            lines.append(f"| {row['language']} | {row['prompts']} | {pct(row['accuracy'])} "
                         f"| {routed} |")
    lines += ["", f"Latency per detect call (target p50 <= {P50_TARGET_MS} ms); wall clock, and "
              "this thread's CPU time (what is left when other processes take the cores)", "",
              "| snippets | calls | p50 ms | p99 ms | CPU p50 ms | CPU p99 ms |",
              "|---|---:|---:|---:|---:|---:|"]
    for name, lat in result["latency"].items():
        lines.append(f"| {name} | {lat['calls']} | {lat['p50_ms']:.3f} | {lat['p99_ms']:.3f} "
                     f"| {lat['cpu_p50_ms']:.3f} | {lat['cpu_p99_ms']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m submodel.bench.router",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=Path("runs/router.json"),
                        help="where to write the results as JSON (default: runs/router.json)")
    parser.add_argument("--samples", type=int, default=500,
                        help="snippets per language and length bucket (default: 500)")
    parser.add_argument("--seed", type=int, default=0, help="snippet sampling seed (default: 0)")
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="router confidence threshold (default: 0.5)")
    parser.add_argument("--no-humaneval", action="store_true",
                        help="skip routing the HumanEval prompts")
    args = parser.parse_args(argv)
    if args.samples < 1 or not 0 <= args.threshold <= 1:
        parser.error("--samples must be >= 1 and --threshold in [0, 1]")
    try:
        result = run(args.samples, args.seed, args.threshold, not args.no_humaneval)
    except corpora.CorpusError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown(result))
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
