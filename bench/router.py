"""`submodel bench router [--model PATH] [--out DIR]`: the router's accuracy on
projects it never saw (leave-projects-out), and its latency.

Snippets of 1-2 and 5-30 lines ("5+") are cut at random lines of the pinned "heldout" projects
of `submodel.router.projects` (fetched once into the user cache; the trainer never reads them)
and routed by content alone (no hint, no file name). For python, java, cpp and javascript a
snippet is right if routed to its language (a fallback to dense is a miss); each project with
100+ lines of the language contributes equally. The "other" class (C headers, TypeScript, C#,
Go, Rust, shell, SQL, JSON, YAML, Markdown... of the same projects) is right if it goes to dense;
each kind contributes equally. A window with fewer than 8 non-space characters (`}`, `else:`)
is redrawn; windows of our languages must hold a line of code. "all" is the mean over the five
classes. The confusion matrix gives, per true class, where its snippets went.

HumanEval prompts in all four languages (our translations) are routed too: the pass@k bench's
traffic. Latency is per `detect` call, in this process, one call at a time: wall clock and this
thread's CPU time.
"""

from __future__ import annotations

import random

import numpy as np

from submodel.bench.timing import clock, since
from submodel.router import Router, fetch, projects
from submodel.router.model import ContentModel
from submodel.router.snippets import SnippetSampler
from submodel.vocabulary import DENSE, LANGUAGES, OTHER

BUCKETS = {"1-2": (1, 2), "5+": (5, 30)}
TARGETS = {"1-2": 0.90, "5+": 0.97}  # overall
FLOORS = {"1-2": 0.80, "5+": 0.90}  # every class
CLASSES = (*LANGUAGES, OTHER)
ROUTES = (*LANGUAGES, DENSE)
MIN_LINES = 100  # a held-out project with fewer lines of a language is not a source of it
P50_TARGET_MS = 1.0


def _timed(router: Router, text: str, latencies: list[tuple[float, float]]):
    """Route `text`; record (wall, thread CPU) milliseconds. Returns the Detection."""
    start = clock(per_thread=True)
    detection = router.detect(text)
    wall, cpu = since(start, per_thread=True)
    latencies.append((wall * 1e3, cpu * 1e3))
    return detection


def heldout_sources() -> dict[str, dict[str, list[str]]]:
    """{class: {source: texts}}: per held-out project for our languages, per kind for "other"."""
    sources: dict[str, dict[str, list[str]]] = {c: {} for c in CLASSES}
    for project in projects.projects("heldout"):
        for doc in fetch.documents(project):
            if doc.label in LANGUAGES:
                sources[doc.label].setdefault(project.key, []).append(doc.text)
            else:
                sources[OTHER].setdefault(doc.label, []).append(doc.text)
    for lang in LANGUAGES:
        sources[lang] = {k: v for k, v in sources[lang].items()
                         if sum(t.count("\n") + 1 for t in v) >= MIN_LINES}
    empty = [c for c in CLASSES if not sources[c]]
    if empty:
        raise ValueError(f"no held-out text for {', '.join(empty)}")
    return sources


def class_rows(router: Router, sources: dict, samples: int, seed: int, latencies: dict):
    rows = []
    for cls in CLASSES:
        names = sorted(sources[cls])
        row = {"class": cls, "sources": names}
        for bucket, (lo, hi) in BUCKETS.items():
            samplers = [SnippetSampler(sources[cls][n], random.Random(f"{seed}/{n}/{bucket}"),
                                       code_only=cls != OTHER) for n in names]
            rng = random.Random(f"{seed}/{cls}/{bucket}")
            routed = [_timed(router, samplers[i % len(samplers)].draw(rng.randint(lo, hi)),
                             latencies[bucket]).language for i in range(samples)]
            want = DENSE if cls == OTHER else cls
            row[bucket] = sum(r == want for r in routed) / samples
            row[f"{bucket} routed"] = {r: routed.count(r) for r in ROUTES}
            row[f"{bucket} per source"] = {
                n: sum(r == want for r in routed[i::len(names)]) / len(routed[i::len(names)])
                for i, n in enumerate(names) if routed[i::len(names)]}
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


def run(samples: int, seed: int, threshold: float, humaneval: bool,
        model: ContentModel | None = None) -> dict:
    router = Router(threshold=threshold, model=model)
    for text in ("def f(x):\n    return x\n", "int main() { return 0; }"):  # warm caches
        router.detect(text)
    latencies: dict[str, list[tuple[float, float]]] = {b: [] for b in BUCKETS}
    sources = heldout_sources()
    rows = class_rows(router, sources, samples, seed, latencies)
    result = {"samples": samples, "seed": seed, "threshold": threshold,
              "model": router.model.kind,
              "heldout_projects": [p.key for p in projects.projects("heldout")],
              "classes": rows,
              "all": {b: float(np.mean([r[b] for r in rows])) for b in BUCKETS}}
    if humaneval:
        latencies["humaneval"] = []
        result["humaneval"] = humaneval_rows(router, latencies["humaneval"])
    every = [x for ms in latencies.values() for x in ms]
    result["latency"] = {**{k: _percentiles(v) for k, v in latencies.items() if v},
                         "all": _percentiles(every)}
    return result


def markdown(result: dict) -> str:
    pct = "{:.1%}".format
    lines = [f"Router accuracy on held-out projects ({result['samples']} snippets per class and "
             f"length, content only, model {result['model']}, threshold {result['threshold']}); "
             "'other' is right when it goes to dense", "",
             "| class | " + " | ".join(f"{b} lines" for b in BUCKETS) + " |",
             "|---|" + "---:|" * len(BUCKETS)]
    for row in result["classes"]:
        lines.append(f"| {row['class']} | " + " | ".join(pct(row[b]) for b in BUCKETS) + " |")
    lines.append("| **all** | " + " | ".join(f"**{pct(result['all'][b])}**" for b in BUCKETS)
                 + " |")
    lines.append("| target | " + " | ".join(f">= {pct(TARGETS[b])} (each >= {pct(FLOORS[b])})"
                                           for b in BUCKETS) + " |")
    for bucket in BUCKETS:
        lines += ["", f"Confusion, {bucket} lines (rows: true class; columns: routed to)", "",
                  "| true \\ routed | " + " | ".join(ROUTES) + " |",
                  "|---|" + "---:|" * len(ROUTES)]
        for row in result["classes"]:
            lines.append(f"| {row['class']} | "
                         + " | ".join(str(row[f"{bucket} routed"][r]) for r in ROUTES) + " |")
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
