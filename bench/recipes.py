"""Mask recipes side by side: each store's recipe and prune time, its greedy pass@1 per
(mask, language) from `bench passk --greedy`, its proxy scores from `bench proxy`, and whether
the proxy predicts pass@1 (Spearman rank correlation over every cell that has both), and each
recipe's own-language masks against the first run's, paired over problems (a recipe beats the
first only if the interval of the difference excludes 0).

Only reads what those commands wrote; runs nothing. The table is what a recipe choice rests on
(README "Mask quality"). Where the runs hold one language's mask at two or more sparsities,
sparsity.png plots its retention against sparsity (operators pick `--sparsity` from it)."""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

from submodel.bench.matrix import paired_bootstrap, problem_scores
from submodel.bench.report import pyplot, save_figure, write_report
from submodel.pruning.recipe import describe_recipe
from submodel.vocabulary import DENSE

PERMUTATIONS = 10000  # for the correlation's p-value


class RecipesError(ValueError):
    """A run that cannot be read; the message names the file."""


@dataclass(frozen=True)
class Run:
    """One recipe: its store, and where its proxy and greedy results are (either may be
    missing)."""

    name: str
    store: Path
    proxy: Path | None = None
    greedy: Path | None = None


def parse_run(text: str) -> Run:
    """NAME=STORE[,proxy=DIR][,greedy=DIR]."""
    name, sep, rest = text.partition("=")
    parts = rest.split(",")
    if not sep or not name or not parts[0]:
        raise RecipesError(f"--run {text!r}: expected NAME=STORE[,proxy=DIR][,greedy=DIR]")
    extra = {}
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if key not in ("proxy", "greedy") or not sep or not value:
            raise RecipesError(f"--run {text!r}: {part!r} is not proxy=DIR or greedy=DIR")
        extra[key] = Path(value)
    return Run(name, Path(parts[0]), **extra)


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except OSError as e:
        raise RecipesError(f"cannot read {path}: {e.strerror}") from None
    except ValueError:
        raise RecipesError(f"{path} is not JSON") from None


def describe(manifest: dict) -> str:
    """The recipe in one line: calibration data, then score, allocation, refinement, sparsity."""
    cal = manifest.get("calibration", {})
    overrides = manifest.get("sparsity_overrides") or {}
    sparsity = f"{manifest.get('sparsity')}" + "".join(f", {k}={v}"
                                                       for k, v in sorted(overrides.items()))
    return (f"{cal.get('kind', 'raw')} {cal.get('nsamples', '?')}x{cal.get('seqlen', '?')}  "
            f"{describe_recipe(manifest)}  sparsity {sparsity}")


def prune_seconds(manifest: dict) -> dict[str, float]:
    return {lang: info["seconds"] for lang, info in manifest.get("languages", {}).items()
            if isinstance(info, dict) and "seconds" in info}


def read_greedy(run: Run) -> dict | None:
    """The run's `bench passk --greedy` results, or None if it names none."""
    if not run.greedy:
        return None
    greedy = _read(run.greedy / "passk.json")
    if greedy.get("n") != 1 or greedy.get("sampling", {}).get("temperature") != 0.0:
        raise RecipesError(f"{run.greedy / 'passk.json'} is not a --greedy run")
    return greedy


def collect(run: Run, greedy: dict | None) -> dict:
    """One run's row of the table: recipe, prune time, and a cell per (sub-model, language)."""
    manifest = _read(run.store / "manifest.json")
    cells: dict[str, dict] = {}
    if greedy is not None:
        for row, by_lang in greedy["cells"].items():
            for lang, c in by_lang.items():
                if c.get("pass@1") is not None:
                    cells.setdefault(f"{row}/{lang}", {})["pass@1"] = c["pass@1"]
                    cells[f"{row}/{lang}"]["problems"] = c["problems"]
    if run.proxy:
        for key, c in _read(run.proxy / "proxy.json")["cells"].items():
            cells.setdefault(key, {}).update(agreement=c["agreement"], kl=c["kl"])
    return {"name": run.name, "store": str(run.store), "recipe": describe(manifest),
            "prune_seconds": prune_seconds(manifest), "cells": cells,
            "sparsity": {lang: sparsity_of(manifest, lang) for lang in manifest["languages"]},
            "retention": greedy.get("retention", {}) if greedy else {}}


def own_mask_problems(greedy: dict | None) -> dict[str, dict[str, float]]:
    """{language: {problem: pass@1}} of each language's own mask in greedy results (empty
    without them)."""
    if greedy is None:
        return {}
    return {lang: problem_scores(by_lang[lang], 1) for lang, by_lang in greedy["cells"].items()
            if lang in by_lang and "per_problem" in by_lang[lang]}


def against_first(greedy: list[dict | None], rows: list[dict]) -> None:
    """Each later row's `vs_first`: per language its own mask minus the first run's, in
    points of problems solved, with a paired bootstrap 95% interval over the problems both ran."""
    first = own_mask_problems(greedy[0])
    for results, row in zip(greedy[1:], rows[1:], strict=True):
        row["vs_first"] = {lang: paired_bootstrap(solved, first[lang])
                           for lang, solved in own_mask_problems(results).items()
                           if lang in first}


def sparsity_of(manifest: dict, language: str) -> float:
    """The sparsity a store's mask of `language` was pruned to."""
    return float((manifest.get("sparsity_overrides") or {}).get(language,
                                                               manifest.get("sparsity")))


def sparsity_curve(rows: list[dict]) -> dict[str, list[dict]]:
    """Per language, its retention at each sparsity the runs measured (sorted), where there are
    at least two sparsities."""
    curve: dict[str, list[dict]] = {}
    for r in rows:
        for lang, ret in r["retention"].items():
            if ret.get("retention") is not None and lang in r["sparsity"]:
                curve.setdefault(lang, []).append({
                    "sparsity": r["sparsity"][lang], "retention": ret["retention"],
                    "interval": (ret.get("vs_dense") or {}).get("ratio_95"), "run": r["name"]})
    return {lang: sorted(points, key=lambda p: p["sparsity"]) for lang, points in curve.items()
            if len({p["sparsity"] for p in points}) >= 2}


def plot_curve(curve: dict[str, list[dict]], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for lang, points in sorted(curve.items()):
        x = [100 * p["sparsity"] for p in points]
        y = [100 * p["retention"] for p in points]
        # a percentile interval need not bracket the point estimate: clamp the bars at it
        low = [max(0, 100 * (p["retention"] - p["interval"][0])) if p["interval"] else 0
               for p in points]
        high = [max(0, 100 * (p["interval"][1] - p["retention"])) if p["interval"] else 0
                for p in points]
        ax.errorbar(x, y, yerr=[low, high], marker="o", capsize=3, label=lang)
    ax.axhline(85, color="grey", linestyle="--", linewidth=1, label="target 85%")
    ax.set_xlabel("sparsity (% of each row pruned)")
    ax.set_ylabel("own-mask greedy pass@1 / dense (%)")
    ax.set_title("Retention vs sparsity (95% paired bootstrap)")
    ax.legend()
    save_figure(fig, path)


def ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=values.__getitem__)
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for m in range(i, j + 1):
            out[order[m]] = (i + j) / 2 + 1
        i = j + 1
    return out


def pearson(x: list[float], y: list[float]) -> float | None:
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sx = math.sqrt(sum((a - mx) ** 2 for a in x))
    sy = math.sqrt(sum((b - my) ** 2 for b in y))
    if sx == 0 or sy == 0:
        return None
    return sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True)) / (sx * sy)


def spearman(x: list[float], y: list[float], seed: int = 0) -> dict | None:
    """Spearman's rho and a two-sided permutation p-value (exact enough at 10,000 draws)."""
    if len(x) < 3:
        return None
    rx, ry = ranks(x), ranks(y)
    rho = pearson(rx, ry)
    if rho is None:
        return None
    rng = random.Random(seed)
    shuffled = list(ry)
    extreme = 0
    for _ in range(PERMUTATIONS):
        rng.shuffle(shuffled)
        r = pearson(rx, shuffled)
        extreme += r is not None and abs(r) >= abs(rho) - 1e-12
    return {"rho": rho, "p": (extreme + 1) / (PERMUTATIONS + 1), "cells": len(x)}


def correlation(rows: list[dict]) -> dict:
    """Does the proxy predict greedy pass@1? Over every mask cell (dense excluded: it agrees
    with itself by construction) that has both."""
    pairs = [(c["agreement"], c["kl"], c["pass@1"]) for r in rows
             for key, c in r["cells"].items()
             if not key.startswith(f"{DENSE}/") and {"agreement", "pass@1"} <= set(c)]
    agreement, kl, passed = (list(v) for v in zip(*pairs, strict=True)) if pairs else ([], [],
                                                                                         [])
    return {"agreement": spearman(agreement, passed),
            "neg_kl": spearman([-v for v in kl], passed)}


def compare(runs: list[Run], out: Path) -> dict:
    greedy = [read_greedy(r) for r in runs]
    rows = [collect(r, g) for r, g in zip(runs, greedy, strict=True)]
    against_first(greedy, rows)
    result = {"runs": rows, "correlation": correlation(rows), "sparsity_curve":
              sparsity_curve(rows)}
    write_report(out, "recipes", result, markdown(result))
    if result["sparsity_curve"]:
        plot_curve(result["sparsity_curve"], out / "sparsity.png")
    return result


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _interval(b: dict | None, key: str, scale: float = 100) -> str:
    if not b or not b.get(key):
        return "–"
    lo, hi = b[key]
    return f"[{scale * lo:.0f}, {scale * hi:.0f}]"


def markdown(result: dict) -> str:
    rows = result["runs"]
    keys = sorted({k for r in rows for k in r["cells"]},
                  key=lambda k: (k.split("/")[1], k.split("/")[0] != DENSE, k))
    lines = ["# Mask recipes", "",
             "Greedy pass@1 (full problem sets) and proxy agreement / KL per (sub-model, "
             "language); retention = own mask / dense, with its paired bootstrap 95% interval.",
             "", "| run | recipe | prune s (per language) | "
             + " | ".join(f"{k} pass@1 / agree / KL" for k in keys) + " |",
             "|---|---|---|" + "---|" * len(keys)]
    for r in rows:
        secs = ", ".join(f"{lang} {s:.0f}" for lang, s in r["prune_seconds"].items()) or "–"
        cells = []
        for k in keys:
            c = r["cells"].get(k, {})
            kl = f"{c['kl']:.3f}" if "kl" in c else "–"
            cells.append(f"{_pct(c.get('pass@1'))} / {_pct(c.get('agreement'))} / {kl}")
        lines.append(f"| {r['name']} | {r['recipe']} | {secs} | " + " | ".join(cells) + " |")
    lines += ["", "| run | language | dense | own mask | retention | retention 95% | "
              "best other mask | own − best other 95% (points) |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for lang, ret in sorted(r["retention"].items()):
            lines.append(
                f"| {r['name']} | {lang} | {_pct(ret['dense'])} | {_pct(ret['mask'])} | "
                f"{_pct(ret['retention'])} | {_interval(ret.get('vs_dense'), 'ratio_95')}% | "
                f"{ret.get('best_other_mask') or '–'} {_pct(ret.get('best_other'))} | "
                f"{_interval(ret.get('vs_best_other'), 'difference_95')} |")
    compared = [(r["name"], lang, b) for r in rows[1:]
                for lang, b in sorted(r.get("vs_first", {}).items()) if b]
    if compared:
        lines += ["", f"Own mask against the first run's ({rows[0]['name']}), paired over "
                  "problems:", "", "| run | language | difference (points) | 95% |",
                  "|---|---|---|---|"]
        lines += [f"| {name} | {lang} | {100 * b['difference']:+.1f} | "
                  f"{_interval(b, 'difference_95')} |" for name, lang, b in compared]
    if result["sparsity_curve"]:
        lines += ["", "Retention vs sparsity (sparsity.png):", "",
                  "| language | " + " | ".join(["sparsity -> retention [95%]"]) + " |",
                  "|---|---|"]
        for lang, points in sorted(result["sparsity_curve"].items()):
            lines.append(f"| {lang} | " + ", ".join(
                f"{p['sparsity']:.2f} -> {_pct(p['retention'])} "
                f"{_interval({'i': p['interval']}, 'i')}" for p in points) + " |")
    lines += ["", "Does the proxy predict greedy pass@1? Spearman over the mask cells that "
              "have both:", ""]
    for name, c in result["correlation"].items():
        label = "agreement" if name == "agreement" else "−KL"
        lines.append(f"- {label}: " + (f"rho {c['rho']:+.2f} over {c['cells']} cells "
                                       f"(permutation p = {c['p']:.3f})" if c
                                       else "fewer than 3 cells with both, or no variation"))
    return "\n".join(lines) + "\n"
