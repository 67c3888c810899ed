import json
import os
import random
import subprocess
import sys
import time

import numpy as np
import pytest

from submodel import corpora
from submodel.cli import main as cli_main
from submodel.router import Detection, Router, UnknownLanguage, detect
from submodel.router import normalize_language as norm
from submodel.router.features import code_lines, features, tokenize
from submodel.router.languages import language_of_filename
from submodel.router.model import MODEL_PATH, ContentModel
from submodel.router.snippets import SnippetSampler
from submodel.vocabulary import LANGUAGES, OTHER

PY = "def mean(values):\n    total = sum(values)\n    return total / len(values)\n"
JAVA = ("public class Greeter {\n    private final String name;\n\n"
        "    public Greeter(String name) {\n        this.name = name;\n    }\n}\n")
CPP = ("#include <vector>\n\nint sum(const std::vector<int>& v) {\n    int s = 0;\n"
       "    for (auto x : v) s += x;\n    return s;\n}\n")
JS = ("const fs = require('fs');\n\nfunction readJson(path) {\n"
      "  return JSON.parse(fs.readFileSync(path, 'utf8'));\n}\nmodule.exports = { readJson };\n")

# Languages and formats we do not serve, written for this test (not from any training file).
OTHERS = {
    "c": """#include <stdio.h>
#include <stdlib.h>

struct node { int value; struct node *next; };

static struct node *push(struct node *head, int value)
{
    struct node *n = malloc(sizeof *n);
    if (n == NULL) { perror("malloc"); exit(EXIT_FAILURE); }
    n->value = value;
    n->next = head;
    return n;
}
""",
    "go": """package main

import (
\t"fmt"
\t"strings"
)

func shout(words []string) string {
\tvar b strings.Builder
\tfor _, w := range words {
\t\tb.WriteString(strings.ToUpper(w))
\t}
\treturn b.String()
}

func main() { fmt.Println(shout([]string{"a", "b"})) }
""",
    "rust": """use std::collections::HashMap;

fn count_words(text: &str) -> HashMap<&str, usize> {
    let mut counts = HashMap::new();
    for word in text.split_whitespace() {
        *counts.entry(word).or_insert(0) += 1;
    }
    counts
}

impl Default for Config {
    fn default() -> Self { Config { verbose: false } }
}
""",
    "typescript": """interface User {
  id: number;
  name: string;
  email?: string;
}

export function greet(user: User): string {
  const label: string = user.email ?? "no email";
  return `${user.name} <${label}>`;
}

type Handler = (event: MouseEvent) => void;
""",
    "shell": """#!/bin/sh
set -eu
for f in "$@"; do
    if [ -f "$f" ]; then
        echo "compressing $f"
        gzip -9 "$f"
    fi
done
cd "$(dirname "$0")" && ls -la | grep -v '^total'
""",
    "sql": """SELECT u.id, u.name, COUNT(o.id) AS orders
FROM users u
LEFT JOIN orders o ON o.user_id = u.id
WHERE u.created_at > '2023-01-01'
GROUP BY u.id, u.name
HAVING COUNT(o.id) > 3
ORDER BY orders DESC;
""",
    "json": """{
  "name": "example",
  "version": "1.2.3",
  "dependencies": {"left-pad": "^1.3.0"},
  "scripts": {"test": "jest", "build": "tsc -p ."},
  "private": true
}
""",
    "yaml": """name: ci
on:
  push:
    branches: [main]
jobs:
  test:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - run: make test
""",
    "markdown": """# Installing

Download the archive and unpack it somewhere on your `PATH`.

## Options

* `--verbose` prints every step
* `--dry-run` shows what would change

See the [manual](https://example.org/manual) for details.
""",
    "prose": """The committee met on Tuesday to review the proposal. Most members agreed
that the budget was too small for the work described, and asked the authors
to return next month with a revised plan and a clearer schedule.
""",
}


# --- names and file names ---------------------------------------------------------------------

@pytest.mark.parametrize("alias,lang", [
    ("py", "python"), ("Python3", "python"), (" python ", "python"), (".py", "python"),
    ("c++", "cpp"), ("CPP", "cpp"), ("cxx", "cpp"), ("cc", "cpp"), ("hpp", "cpp"), ("h++", "cpp"),
    ("js", "javascript"), ("JavaScript", "javascript"), ("node", "javascript"),
    ("mjs", "javascript"), ("cjs", "javascript"), ("java", "java"), ("dense", "dense")])
def test_aliases(alias, lang):
    assert norm(alias) == lang


@pytest.mark.parametrize("name", ["rust", "go", "c", "typescript", "", "pythonn", "c#"])
def test_unknown_names(name):
    assert norm(name) is None


@pytest.mark.parametrize("filename,lang", [
    ("a.py", "python"), ("pkg/mod.pyi", "python"), ("Main.java", "java"), ("x.cc", "cpp"),
    ("include/x.hpp", "cpp"), ("old.C", "cpp"), ("a.mjs", "javascript"), ("App.jsx", "javascript"),
    ("C:\\src\\a.cpp", "cpp"), ("lib.rs", OTHER), ("main.go", OTHER), ("app.ts", OTHER),
    ("README.md", OTHER), ("Makefile", OTHER), ("x.c", OTHER), ("config.yaml", OTHER),
    ("a.h", None), ("notes.txt", None), ("file.unknownext", None), ("noext", None)])
def test_filename_mapping(filename, lang):
    assert language_of_filename(filename) == lang


# --- precedence and fallback --------------------------------------------------------------------

def test_hint_beats_filename_beats_content():
    assert detect(PY, filename="Main.java", hint="c++") == Detection("cpp", 1.0, "hint")
    assert detect(PY, filename="Main.java") == Detection("java", 1.0, "filename")
    d = detect(PY)
    assert (d.language, d.source) == ("python", "content") and 0.5 <= d.confidence <= 1.0


def test_empty_hint_and_filename_count_as_absent():
    assert detect(JAVA, filename="", hint="").source == "content"
    assert detect(JAVA, filename="  ", hint=" ").language == "java"


def test_other_language_filename_goes_dense_whatever_the_content():
    assert detect(PY, filename="src/lib.rs") == Detection("dense", 1.0, "filename")


def test_ambiguous_filename_falls_through_to_content():
    d = detect(CPP, filename="util.h")
    assert (d.language, d.source) == ("cpp", "content")


def test_unknown_or_unserved_hint_raises():
    with pytest.raises(UnknownLanguage, match="rust"):
        detect(PY, hint="rust")
    assert issubclass(UnknownLanguage, ValueError)
    router = Router(["python"])
    with pytest.raises(UnknownLanguage, match="not served"):
        router.detect(PY, hint="java")
    assert router.detect(PY, hint="dense") == Detection("dense", 1.0, "hint")


def test_unserved_languages_go_dense():
    router = Router(["py", "java"])
    assert router.languages == ("python", "java")
    d = router.detect(CPP)
    assert d.language == "dense" and d.source == "fallback" and d.confidence > 0.5
    assert router.detect(PY, filename="a.cpp") == Detection("dense", 1.0, "filename")


def test_threshold_fallback():
    d = Router(threshold=0.5).detect("x = 1")
    assert d.confidence < 0.999
    high = Router(threshold=0.999).detect("x = 1")
    assert high == Detection("dense", d.confidence, "fallback")
    assert Router(threshold=0.0).detect("x = 1").language in LANGUAGES + ("dense",)
    assert detect("   \n\t") == Detection("dense", 0.0, "fallback")


def test_a_language_without_a_content_class_is_routed_by_hint_and_filename():
    router = Router(["python", "go"])
    assert router.languages == ("python", "go")
    assert router.detect("x", hint="go") == Detection("go", 1.0, "hint")
    assert router.detect("x", hint=" Go ") == Detection("go", 1.0, "hint")
    assert router.detect("package main", filename="cmd/main.go") == Detection("go", 1.0,
                                                                             "filename")
    assert router.detect(PY, filename="a.rs") == Detection("dense", 1.0, "filename")
    assert router.detect("package main\n\nfunc main() {}\n").language == "dense"
    assert router.serving(["go"]).detect(PY, hint="go").language == "go"
    with pytest.raises(UnknownLanguage, match="not served"):
        router.serving(["go"]).detect(PY, hint="python")


def test_bad_router_arguments():
    with pytest.raises(UnknownLanguage):
        Router(["python", "no such language"])
    with pytest.raises(UnknownLanguage):
        Router(["dense"])
    with pytest.raises(ValueError, match="threshold"):
        Router(threshold=1.5)


# --- content detection --------------------------------------------------------------------------

@pytest.mark.parametrize("text,lang",
                         [(PY, "python"), (JAVA, "java"), (CPP, "cpp"), (JS, "javascript")])
def test_content_examples(text, lang):
    d = detect(text)
    assert (d.language, d.source) == (lang, "content") and d.confidence > 0.9


@pytest.mark.parametrize("kind", sorted(OTHERS))
def test_other_languages_are_not_claimed(kind):
    d = detect(OTHERS[kind])
    assert d.language == "dense" and d.source == "fallback", (kind, d)


def test_strings_and_comments_are_prose():
    """Words in comments, docstrings and long strings do not count; tags and short strings do."""
    lines = tokenize('x = "def class import public"  # static void\n/**\n * @param y\n */')
    assert lines == [["x", "=", '"s', "#c"], ["/*c"], ["*c", "@param"], ["*c"]]
    assert tokenize("'use strict'") == [["'s=use strict"]]
    assert code_lines('"""\nDoc.\n"""\nx = 1\n// c\n') == [False, False, False, True, False]


def test_snippet_starting_inside_a_docstring_or_template():
    assert tokenize('  end of doc.\n  """\n  return x') == [['"""c'], ['"""c'], ["return", "x"]]
    assert tokenize("  more text\n  `,\n  foo()") == [["`c"], ["`c", ","], ["foo", "(", ")"]]


def test_deterministic_across_instances_and_processes():
    texts = [PY, JAVA, CPP, JS, *OTHERS.values()]
    a = [Router().detect(t) for t in texts]
    assert a == [Router().detect(t) for t in texts]
    code = ("import json, sys; from submodel.router import detect; "
            "print(json.dumps([detect(t).__dict__ for t in json.load(sys.stdin)]))")
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(texts), text=True,
                         capture_output=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "12345"}).stdout
    assert [Detection(**d) for d in json.loads(out)] == a


def test_speed():
    router = Router()
    texts = [(PY * 3), JAVA, CPP, JS] * 50
    times = []
    for text in texts:
        t0 = time.perf_counter()
        router.detect(text)
        times.append(time.perf_counter() - t0)
    assert np.median(times) < 0.005  # measured ~0.1 ms; generous for a loaded CI machine


def test_probabilities_sum_the_groups_of_other():
    """"other" is learned as groups (C, Go...); the router reports their sum as "other"."""
    router = Router()
    for text in (JAVA, OTHERS["go"], OTHERS["c"]):
        probs = router.probabilities(text)
        assert list(probs) == [*LANGUAGES, "other"]
        assert abs(sum(probs.values()) - 1) < 1e-9
    assert max(probs, key=probs.get) == "other"


def test_indentation_is_a_feature():
    """Tabs, 2 or 4 spaces and the step between lines: house styles that differ by language."""
    feats = features("func f() {\n\treturn 1\n}\n  x = 1\n    y", frozenset(), {})
    assert [f for f in feats if f.startswith(("ind:", "dind:"))] == [
        "ind:0", "ind:tab", "dind:+1", "ind:0", "dind:-1", "ind:2", "dind:+2", "ind:4", "dind:+2"]


def test_model_file_is_small_and_well_formed():
    assert MODEL_PATH.stat().st_size < 1_500_000  # "well under a few MB"
    model = ContentModel.load()
    assert model.classes[:len(LANGUAGES)] == LANGUAGES
    assert all(c.startswith("other:") for c in model.classes[len(LANGUAGES):])
    assert model.labels == (*LANGUAGES, *["other"] * (len(model.classes) - len(LANGUAGES)))
    assert model.weights.shape == (len(model.index), len(model.classes))
    with pytest.raises(ValueError, match="format"):
        ContentModel.from_dict({"format": 0})


def _heldout_texts(lang: str, limit: int = 60) -> list[str]:
    try:
        docs = corpora.documents(corpora.find_source(lang), "heldout")
    except corpora.CorpusError as e:
        pytest.skip(str(e))
    return [d.text for d in docs[:limit]]


@pytest.mark.parametrize("lang", LANGUAGES)
def test_heldout_accuracy(lang):
    """5-15 line windows (with a line of code) of files the trainer never saw."""
    sampler = SnippetSampler(_heldout_texts(lang), random.Random(0), code_only=True)
    rng = random.Random(1)
    routed = [detect(sampler.draw(rng.randint(5, 15))).language for _ in range(200)]
    assert routed.count(lang) / len(routed) >= 0.9, {r: routed.count(r) for r in set(routed)}


# --- CLI ----------------------------------------------------------------------------------------

def test_cli_route(tmp_path, capsys, monkeypatch):
    f = tmp_path / "snippet.txt"
    f.write_text(JAVA)
    assert cli_main(["route", str(f)]) == 0
    assert capsys.readouterr().out.split("\t")[::2] == ["java", "content\n"]
    assert cli_main(["route", str(f), "--filename", "x.py", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["language"], out["source"]) == ("python", "filename")
    assert max(out["content_probabilities"], key=out["content_probabilities"].get) == "java"
    monkeypatch.setattr(sys, "stdin", type("In", (), {"buffer": __import__("io").BytesIO(b"x")}))
    assert cli_main(["route", "-", "--hint", "node"]) == 0
    assert capsys.readouterr().out.startswith("javascript\t1.000\thint")


@pytest.mark.parametrize("argv,message", [
    (["route", "/nonexistent/file.py"], "cannot read"),
    (["route", "-", "--hint", "rust"], "unknown language"),
    (["route", "-", "--threshold", "7"], "threshold"),
])
def test_cli_errors(argv, message, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", type("In", (), {"buffer": __import__("io").BytesIO(b"x")}))
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
