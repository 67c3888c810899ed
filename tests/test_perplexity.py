"""The perplexity bench on the tiny store: a complete, reproducible, resumable matrix."""

import json
import math

import pytest
import torch

from submodel import corpora
from submodel.bench import perplexity
from submodel.cli import main
from submodel.corpora.windows import sample_windows
from submodel.pruning.store import open_store

NSAMPLES, SEQLEN, BATCH = 4, 64, 2


def bench(store, out, **kw):
    return perplexity.run(store, nsamples=NSAMPLES, seqlen=SEQLEN, out=out, batch_size=BATCH,
                          progress=False, **kw)


@pytest.fixture(scope="module")
def result(tiny_store, tmp_path_factory):
    return bench(tiny_store, tmp_path_factory.mktemp("ppl") / "ppl.json")


def test_matrix_has_every_cell(result, tiny_store):
    langs = open_store(tiny_store).languages
    assert result["rows"] == ["dense", *langs] and result["columns"] == langs
    for row in result["rows"]:
        for col in langs:
            cell = result["cells"][row][col]
            assert math.isfinite(cell["ppl"]) and cell["ppl"] > 1
            assert cell["ppl"] == pytest.approx(math.exp(cell["nll"]))
            assert cell["tokens"] == NSAMPLES * (SEQLEN - 1)  # first token of a window unscored
    assert result["dense_probe"]["before"] == result["dense_probe"]["after"]


def test_recomputed_from_scratch_is_identical(result, tiny_store, tmp_path):
    out = tmp_path / "r"
    assert main(["bench", "perplexity", str(tiny_store), "--nsamples", str(NSAMPLES),
                 "--seqlen", str(SEQLEN), "--batch-size", str(BATCH), "--out", str(out),
                 "--quiet"]) == 0
    again = json.loads((out / "perplexity.json").read_text())
    for row in result["rows"]:  # dense first, then every mask: bit-identical NLLs
        for col in result["columns"]:
            assert again["cells"][row][col]["nll"] == result["cells"][row][col]["nll"]
    md = (out / "perplexity.md").read_text()
    assert "| dense |" in md and "| python mask |" in md and "Own mask best" in md
    bold_cells = sum(line.count("**") // 2 for line in md.splitlines() if line.startswith("| "))
    assert bold_cells == len(again["columns"])  # the best mask of each column


def test_each_mask_changes_perplexity_differently(result):
    cells = result["cells"]
    for col in result["columns"]:
        dense = cells["dense"][col]["nll"]
        masked = [cells[row][col]["nll"] for row in result["rows"][1:]]
        assert all(m != dense for m in masked)
        assert len(set(masked)) == len(masked)


def test_resume_skips_done_cells(tiny_store, tmp_path, monkeypatch):
    out = tmp_path / "ppl.json"
    real = perplexity.measure_cell
    calls = []

    def interrupted(*args, **kw):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(perplexity, "measure_cell", interrupted)
    with pytest.raises(KeyboardInterrupt):
        bench(tiny_store, out)
    saved = json.loads(out.read_text())["cells"]
    assert sum(len(v) for v in saved.values()) == 3

    def counted(*args, **kw):
        calls.append(1)
        return real(*args, **kw)

    calls.clear()
    monkeypatch.setattr(perplexity, "measure_cell", counted)
    done = bench(tiny_store, out)
    n_cells = len(done["rows"]) * len(done["columns"])
    assert len(calls) == n_cells - 3
    assert all(done["cells"][r][c] == saved[r][c] for r in saved for c in saved[r])
    calls.clear()
    bench(tiny_store, out)  # everything done: nothing measured, model not even loaded
    assert calls == []
    bench(tiny_store, out, languages=["python"])  # another recipe: old cells do not apply
    assert len(calls) == 2


def test_nll_matches_transformers_loss(tiny_store):
    store = open_store(tiny_store)
    model = store.load_hf_model(store.dtype)
    source = corpora.find_source("java")
    ids = sample_windows(store.load_tokenizer(), corpora.documents(source, "heldout"),
                                 3, SEQLEN, 1234)
    with torch.inference_mode():
        total, tokens = perplexity.nll_sum(model, ids)
        reference = model(input_ids=ids, labels=ids).loss.item()
    assert tokens == 3 * (SEQLEN - 1)
    assert total / tokens == pytest.approx(reference, rel=1e-5)


def test_failed_restore_is_caught(tiny_store, tmp_path, monkeypatch):
    monkeypatch.setattr(perplexity, "restore_dense", lambda params, store: None)
    with pytest.raises(perplexity.BenchError, match="not restored"):
        bench(tiny_store, tmp_path / "ppl.json", languages=["cpp"])


def test_cli_bad_language_is_one_line(tiny_store, tmp_path, capsys):
    code = main(["bench", "perplexity", str(tiny_store), "--languages", "rust", "--out",
                 str(tmp_path / "p"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no mask for rust" in err
