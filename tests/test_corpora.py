import json
import subprocess
import sys
import zipfile

import pytest
import torch

from submodel import corpora
from submodel.corpora import CorpusError, Document, sources
from submodel.corpora.windows import sample_windows

CODE = "def f(x):\n    return x + 1\n\n" * 20  # ~500 non-space characters of plain code


class ByteTokenizer:
    """One token per UTF-8 byte: deterministic, no files."""

    def encode(self, text, add_special_tokens=True):
        return list(text.encode())


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_parse_calib_flags():
    assert corpora.parse_calib_flags(["C++=/src/app", "js=a=b.jsonl", "python=x"]) == {
        "cpp": "/src/app", "javascript": "a=b.jsonl", "python": "x"}
    for bad in (["cpp"], ["cpp="], ["=x"], ["cpp=a", "c++=b"], ["c p=x"]):
        with pytest.raises(CorpusError, match="--calib"):
            corpora.parse_calib_flags(bad)


def test_directory_override_takes_files_of_the_language(tmp_path):
    write(tmp_path / "a.py", CODE)
    write(tmp_path / "sub" / "b.py", CODE)
    write(tmp_path / "notes.txt", CODE)
    source = corpora.find_source("python", str(tmp_path))
    assert source.names == ("a.py", "sub/b.py")
    assert [d.name for d in corpora.documents(source)] == ["a.py", "sub/b.py"]


def test_glob_override(tmp_path):
    write(tmp_path / "x" / "one.cc", CODE)
    write(tmp_path / "x" / "deep" / "two.cc", CODE)
    write(tmp_path / "x" / "three.cpp", CODE)
    source = corpora.find_source("cpp", f"{tmp_path}/x/**/*.cc")
    assert source.names == ("deep/two.cc", "one.cc")
    assert {d.text for d in corpora.documents(source)} == {CODE}


def test_jsonl_override_and_bad_line(tmp_path):
    rows = [{"text": f"# file {i}\n" + CODE} for i in range(30)] + [{"text": "tiny"}]
    path = write(tmp_path / "code.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    source = corpora.find_source("rust", str(path))  # any language takes a JSONL
    docs = corpora.documents(source, "calib") + corpora.documents(source, "heldout")
    assert sorted(d.text for d in docs) == sorted(r["text"] for r in rows[:30])
    write(path, json.dumps({"text": CODE}) + "\n" + json.dumps({"code": CODE}) + "\n")
    with pytest.raises(CorpusError, match="line 2"):
        corpora.documents(corpora.find_source("python", str(path)))


def test_zip_override(tmp_path):
    path = tmp_path / "src.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("java.base/java/util/A.java", "class A {\n" + CODE + "}\n")
        z.writestr("java.base/java/util/B.txt", CODE)
    source = corpora.find_source("java", str(path))
    assert source.kind == "zip" and source.names == ("java.base/java/util/A.java",)
    assert [d.name for d in corpora.documents(source)] == ["java.base/java/util/A.java"]


def test_override_errors_name_the_flag(tmp_path):
    with pytest.raises(CorpusError, match="--calib python=.*no such file"):
        corpora.find_source("python", str(tmp_path / "missing"))
    with pytest.raises(CorpusError, match="--calib cpp=.*no .cpp"):
        corpora.find_source("cpp", str(tmp_path))
    with pytest.raises(CorpusError, match="matches no files"):
        corpora.find_source("cpp", f"{tmp_path}/*.cpp")
    with pytest.raises(CorpusError, match="glob"):
        corpora.find_source("klingon", str(tmp_path))


def test_missing_default_source_names_language_and_flag(monkeypatch):
    monkeypatch.setattr(sources, "_cpp_source", lambda: None)
    with pytest.raises(CorpusError) as e:
        corpora.find_source("cpp")
    assert str(e.value) == ("no C++ source found: install Debian 'libboost-doc wx3.2-examples' "
                            "or pass --calib cpp=PATH")
    with pytest.raises(CorpusError, match=r"^no default rust source: pass --calib rust=PATH$"):
        corpora.find_source("rust")


def test_python_default_is_the_stdlib_without_tests_or_site_packages():
    source = corpora.find_source("python")
    assert "os.py" in source.names and "json/decoder.py" in source.names
    assert not any(n.startswith(("site-packages/", "test/")) for n in source.names)


def test_split_is_disjoint_deterministic_and_about_ten_percent(tmp_path):
    for i in range(300):
        write(tmp_path / f"m{i}.py", f"# module {i}\n" + CODE)
    source = corpora.find_source("python", str(tmp_path))
    calib = {d.name for d in corpora.documents(source, "calib")}
    held = {d.name for d in corpora.documents(source, "heldout")}
    assert not calib & held and len(calib | held) == 300
    assert 10 <= len(held) <= 60
    again = corpora.find_source("python", str(tmp_path))
    assert {d.name for d in corpora.documents(again, "heldout")} == held
    with pytest.raises(ValueError):
        corpora.documents(source, "test")


def test_a_small_source_is_all_calibration(tmp_path):
    for i in range(9):
        write(tmp_path / f"m{i}.py", CODE)
    source = corpora.find_source("python", str(tmp_path))
    assert len(corpora.documents(source, "calib")) == 9
    with pytest.raises(CorpusError, match="no usable heldout files for python"):
        corpora.documents(source, "heldout")


def test_license_headers_are_stripped_other_comments_kept():
    py = ("#!/usr/bin/env python3\n# Copyright 2020 ACME\n# Licensed under the MIT License\n\n"
          '"""Module docstring."""\nimport os\n')
    assert corpora.strip_license_header(py, "python") == '"""Module docstring."""\nimport os\n'
    java = ("/*\n * Copyright (c) 1997, Oracle.\n * GNU General Public License\n */\n\n"
            "package java.util;\n\n/** The list. */\nclass L {}\n")
    assert corpora.strip_license_header(java, "java") == (
        "package java.util;\n\n/** The list. */\nclass L {}\n")
    cpp = ("// Copyright Joe 2010.\n// Distributed under the Boost Software License\n\n"
           "// Demo of a queue.\n#include <queue>\nint main() {}\n")
    assert corpora.strip_license_header(cpp, "cpp") == (
        "// Demo of a queue.\n#include <queue>\nint main() {}\n")
    plain = "// Parses flags.\n#include <string>\n"
    assert corpora.strip_license_header(plain, "cpp") == plain
    assert corpora.strip_license_header("# helper\nx = 1\n", "python") == "# helper\nx = 1\n"


def test_minified_generated_and_near_empty_files_are_skipped(tmp_path):
    js = "function add(a, b) {\n  return a + b;\n}\n" * 20
    write(tmp_path / "ok.js", js)
    write(tmp_path / "lib.min.js", js)
    write(tmp_path / "bundle.js", "var a=1;" * 500 + "\n" + js)  # one 4000-character line
    write(tmp_path / "gen.js", "// @generated by protoc\n" + js)
    write(tmp_path / "empty.js", "module.exports = {};\n")
    write(tmp_path / "licence_only.js", "/* Copyright X. MIT License. */\n" + "\n" * 50 + "x;\n")
    source = corpora.find_source("javascript", str(tmp_path))
    assert [d.name for d in corpora.documents(source)] == ["ok.js"]


def long_docs():
    return [Document(f"d{i}", f"// doc {i}\n" + CODE * (i + 1)) for i in range(5)]


def test_windows_shape_determinism_and_seed_sensitivity():
    tok = ByteTokenizer()
    a = sample_windows(tok, long_docs(), nsamples=6, seqlen=64, seed=0)
    b = sample_windows(tok, long_docs(), nsamples=6, seqlen=64, seed=0)
    c = sample_windows(tok, long_docs(), nsamples=6, seqlen=64, seed=1)
    assert a.shape == (6, 64) and a.dtype == torch.long
    assert torch.equal(a, b) and not torch.equal(a, c)
    corpus = "".join(d.text for d in long_docs())
    for row in a:  # slices of documents, joined by a blank line where one runs out
        pieces = bytes(row.tolist()).decode().split("\n\n\n\n")
        assert all(p in corpus for p in pieces)


def test_short_documents_are_concatenated():
    docs = [Document(f"s{i}", f"int v{i} = {i};\n") for i in range(10)]
    w = sample_windows(ByteTokenizer(), docs, nsamples=4, seqlen=100, seed=3)
    assert w.shape == (4, 100)
    assert all(b"\n\n" in bytes(row.tolist()) for row in w)


def test_whitespace_windows_are_skipped():
    docs = [Document("ws", "x" + " \n" * 5000 + "y"), Document("code", CODE * 10)]
    w = sample_windows(ByteTokenizer(), docs, nsamples=8, seqlen=32, seed=0)
    for row in w:
        text = bytes(row.tolist()).decode()
        assert len(text.split()) > 0 and len("".join(text.split())) >= 0.3 * 32
    with pytest.raises(CorpusError, match="whitespace"):
        sample_windows(ByteTokenizer(), docs[:1], nsamples=2, seqlen=32, seed=0)


def test_windows_with_a_hugging_face_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    bpe = Tokenizer(models.BPE({ch: i for i, ch in enumerate(sorted(alphabet))}, []))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>")
    w = sample_windows(tok, long_docs(), nsamples=3, seqlen=40, seed=0)
    assert w.shape == (3, 40)
    assert tok.decode(w[0].tolist()) in "".join(d.text for d in long_docs())


def test_router_and_corpora_import_without_torch():
    """The router (trainer included) reads corpora but never needs torch: only the calibration
    windows do, and they live in submodel.corpora.windows."""
    code = ("import sys, submodel.router, submodel.router.train, submodel.router.fetch, "
            "submodel.corpora; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
