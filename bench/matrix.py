"""From the runner's samples and execution results to the numbers of passk.json: pass@k per
cell (sub-model x problem language), each mask's retention of dense on its own language, and
where the router sent the unhinted requests."""

from __future__ import annotations

import random
from collections import Counter

from submodel.bench.humaneval.passk import aggregate, pass_at_k
from submodel.bench.passk_run import ROUTED, Outcome
from submodel.vocabulary import DENSE, LANGUAGES


def pass_key(k: int) -> str:
    return f"pass@{k}"


def retention_k(ks: tuple[int, ...], n: int) -> int | None:
    """The k retention is measured at: the largest asked-for k that n samples allow."""
    allowed = [k for k in ks if k <= n]
    return max(allowed) if allowed else None


def cell(outcome: Outcome, row: str, language: str, ks: tuple[int, ...]) -> dict:
    tasks = [p.task_id for p in outcome.plan.problems[language]
             if (row, language, p.task_id) in outcome.results]
    passed = {t: [r["passed"] for r in outcome.results[row, language, t]] for t in tasks}
    scores = aggregate(passed, ks).scores if tasks else {}
    records = [s for t in tasks for s in outcome.samples[row, language, t]]
    statuses = Counter(r["status"] for t in tasks for r in outcome.results[row, language, t])
    return {
        **{pass_key(k): scores.get(k) for k in ks},
        "n": outcome.plan.n,
        "problems": len(tasks),
        "samples": len(records),
        "statuses": dict(sorted(statuses.items())),
        "finish_reasons": dict(sorted(Counter(r["finish_reason"] for r in records).items())),
        "mean_tokens": round(sum(r["tokens"] for r in records) / len(records), 1)
        if records else None,
        "per_problem": {t: [sum(v), len(v)] for t, v in passed.items()},
    }


BOOTSTRAP_RESAMPLES = 2000


def problem_scores(cell_: dict, k: int) -> dict[str, float]:
    """Each problem's own pass@k estimate, from a cell's per-problem [passed, samples]."""
    return {t: pass_at_k(n, c, k) for t, (c, n) in cell_["per_problem"].items() if n >= k}


def paired_bootstrap(a: dict[str, float], b: dict[str, float], seed: int = 0,
                     resamples: int = BOOTSTRAP_RESAMPLES) -> dict | None:
    """95% intervals for mean(a) - mean(b) and mean(a) / mean(b) over the problems both have,
    resampling problems with replacement (the same draw for both: the pairing removes the
    problem-difficulty variance that dominates at a few hundred problems)."""
    tasks = sorted(set(a) & set(b))
    if not tasks:
        return None
    pairs = [(a[t], b[t]) for t in tasks]
    rng = random.Random(seed)
    diffs, ratios = [], []
    for _ in range(resamples):
        draw = [pairs[rng.randrange(len(pairs))] for _ in pairs]
        sa, sb = sum(x for x, _ in draw), sum(y for _, y in draw)
        diffs.append((sa - sb) / len(draw))
        if sb:
            ratios.append(sa / sb)
    diffs.sort()
    ratios.sort()

    def interval(values: list[float]) -> list[float] | None:
        if not values:
            return None
        return [values[int(0.025 * (len(values) - 1))], values[int(0.975 * (len(values) - 1))]]

    mean_a, mean_b = sum(x for x, _ in pairs) / len(pairs), sum(y for _, y in pairs) / len(pairs)
    return {"problems": len(pairs), "difference": mean_a - mean_b,
            "difference_95": interval(diffs),
            "ratio": mean_a / mean_b if mean_b else None, "ratio_95": interval(ratios)}


def retention(cells: dict, rows: tuple[str, ...], columns: list[str], k: int | None) -> dict:
    """For each language with its own mask and dense both run: mask / dense pass@k there, and
    whether the mask beats every other mask on that language, each with a paired bootstrap
    interval over problems (own vs dense, own vs the best other mask)."""
    out = {}
    if k is None or DENSE not in rows:
        return out
    key = pass_key(k)
    masks = [r for r in rows if r in LANGUAGES]
    for lang in columns:
        if lang not in masks:
            continue
        own, dense = cells[lang][lang][key], cells[DENSE][lang][key]
        others = {m: cells[m][lang][key] for m in masks if m != lang
                  and cells[m][lang][key] is not None}
        best = max(others, key=others.get) if others else None
        own_scores = problem_scores(cells[lang][lang], k)
        out[lang] = {
            "k": k, "mask": own, "dense": dense,
            "retention": own / dense if own is not None and dense else None,
            "beats_other_masks": (own is not None and all(own > v for v in others.values()))
            if others else None,
            "best_other_mask": best, "best_other": others.get(best) if best else None,
            "vs_dense": paired_bootstrap(own_scores, problem_scores(cells[DENSE][lang], k)),
            "vs_best_other": paired_bootstrap(own_scores, problem_scores(cells[best][lang], k))
            if best else None,
        }
    return out


def routing(outcome: Outcome, columns: list[str]) -> dict:
    """Routed vs true language over the routed row's problems (one decision per problem)."""
    confusion: dict[str, Counter] = {lang: Counter() for lang in columns}
    sources: Counter = Counter()
    confidence: dict[str, list[float]] = {lang: [] for lang in columns}
    misrouted = []
    for lang in columns:
        for p in outcome.plan.problems[lang]:
            records = outcome.samples.get((ROUTED, lang, p.task_id))
            if not records:
                continue
            r = records[0]["routing"]
            confusion[lang][r["language"]] += 1
            sources[r["source"]] += 1
            confidence[lang].append(r["confidence"])
            if r["language"] != lang:
                misrouted.append({"task_id": p.task_id, "true_language": lang,
                                  "routed_language": r["language"],
                                  "confidence": r["confidence"], "source": r["source"]})
    return {
        "requests": sum(sum(c.values()) for c in confusion.values()),
        "confusion": {lang: dict(sorted(c.items())) for lang, c in confusion.items()},
        "misroutes": len(misrouted),
        "fallbacks": sum(1 for m in misrouted if m["source"] == "fallback"),
        "sources": dict(sorted(sources.items())),
        "mean_confidence": {lang: round(sum(v) / len(v), 4) if v else None
                            for lang, v in confidence.items()},
        "misrouted": misrouted,
    }


def summarize(outcome: Outcome, ks: tuple[int, ...], coverage: dict, meta: dict) -> dict:
    """The content of passk.json."""
    plan = outcome.plan
    columns = list(plan.problems)
    cells = {row: {lang: cell(outcome, row, lang, ks) for lang in columns} for row in plan.rows}
    k = retention_k(ks, plan.n)
    for lang, info in coverage.items():
        too_long = outcome.too_long.get(lang, {})
        info["too_long_for_context"] = sorted(too_long)
        info["evaluated"] = len(plan.problems[lang]) - len(too_long)
    s = outcome.stats
    return {
        **meta,
        "rows": list(plan.rows),
        "columns": columns,
        "n": plan.n,
        "ks": list(ks),
        "sampling": {"temperature": plan.sampling.temperature, "top_p": plan.sampling.top_p,
                     "max_tokens": plan.sampling.max_tokens, "seed": plan.sampling.seed,
                     "per_request": plan.per_request, "concurrency": plan.concurrency},
        "coverage": coverage,
        "cells": cells,
        "retention_k": k,
        "retention": retention(cells, plan.rows, columns, k),
        "routed": routing(outcome, columns) if ROUTED in plan.rows else None,
        "run": {"seconds": round(s.seconds, 1), "requests": s.requests,
                "samples_generated": s.samples_generated, "samples_cached": s.samples_cached,
                "tokens_generated": s.tokens_generated, "executions_run": s.executions_run,
                "generated_tokens_per_s": round(s.tokens_generated / s.seconds, 2)
                if s.seconds else None},
    }
