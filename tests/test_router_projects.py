"""The router's pinned projects, their fetching and labelling, the trainer's naive Bayes and the
leave-projects-out bench, on small in-repo fixtures (no network)."""

import io
import random
import tarfile
import zipfile

import numpy as np
import pytest
from test_router import CPP, JAVA, JS, OTHERS

from submodel.bench import router as bench
from submodel.router import fetch, train
from submodel.router.model import ContentModel
from submodel.router.projects import PROJECTS, Project, is_heldout_path, label_of, projects
from submodel.vocabulary import LANGUAGES

PY = ("def mean(values: list[float]) -> float:\n    total = sum(values)\n"
      "    return total / len(values)\n")


def test_projects_are_pinned_and_splits_disjoint():
    keys = [p.key for p in PROJECTS]
    assert len(keys) == len(set(keys))
    for p in PROJECTS:
        assert p.version and not any(c in p.version for c in "^~<>* "), p
        assert p.registry in ("npm", "pypi", "deb") and p.split in ("train", "heldout")
    train_names = {p.name for p in projects("train")}
    heldout_names = {p.name for p in projects("heldout")}
    assert not train_names & heldout_names
    assert len(train_names) >= 40 and len(heldout_names) >= 20
    with pytest.raises(ValueError, match="split"):
        projects("calib")


@pytest.mark.parametrize("path,cpp_headers,label", [
    ("/include/fmt/core.h", True, "cpp"), ("/include/uv.h", False, "c_header"),
    ("/src/a.cc", False, "cpp"), ("/src/App.jsx", False, "javascript"),
    ("/lib/x.mjs", False, "javascript"), ("/types/index.d.ts", False, "typescript"),
    ("/src/view.tsx", False, "typescript"), ("/dist/x.min.js", False, None),
    ("/a/Main.kt", False, "kotlin"), ("/a/Util.cs", False, "csharp"), ("/m/x.go", False, "go"),
    ("/usr/share/bash-completion/completions/git", False, "shell"), ("/a/b.png", False, None),
    ("/pkg/mod.pyi", False, "python"), ("/a/B.java", False, "java"), ("/c/x.c", False, "c"),
])
def test_labels(path, cpp_headers, label):
    assert label_of(path, Project("npm", "x", "1.0.0", "train", cpp_headers)) == label


def _tgz(path, members: dict[str, str]) -> None:
    with tarfile.open(path, "w:gz") as t:
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))


def test_unpack_tarball_and_wheel(tmp_path):
    _tgz(tmp_path / "p.tgz", {"package/index.js": "module.exports = 1;\n"})
    fetch.unpack(tmp_path / "p.tgz", tmp_path / "t")
    assert (tmp_path / "t/package/index.js").read_text() == "module.exports = 1;\n"
    with zipfile.ZipFile(tmp_path / "w-1.0-py3-none-any.whl", "w") as z:
        z.writestr("w/__init__.py", PY)
    fetch.unpack(tmp_path / "w-1.0-py3-none-any.whl", tmp_path / "w")
    assert (tmp_path / "w/w/__init__.py").read_text() == PY


def test_unpack_refuses_unsafe_or_unknown_archives(tmp_path):
    _tgz(tmp_path / "evil.tgz", {"../outside.js": "x"})
    with pytest.raises(fetch.FetchError, match="evil.tgz"):
        fetch.unpack(tmp_path / "evil.tgz", tmp_path / "t")
    assert not (tmp_path / "outside.js").exists()
    with zipfile.ZipFile(tmp_path / "evil.whl", "w") as z:
        z.writestr("../outside.py", "x")
    with pytest.raises(fetch.FetchError, match="unsafe"):
        fetch.unpack(tmp_path / "evil.whl", tmp_path / "w")
    (tmp_path / "junk.tgz").write_bytes(b"not a tarball")
    with pytest.raises(fetch.FetchError, match="cannot unpack"):
        fetch.unpack(tmp_path / "junk.tgz", tmp_path / "j")
    with pytest.raises(fetch.FetchError, match="cannot unpack"):
        fetch.unpack(tmp_path / "x.rar", tmp_path / "r")


def test_unknown_registry_is_a_clear_error(tmp_path):
    with pytest.raises(fetch.FetchError, match="unknown registry"):
        fetch.fetch(Project("cpan", "Moose", "2.0", "train"), tmp_path)


def test_documents_from_a_cached_project(tmp_path):
    """A complete cache entry is read without any download; files are labelled and filtered."""
    project = Project("npm", "@scope/demo", "1.2.3", "heldout", cpp_headers=True)
    files = fetch.project_dir(project, tmp_path) / "files"
    (files / "package/src").mkdir(parents=True)
    (files / "package/bin").mkdir()
    (files / "package/src/index.js").write_text(
        "/*\n * Copyright 2024 Someone. MIT License.\n */\nexport const x = 1;\n")
    (files / "package/src/bundle.min.js").write_text("var a=1;" * 10)
    (files / "package/src/wide.js").write_text("x = [" + "1, " * 300 + "];\n")
    (files / "package/src/addon.h").write_text("namespace demo { int f(); }\n")
    (files / "package/src/types.d.ts").write_text("export declare function f(): number;\n")
    (files / "package/bin/run").write_text("#!/bin/sh\nexec node \"$0.js\" \"$@\"\n")
    (files / "package/logo.png").write_bytes(b"\x89PNG\0\0")
    (files.parent / ".complete").write_text("demo-1.2.3.tgz\n")
    docs = fetch.documents(project, tmp_path)
    assert [(d.label, d.name) for d in docs] == [
        ("cpp", "package/src/addon.h"), ("javascript", "package/src/index.js"),
        ("shell", "package/bin/run"), ("typescript", "package/src/types.d.ts")]
    assert docs[1].text == "export const x = 1;"  # the licence header is dropped
    assert {d.project for d in docs} == {"npm:@scope/demo@1.2.3"}


def test_naive_bayes_prefers_the_class_a_feature_occurs_in():
    # two snippets of class 0 use feature 0, one of class 4 uses feature 1
    cols, vals = np.array([0, 0, 1]), np.ones(3)
    starts, labels = np.array([0, 1, 2, 3]), np.array([0, 0, 4])
    w, b = train.naive_bayes(cols, vals, starts, labels, n_features=2)
    assert w.shape == (2, len(train.CLASSES))
    assert w[0].argmax() == 0 and w[1].argmax() == 4
    assert np.allclose(w.mean(1), 0)
    assert np.allclose(np.exp(b).sum(), 1) and b[0] > b[4]


def test_draw_snippets_mixes_sources_by_size(monkeypatch):
    monkeypatch.setattr(train, "PER_LANGUAGE", 50)
    monkeypatch.setattr(train, "OTHER_SNIPPETS", 70)
    ours = {lang: [(f"{lang}-a", [PY * 40]), (f"{lang}-b", [PY])] for lang in LANGUAGES}
    pairs, shares, kinds = train.draw_snippets(random.Random(0), ours, {"go": ["package x\n" * 5]})
    assert kinds == {"go": 1}
    assert shares["python"]["python-a"] > shares["python"]["python-b"] > 0
    assert abs(sum(shares["java"].values()) - 1) < 1e-3
    assert len(pairs) == len(LANGUAGES) * 50 + 70
    go = train.CLASSES.index("other:go")  # "other" is learned as groups of look-alike kinds
    assert [c for _, c in pairs].count(go) == 70
    assert train.other_class("c_header") == "other:c" and train.other_class("yaml") == "other:data"


def test_bench_on_fixture_projects(monkeypatch):
    """The bench's rows, confusion matrix and overall numbers, on fixture "projects"."""
    fixtures = {"python": {"p1": [PY * 30]}, "java": {"j1": [JAVA * 20]},
                "cpp": {"c1": [CPP * 20]}, "javascript": {"s1": [JS * 20]},
                "other": {k: [v * 5] for k, v in OTHERS.items()}}
    monkeypatch.setattr(bench, "heldout_sources", lambda: fixtures)
    result = bench.run(samples=20, seed=0, threshold=0.5, humaneval=False)
    assert [r["class"] for r in result["classes"]] == [*LANGUAGES, "other"]
    for row in result["classes"]:
        for bucket in bench.BUCKETS:
            assert sum(row[f"{bucket} routed"].values()) == 20
            want = "dense" if row["class"] == "other" else row["class"]
            assert row[bucket] == row[f"{bucket} routed"][want] / 20
    assert result["all"]["5+"] >= 0.9  # whole-function windows of clear-cut fixtures
    text = bench.markdown(result)
    assert "Confusion, 5+ lines" in text and "| **all** |" in text
    assert result["latency"]["all"]["calls"] == 2 * 5 * 20


def test_model_kind_is_read():
    assert ContentModel.load().kind in train.KINDS


def test_files_of_heldout_projects_on_this_machine_are_recognised():
    """npm's own tree bundles semver (held out): the trainer must not read it."""
    assert is_heldout_path("/usr/lib/node_modules/npm/node_modules/semver/functions/gt.js")
    assert is_heldout_path("lib/python3.11/site-packages/requests/api.py")
    assert not is_heldout_path("/usr/lib/node_modules/npm/lib/commands/install.js")
    assert not is_heldout_path("lib/python3.11/site-packages/rich/console.py")  # a train project


def test_averaged_fits_give_the_mean_of_their_logits():
    """Averaging weights over fits (missing features count 0) is averaging their logits."""
    k = len(train.CLASSES)
    rng = np.random.default_rng(0)
    fits = [(["a", "b"], rng.normal(size=(2, k)), rng.normal(size=k)),
            (["b", "c"], rng.normal(size=(2, k)), rng.normal(size=k))]
    names, w, b = train.average(fits)
    assert names == ["a", "b", "c"]
    x = {"a": 1.0, "b": 2.0, "c": 0.5}  # feature values of some text

    def logits(fit_names, fit_w, fit_b):
        return fit_b + sum(x[n] * fit_w[i] for i, n in enumerate(fit_names))

    assert np.allclose(logits(names, w, b), (logits(*fits[0]) + logits(*fits[1])) / 2)


def test_train_averages_a_bag_of_fits_into_one_model(monkeypatch):
    """train() end to end on fixture sources: two draws, one set of kept words, one model that
    tells the fixtures' languages apart."""
    ours = {"python": [("p", [PY * 30])], "java": [("j", [JAVA * 20])],
            "cpp": [("c", [CPP * 20])], "javascript": [("s", [JS * 20])]}
    others = {k: [v * 5] for k, v in OTHERS.items()}
    monkeypatch.setattr(train, "gather", lambda overrides, use_default: (ours, others))
    monkeypatch.setattr(train, "PER_LANGUAGE", 60)
    monkeypatch.setattr(train, "OTHER_SNIPPETS", 90)
    monkeypatch.setattr(train, "MIN_DF", 1)
    monkeypatch.setattr(train, "EPOCHS", 3)
    model = train.train({}, seed=0, bag=2)["logreg"]
    assert model["trained_on"]["draws"] == 2
    detector = ContentModel.from_dict(model)
    for lang, text in (("python", PY), ("java", JAVA), ("cpp", CPP), ("javascript", JS)):
        assert detector.labels[int(detector.probabilities(text * 2).argmax())] == lang
    assert train.train({}, seed=0, bag=2)["logreg"] == model  # deterministic
