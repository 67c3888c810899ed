"""`submodel bench recipes`: the comparison table and the proxy-vs-pass@1 rank correlation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from submodel.bench.recipes import RecipesError, parse_run, ranks, spearman
from submodel.cli import main


def test_ranks_share_ties_and_spearman_matches_hand_values():
    assert ranks([10.0, 30.0, 20.0, 20.0]) == [1.0, 4.0, 2.5, 2.5]
    assert spearman([1, 2, 3, 4, 5], [2, 4, 6, 8, 10])["rho"] == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4, 5], [5, 4, 3, 2, 1])["rho"] == pytest.approx(-1.0)
    # d = rank differences (0, 0, 1, -1, 0): rho = 1 - 6 * 2 / (5 * 24) = 0.9
    assert spearman([1, 2, 3, 4, 5], [1, 2, 4, 3, 5])["rho"] == pytest.approx(0.9)
    perfect = spearman(list(range(8)), list(range(8)))
    assert perfect["p"] < 0.01  # 2 of 8! orderings are as extreme
    assert spearman([1, 2, 3, 4], [4, 1, 3, 2])["p"] > 0.3
    assert spearman([1, 2], [1, 2]) is None and spearman([1, 1, 1], [1, 2, 3]) is None


def test_parse_run_names_what_is_wrong():
    run = parse_run("raw=stores/a,proxy=out/p,greedy=out/g")
    assert (run.name, run.store, run.proxy, run.greedy) == ("raw", Path("stores/a"),
                                                           Path("out/p"), Path("out/g"))
    assert parse_run("raw=stores/a").proxy is None
    for bad in ("stores/a", "=stores/a", "raw=", "raw=s,px=out/p", "raw=s,proxy="):
        with pytest.raises(RecipesError):
            parse_run(bad)


def _store(path: Path, kind: str, seconds: float, python_sparsity: float = 0.4) -> Path:
    path.mkdir(parents=True)
    manifest = {"method": "wanda", "sparsity": 0.5,
                "sparsity_overrides": {"python": python_sparsity},
                "score": "wanda", "allocation": {"kind": "uniform"}, "refine": {"kind": "none"},
                "calibration": {"kind": kind, "nsamples": 128, "seqlen": 512},
                "languages": {"python": {"seconds": seconds}, "java": {"seconds": seconds}}}
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def _greedy(path: Path, scores: dict[str, dict[str, float]]) -> Path:
    path.mkdir(parents=True)
    cells = {row: {lang: {"pass@1": v, "problems": 10,
                          "per_problem": {f"t{i}": [int(i < round(10 * v)), 1] for i in range(10)}}
                   for lang, v in by.items()}
             for row, by in scores.items()}
    retention = {"python": {"mask": scores["python"]["python"], "dense": scores["dense"]["python"],
                            "retention": scores["python"]["python"] / scores["dense"]["python"],
                            "best_other_mask": "java", "best_other": scores["java"]["python"],
                            "vs_dense": {"ratio_95": [0.4, 0.8]},
                            "vs_best_other": {"difference_95": [-0.05, 0.1]}}}
    (path / "passk.json").write_text(json.dumps({
        "n": 1, "sampling": {"temperature": 0.0}, "cells": cells, "retention": retention}))
    return path


def _proxy(path: Path, agreement: dict[str, float]) -> Path:
    path.mkdir(parents=True)
    cells = {k: {"agreement": v, "kl": 1 - v} for k, v in agreement.items()}
    (path / "proxy.json").write_text(json.dumps({"cells": cells}))
    return path


def test_recipes_table_and_correlation(tmp_path, capsys):
    runs = []
    for name, kind, base in (("raw", "raw", 0.2), ("selfgen", "selfgen", 0.5)):
        scores = {"dense": {"python": 0.4, "java": 0.3},
                  "python": {"python": base, "java": base - 0.1},
                  "java": {"python": base - 0.05, "java": base + 0.02}}
        store = _store(tmp_path / name, kind, 100.0)
        greedy = _greedy(tmp_path / f"g-{name}", scores)
        proxy = _proxy(tmp_path / f"p-{name}", {f"{r}/{lang}": 0.5 + scores[r][lang]
                                                for r in ("python", "java")
                                                for lang in ("python", "java")})
        runs += ["--run", f"{name}={store},proxy={proxy},greedy={greedy}"]
    out = tmp_path / "out"
    assert main(["bench", "recipes", *runs, "--out", str(out)]) == 0
    result = json.loads((out / "recipes.json").read_text())
    corr = result["correlation"]
    assert corr["agreement"]["cells"] == 8 and corr["agreement"]["rho"] == pytest.approx(1.0)
    assert corr["neg_kl"]["rho"] == pytest.approx(1.0)
    assert result["runs"][1]["cells"]["python/python"] == {
        "pass@1": 0.5, "problems": 10, "agreement": pytest.approx(1.0), "kl": pytest.approx(0.0)}
    # selfgen's own masks against raw's, paired over problems: 5 of 10 solved against 2
    assert "vs_first" not in result["runs"][0]
    for lang in ("python", "java"):
        versus = result["runs"][1]["vs_first"][lang]
        assert versus["problems"] == 10 and versus["difference"] == pytest.approx(0.3)
        low, high = versus["difference_95"]
        assert low >= 0 and high >= 0.5  # both solve the same 2, selfgen 3 more: no draw loses
    md = (out / "recipes.md").read_text()
    assert "selfgen 128x512" in md and "python=0.4" in md and "[40, 80]%" in md
    assert "| selfgen | python | +30.0 |" in md
    assert "rho +1.00 over 8 cells" in capsys.readouterr().out


def test_retention_vs_sparsity_curve_from_runs_at_several_sparsities(tmp_path):
    runs = []
    for sparsity, own in ((0.6, 0.1), (0.3, 0.38), (0.4, 0.3)):
        scores = {"dense": {"python": 0.4}, "python": {"python": own}, "java": {"python": 0.1}}
        store = _store(tmp_path / f"s{sparsity}", "raw", 10.0, python_sparsity=sparsity)
        greedy = _greedy(tmp_path / f"g{sparsity}", scores)
        runs += ["--run", f"sp{sparsity}={store},greedy={greedy}"]
    out = tmp_path / "out"
    assert main(["bench", "recipes", *runs, "--out", str(out)]) == 0
    curve = json.loads((out / "recipes.json").read_text())["sparsity_curve"]
    assert list(curve) == ["python"]  # java's retention was not measured
    assert [(p["sparsity"], p["retention"]) for p in curve["python"]] == [
        (0.3, pytest.approx(0.95)), (0.4, pytest.approx(0.75)), (0.6, pytest.approx(0.25))]
    assert (out / "sparsity.png").stat().st_size > 1000
    assert "0.30 -> 95.0% [40, 80]" in (out / "recipes.md").read_text()
    assert main(["bench", "recipes", *runs[:2], "--out", str(tmp_path / "one")]) == 0
    assert not (tmp_path / "one" / "sparsity.png").exists()  # one sparsity: no curve


def test_recipes_refuses_a_sampled_run_and_missing_files(tmp_path, capsys):
    store = _store(tmp_path / "s", "raw", 1.0)
    g = tmp_path / "g"
    g.mkdir()
    (g / "passk.json").write_text(json.dumps({"n": 10, "sampling": {"temperature": 0.8},
                                                "cells": {}}))
    assert main(["bench", "recipes", "--run", f"a={store},greedy={g}",
                 "--out", str(tmp_path / "o")]) == 2
    assert "not a --greedy run" in capsys.readouterr().err
    assert main(["bench", "recipes", "--run", f"a={tmp_path / 'nope'}",
                 "--out", str(tmp_path / "o")]) == 2
    assert "cannot read" in capsys.readouterr().err
