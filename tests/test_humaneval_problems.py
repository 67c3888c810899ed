import json
import shutil

import pytest

from submodel.bench.humaneval.executors import run_samples
from submodel.bench.humaneval.problems import (
    load_jsonl,
    load_problems,
    subset,
    translate_all,
    truncate,
)
from submodel.vocabulary import LANGUAGES


def test_python_has_all_164_with_canonical_solutions():
    problems = load_problems("python")
    assert len(problems) == 164
    assert [p.task_id for p in problems][:2] == ["HumanEval/0", "HumanEval/1"]
    p = problems[0]
    assert p.entry_point == "has_close_elements" and p.canonical_solution
    assert p.tests.rstrip().endswith("check(has_close_elements)")
    assert "\ndef" in p.stop and "\nprint" in p.stop


@pytest.mark.parametrize("language", ["java", "cpp", "javascript"])
def test_most_problems_translate_and_skips_are_explained(language):
    t = translate_all(language)
    assert len(t.problems) + len(t.skipped) == 164
    assert len(t.problems) >= 150  # MultiPL-E keeps 154-161; we skip rather than guess types
    skipped = {s.task_id: s.reason for s in t.skipped}
    assert "HumanEval/137" in skipped  # compare_one mixes int, float and str
    assert "HumanEval/92" in skipped  # any_int: typed floats change the canonical answer
    assert all(reason for reason in skipped.values())
    assert all(p.language == language and p.stop for p in t.problems)


def test_stop_sequences_per_language():
    assert load_problems("cpp")[0].stop == ("\n}",)
    assert load_problems("javascript")[0].stop == ("\n}",)
    assert load_problems("java")[0].stop == ("\n    }\n",)


def test_limit_is_seeded_stable_and_grows_by_adding():
    small = [p.task_id for p in load_problems("java", limit=10, seed=3)]
    assert small == [p.task_id for p in load_problems("java", limit=10, seed=3)]
    assert len(small) == 10 and small == sorted(small, key=lambda t: int(t.split("/")[1]))
    bigger = [p.task_id for p in load_problems("java", limit=30, seed=3)]
    assert set(small) <= set(bigger)
    assert small != [p.task_id for p in load_problems("java", limit=10, seed=4)]
    # the languages draw from one permutation, so they share most of a subset
    py = {p.task_id for p in load_problems("python", limit=30, seed=3)}
    assert len(py & set(bigger)) >= 25


def test_subset_edge_cases():
    problems = load_problems("cpp")
    assert subset(problems, None) == problems
    assert subset(problems, 1000) == problems
    assert subset(problems, 0) == []
    with pytest.raises(ValueError):
        load_problems("cobol")


def test_truncate_at_first_stop_sequence():
    assert truncate("    return 1\n\ndef g():\n    pass", ("\ndef", "\nprint")) == "    return 1\n"
    assert truncate("  return 1;\n}\nfoo();", ("\n}",)) == "  return 1;"
    assert truncate("  return 1;", ("\n}",)) == "  return 1;"
    # a stop that ends the text short of its final newline still counts
    assert truncate("        return 1L;\n    }", ("\n    }\n",)) == "        return 1L;"


def test_program_is_prompt_completion_tests():
    p = load_problems("cpp")[0]
    program = p.program("    return true;\n}\n\nint helper() {}")
    assert program == p.prompt + "    return true;" + p.tests


def test_load_multipl_e_jsonl(tmp_path):
    record = {"name": "HumanEval_0_has_close_elements", "language": "js",
              "prompt": "function has_close_elements(numbers, threshold){\n",
              "tests": "}\nconst assert = require('node:assert');\n",
              "stop_tokens": ["\nfunction ", "\n/*"], "doctests": "", "original": ""}
    path = tmp_path / "humaneval-js.jsonl"
    path.write_text(json.dumps(record) + "\n")
    [p] = load_jsonl(path, "javascript")
    assert p.task_id == "HumanEval/0" and p.entry_point == "has_close_elements"
    assert p.stop == ("\nfunction ", "\n/*")
    assert p.program("  return 1;\n/* more") == record["prompt"] + "  return 1;" + "\n" + \
        record["tests"]
    with pytest.raises(ValueError, match="expected java"):
        load_jsonl(path, "java")


def test_load_humaneval_x_jsonl(tmp_path):
    record = {"task_id": "CPP/3", "prompt": "#include<vector>\nbool below_zero(vector<int> ops){\n",
              "declaration": "bool below_zero(vector<int> ops){\n",
              "canonical_solution": "    return false;\n}\n",
              "test": "#undef NDEBUG\n#include<assert.h>\nint main(){}\n", "example_test": ""}
    path = tmp_path / "humaneval_cpp.jsonl"
    path.write_text(json.dumps(record) + "\n")
    [p] = load_jsonl(path, "cpp")
    assert p.task_id == "HumanEval/3" and p.entry_point == "below_zero"
    # the completion closes the function itself in HumanEval-X: we stop before and close it
    assert p.program(record["canonical_solution"]).count("}") == 2


def test_load_jsonl_rejects_unknown_files(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"foo": 1}\n')
    with pytest.raises(ValueError, match="neither a MultiPL-E nor a HumanEval-X"):
        load_jsonl(path, "cpp")
    with pytest.raises(ValueError, match="cannot read"):
        load_jsonl(tmp_path / "missing.jsonl", "cpp")
    assert set(LANGUAGES) == {"python", "java", "cpp", "javascript"}


@pytest.mark.skipif(shutil.which("javac") is None, reason="javac not installed")
def test_multipl_e_java_runs_with_asserts_and_javatuples(tmp_path):
    """MultiPL-E's Java: main() inside class Problem, `assert` statements, org.javatuples."""
    record = {
        "name": "HumanEval_8_sum_product", "language": "java",
        "prompt": "import java.util.*;\nimport org.javatuples.*;\n\nclass Problem {\n"
                  "    public static Pair<Long, Long> sumProduct(ArrayList<Long> numbers) {\n",
        "tests": "    }\n    public static void main(String[] args) {\n"
                 "    assert(sumProduct((new ArrayList<Long>(Arrays.asList((long)3l, (long)5l))))"
                 ".equals((Pair.with(8l, 15l))));\n    }\n\n}\n",
        "stop_tokens": ["\n    }\n"],
    }
    path = tmp_path / "humaneval-java.jsonl"
    path.write_text(json.dumps(record) + "\n")
    [p] = load_jsonl(path, "java")
    right = ("        long s = 0, m = 1;\n        for (long x : numbers) { s += x; m *= x; }\n"
             "        return Pair.with(s, m);\n    }\n")
    ok, bad = run_samples("java", p, [right, right.replace("m *= x", "m += x")])
    assert ok.passed, ok.detail
    assert bad.status == "failed" and "AssertionError" in bad.detail


def test_chat_format_wraps_the_prompt_and_keeps_the_program():
    from tiny import tiny_tokenizer

    from submodel.bench.humaneval.problems import chat_problem, humaneval, python_problem

    tok = tiny_tokenizer()
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
                         "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}"
                         "<|im_start|>assistant\n{% endif %}")
    plain = python_problem(humaneval()[0])
    chat = chat_problem(plain, tok)
    assert plain.model_input == plain.prompt
    assert chat.model_input.startswith("<|im_start|>user\nComplete the following Python")
    assert chat.model_input.endswith("<|im_start|>assistant\n```python\n" + plain.prompt)
    assert chat.stop == (*plain.stop, "\n```")
    body = "    return 1\n```\nThis function returns one."
    assert chat.program(body) == plain.prompt + "    return 1" + plain.tests
