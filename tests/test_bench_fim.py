"""The fill-in-the-middle bench: spans cut from HumanEval's canonical solutions (the right fill
passes the tests, a wrong one does not), and a run through a served tiny store."""

from __future__ import annotations

import json

import pytest
from serving import serve_store

from submodel.bench import fim
from submodel.bench.humaneval.executors import get_executor
from submodel.bench.humaneval.problems import load_problems
from submodel.cli import main

PROBLEMS = 6
SEED = "3"  # HumanEval/25 (too long for the tiny model's 512 tokens) and /135 (fits)


@pytest.fixture(scope="module")
def spans():
    return [s for p in load_problems("python", PROBLEMS, 0) for s in fim.cut_spans(p, 0)]


def test_spans_are_lines_of_the_solution(spans):
    assert {s.mode for s in spans} == set(fim.MODES)
    for s in spans:
        lines = s.middle.splitlines()
        assert len(lines) == 1 if s.mode == "single" else 2 <= len(lines) <= fim.MULTI_LINES
        assert lines[0].strip()
        assert s.prefix + s.middle + s.suffix == s.problem.prompt + s.problem.canonical_solution
    assert fim.cut_spans(spans[0].problem, 0) == [s for s in spans if s.problem is
                                                   spans[0].problem]


def test_the_cut_span_passes_and_a_wrong_fill_fails(spans):
    run = get_executor("python").run
    for s in spans:
        assert run(s.program(fim.trim(s, s.middle))).passed, (s.problem.task_id, s.mode)
    wrong = [run(s.program(fim.trim(s, "    raise ValueError\n"))).passed for s in spans]
    assert not any(wrong)


def test_trim():
    problem = load_problems("python", 1, 0)[0]
    span = fim.Span(problem, "single", "p", "x = 1\n", "s")
    assert fim.trim(span, "y = 2\nz = 3\n") == "y = 2\n"
    assert fim.trim(span, "y = 2") == "y = 2\n"
    multi = fim.Span(problem, "multi", "def f(xs):\n", "    n = 0\n    for x in xs:\n",
                     "\n        n += x\n    return n\n")
    # the model wrote the middle, went on with the suffix, then left the function
    text = "    n = 0\n    for x in xs:\n        n += x\n    return n\n\n\n# check\nassert f([1])\n"
    assert fim.trim(multi, text) == "    n = 0\n    for x in xs:\n"
    assert fim.trim(multi, "    n = 0\n\ndef g():\n") == "    n = 0\n\n"
    assert fim.trim(multi, "        n += x\n") == "\n"  # nothing before the suffix


def test_bench_fim_end_to_end(editor_store, tmp_path, capsys, monkeypatch):
    args = ["bench", "fim", "--limit", "2", "--seed", SEED, "--submodels", "dense,python",
            "--max-tokens", "8", "--out", str(tmp_path)]
    s = serve_store(editor_store)
    try:
        assert main([*args, "--server", s.target]) == 0
        first = json.loads((tmp_path / "fim.json").read_text())
        # a second run finds every fill in fills.jsonl and asks the server for none of them
        monkeypatch.setattr(fim, "request_for", lambda *a: pytest.fail("asked the server"))
        assert main([*args, "--server", s.target]) == 0
    finally:
        s.stop()
    printed = capsys.readouterr()
    assert "resuming: 8 fills" in printed.err and "wrote" in printed.out
    assert len((tmp_path / "fills.jsonl").read_text().splitlines()) == 8
    data = json.loads((tmp_path / "fim.json").read_text())
    assert data["table"] == first["table"]
    assert set(data["table"]) == {"dense", "python"}
    for row in ("dense", "python"):
        for mode in fim.MODES:
            cell = data["table"][row][mode]
            assert cell["spans"] + cell["too_long"] == 2 and 0 <= cell["passed"] <= cell["spans"]
    assert len(data["spans"]) == 2 * 4
    ran = [s for s in data["spans"] if s["status"] != "too_long"]
    assert {s["task_id"] for s in ran} == {"HumanEval/135"}
    assert all(isinstance(s["passed"], bool) for s in ran)
    assert "| dense |" in (tmp_path / "fim.md").read_text()
