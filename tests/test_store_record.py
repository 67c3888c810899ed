"""What benches record in a store's report/evaluations.json: cells merge across runs, a rerun
replaces its own cells, settings that are not comparable get their own table, concurrent
writers both keep their cells, and `submodel info` prints the tables with retention."""

from __future__ import annotations

import json
import multiprocessing
import shutil

import pytest

from submodel.bench.store_record import REPORT, passk_title, record_passk, record_proxy
from submodel.pruning.info import describe
from submodel.pruning.store import open_store


@pytest.fixture
def store_path(tiny_store, tmp_path):
    """A copy of the session's tiny store without what other tests' benches recorded."""
    path = shutil.copytree(tiny_store, tmp_path / "store")
    (path / "report" / REPORT).unlink(missing_ok=True)
    return path


def results(cells: dict[str, dict[str, float]], *, n: int = 1, temperature: float = 0.0,
            selected: int = 164, dtype: str = "store-dtype", weights: str = "") -> dict:
    """The fields of a passk.json that recording reads."""
    columns = sorted({lang for by_lang in cells.values() for lang in by_lang})
    key = "pass@10" if n >= 10 else "pass@1"
    return {
        "command": "submodel bench passk ...", "format": "completion", "n": n,
        "ks": [1, 10] if n >= 10 else [1], "retention_k": 10 if n >= 10 else 1,
        "sampling": {"temperature": temperature, "top_p": 1.0, "max_tokens": 384, "seed": 0},
        "model": {"identity": f"store:abc:fused:{dtype}" + (f":{weights}" if weights else "")},
        "coverage": {lang: {"selected": selected, "available": 164} for lang in columns},
        "cells": {row: {lang: {key: v, "problems": selected} for lang, v in by_lang.items()}
                  for row, by_lang in cells.items()},
    }


def read(store_path) -> dict:
    return json.loads((store_path / "report" / REPORT).read_text())


def test_runs_merge_and_a_rerun_replaces_its_cells(store_path):
    python = results({"dense": {"python": 0.42}, "python": {"python": 0.20}})
    java = results({"dense": {"java": 0.46}, "java": {"java": 0.15}})
    record_passk(store_path, python)
    record_passk(store_path, java)
    (title, table), = read(store_path).items()
    assert title == passk_title(python) == passk_title(java)
    assert "greedy" in title and "full sets" in title
    assert {r: {c: v["value"] for c, v in cols.items()} for r, cols in table["cells"].items()} \
        == {"dense": {"python": 0.42, "java": 0.46}, "python": {"python": 0.20},
            "java": {"java": 0.15}}
    record_passk(store_path, results({"python": {"python": 0.25}}))
    cells = read(store_path)[title]["cells"]
    assert cells["python"]["python"]["value"] == 0.25 and cells["dense"]["python"]["value"] == 0.42


def test_settings_that_differ_get_their_own_table(store_path):
    greedy = results({"dense": {"python": 0.42}})
    sampled = results({"dense": {"python": 0.8}}, n=10, temperature=0.8, selected=40)
    int8 = results({"dense": {"python": 0.41}}, weights="int8")
    fp32 = results({"dense": {"python": 0.43}}, dtype="float32")
    for r in (greedy, sampled, int8, fp32):
        record_passk(store_path, r)
    titles = set(read(store_path))
    assert titles == {passk_title(r) for r in (greedy, sampled, int8, fp32)} and len(titles) == 4
    assert "float32" in passk_title(fp32) and "store-dtype" not in passk_title(greedy)
    assert "pass@10" in passk_title(sampled) and "40 problems per language" in passk_title(sampled)
    assert "int8 weights" in passk_title(int8)


def _record_many(store_path, language: str) -> None:
    for i in range(15):
        record_passk(store_path, results({f"{language}{i}": {language: i / 100}}))


def test_concurrent_writers_both_keep_their_cells(store_path):
    ctx = multiprocessing.get_context("spawn")
    writers = [ctx.Process(target=_record_many, args=(store_path, lang))
               for lang in ("python", "java")]
    for w in writers:
        w.start()
    for w in writers:
        w.join(300)
    assert [w.exitcode for w in writers] == [0, 0]
    (table,) = read(store_path).values()
    assert len(table["cells"]) == 30


def test_info_shows_the_tables_with_retention(store_path):
    record_passk(store_path, results({"dense": {"python": 0.40, "java": 0.50},
                                      "python": {"python": 0.20, "java": 0.10},
                                      "routed": {"python": 0.19}}))
    record_proxy(open_store(store_path), {"tasks": 8, "cells": {
        "python/python": {"agreement": 0.9, "kl": 0.15}, "java/python": {"agreement": 0.8,
                                                                       "kl": 0.2}}})
    text = describe(open_store(store_path))
    lines = text.splitlines()
    start = lines.index(passk_title(results({"dense": {"python": 0}})))
    header, dense, python, routed, retention = lines[start + 1:start + 6]
    assert header.split() == ["java", "python"]
    assert dense.split() == ["dense", "50.0%", "40.0%"]
    assert python.split() == ["python", "10.0%", "20.0%"]
    assert routed.split() == ["routed", "-", "19.0%"]
    assert retention.split() == ["retention", "-", "50.0%"]
    assert "proxy: teacher-forced top-1 agreement with dense (8 tuning tasks per language)" in text
    assert "0.1500" in text  # the KL table prints numbers, not percentages
