"""What a bench measured on a store, kept in the store's own report (report/evaluations.json),
so `submodel info STORE` shows a recipe's quality next to the recipe itself.

evaluations.json holds named tables, one per metric and setting; each run adds or replaces
its cells and leaves the others (a java run does not erase a python run's cells):

    {TITLE: {"metric": "pass@1", "percent": true, "settings": {...},
             "cells": {ROW: {COLUMN: {"value": 0.195, "problems": 164, "command": "...",
                                      "recorded": "2026-12-04T22:50:00Z"}}}}}

Rows are sub-models (dense, a language's mask, routed), columns are problem languages.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

from submodel.bench.matrix import pass_key
from submodel.bench.report import headline_k
from submodel.pruning.store import Store, open_store

REPORT = "evaluations.json"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def passk_title(results: dict) -> str:
    """The setting a pass@k cell belongs to: format, sampling, problem set, weights.

    Cells of runs with the same title are comparable and share a table."""
    s, m = results["sampling"], results["model"]
    sampling = ("greedy" if s["temperature"] == 0 and results["n"] == 1 else
                f"n={results['n']}, T={s['temperature']}, top_p={s['top_p']}")
    sets = {(c["selected"], c["available"]) for c in results["coverage"].values()}
    problems = ("full sets" if all(sel == avail for sel, avail in sets) else
                f"{max(sel for sel, _ in sets)} problems per language")
    dtype, *weights = m["identity"].split(":")[3:]  # store:SHA:strategy:dtype[:weights]
    extra = (f", {dtype}" if dtype != "store-dtype" else "") + \
        (f", {weights[0]} weights" if weights else "")
    return (f"HumanEval pass@{headline_k(results)} "
            f"({results['format']} format, {sampling}, {problems}, max_tokens "
            f"{s['max_tokens']}, seed {s['seed']}{extra})")


def _merge(table: dict, title: str, meta: dict, cells: Iterable[tuple[str, str, dict]]) -> None:
    entry = table.setdefault(title, {**meta, "cells": {}})
    entry.update(meta)
    for row, column, cell in cells:
        entry["cells"].setdefault(row, {})[column] = cell


def record_passk(store_path: Path, results: dict) -> Path:
    """Add a `bench passk --store` run's headline cells to the store's report."""
    k = headline_k(results)
    recorded = _now()
    cells = [(row, lang, {"value": cell[pass_key(k)], "problems": cell["problems"],
                          "command": results["command"], "recorded": recorded})
             for row, by_lang in results["cells"].items() for lang, cell in by_lang.items()
             if cell.get(pass_key(k)) is not None]
    meta = {"metric": pass_key(k), "percent": True,
            "settings": {**results["sampling"], "n": results["n"], "format": results["format"],
                         "identity": results["model"]["identity"]}}
    store = open_store(store_path, verify=False)
    return store.update_report(REPORT, lambda report: _merge(report, passk_title(results), meta,
                                                             cells))


def record_proxy(store: Store, result: dict) -> Path:
    """Add a `bench proxy` run's cells (top-1 agreement and KL with dense) to the report."""
    recorded = _now()
    tasks = result["tasks"]

    def update(report: dict) -> None:
        for metric, percent in (("agreement", True), ("kl", False)):
            cells = []
            for key, cell in result["cells"].items():
                row, lang = key.split("/")
                cells.append((row, lang, {"value": cell[metric], "problems": tasks,
                                          "recorded": recorded}))
            title = (f"proxy: teacher-forced {'top-1 agreement' if percent else 'KL'} "
                     f"with dense ({tasks} tuning tasks per language)")
            _merge(report, title, {"metric": metric, "percent": percent,
                                   "settings": {"tasks": tasks}}, cells)

    return store.update_report(REPORT, update)

