"""The mask-quality proxy: teacher-forced agreement and KL against dense on tuning tasks."""

from __future__ import annotations

import json

import pytest
import torch
from test_calibration import PY

from submodel.bench import proxy
from submodel.bench.perplexity import apply_mask, prunable_params, restore_dense
from submodel.cli import main
from submodel.pruning.store import open_store
from submodel.pruning.tasks import extract_tasks


def test_dense_scores_perfectly_against_itself_and_a_mask_does_not(tiny_store, tmp_path):
    from submodel.corpora import Document

    store = open_store(tiny_store)
    model, tok = store.load_hf_model(torch.float32), store.load_tokenizer()
    tasks = extract_tasks(Document("shapes.py", PY), "python")
    targets = ["    return width * height\n", "    self.w *= k\n    return self\n"]
    refs = proxy.dense_reference(model, tok, tasks, targets)
    same = proxy.score(model, tok, tasks, targets, refs)
    assert same["tokens"] == sum(len(t.encode()) for t in targets)  # byte tokenizer
    assert same["kl"] == pytest.approx(0.0, abs=1e-6)
    # agreement counts the tokens that are dense's top-1: recompute it by hand
    top1 = sum(int((proxy.distributions(model, tok, t.prompt, g)[0].argmax(-1) ==
                    proxy.distributions(model, tok, t.prompt, g)[1]).sum())
               for t, g in zip(tasks, targets, strict=True))
    assert same["agreement"] == top1 / same["tokens"]
    params = prunable_params(model, store)
    apply_mask(params, store.load_mask("python"))
    masked = proxy.score(model, tok, tasks, targets, refs)
    assert masked["kl"] > 1e-4
    restore_dense(params, store)
    assert proxy.score(model, tok, tasks, targets, refs)["kl"] == pytest.approx(0.0, abs=1e-6)


def test_proxy_command_writes_a_resumable_table(tiny_store, tmp_path, capsys):
    code = tmp_path / "tuning"
    code.mkdir()
    for i in range(3):
        (code / f"m{i}.py").write_text(PY.replace("area", f"area{i}"))
    out = tmp_path / "out"
    args = ["bench", "proxy", "--store", str(tiny_store), "--languages", "python",
            "--submodels", "python,java", "--tasks", "4", "--tuning", f"python={code}",
            "--out", str(out), "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "python/python: agreement" in printed and "java/python: agreement" in printed
    result = json.loads((out / "proxy.json").read_text())
    assert set(result["cells"]) == {"python/python", "java/python"}
    assert result["sets"]["python"]["tasks"] == 4
    for cell in result["cells"].values():
        assert 0 <= cell["agreement"] <= 1 and cell["kl"] > 0 and cell["tokens"] > 0
    assert "| python |" in (out / "proxy.md").read_text()
    targets = next(out.glob("targets-python-*.json"))
    before = targets.stat().st_mtime_ns
    assert main(args) == 0  # resumes: every cell and target is reused
    assert json.loads((out / "proxy.json").read_text())["cells"] == result["cells"]
    assert targets.stat().st_mtime_ns == before


def test_proxy_user_errors_are_one_line(tiny_store, tmp_path, capsys):
    assert main(["bench", "proxy", "--store", str(tiny_store), "--submodels", "go",
                 "--out", str(tmp_path)]) == 2
    assert "no mask go" in capsys.readouterr().err
    assert main(["bench", "proxy", "--store", str(tiny_store), "--languages", "rust",
                 "--out", str(tmp_path)]) == 2
    assert "--tuning rust=PATH" in capsys.readouterr().err
