"""Code-task prompts cut out of real source files: a documented function's signature and
docstring (doc comment), the way a HumanEval-style task is posed, without its body.

They serve two jobs: task-formatted calibration (prompt + the dense model's own body, see
`calibration.py`) and the proxy's tuning set (`bench/proxy.py`), which takes them from sources
disjoint from calibration. Python functions are found with `ast`; Java, C++ and JavaScript by a
comment (`/* ... */` or a run of `//` lines) directly above a signature that opens a brace.
"""

from __future__ import annotations

import ast
import random
import re
import textwrap
from dataclasses import dataclass

from submodel.corpora import Document

MIN_DOC_CHARS = 40  # shorter docstrings say too little to pose a task
MAX_PROMPT_CHARS = 1500
MIN_BODY_LINES = 2
MAX_BODY_LINES = 40

# A `/* ... */` block, or a run of two or more `//` lines (C++ code documents functions so).
_DOC_COMMENT = re.compile(r"/\*(?:(?!\*/).){" + str(MIN_DOC_CHARS) + r",}?\*/"
                          r"|(?:[ \t]*//[^\n]*\n){2,}[ \t]*//[^\n]*", re.S)
_WORDS = re.compile(r"[A-Za-z]{3,}")
# After the doc comment: annotations/decorator lines, then one signature ending in "{".
_SIGNATURE = re.compile(r"\s*\n((?:[ \t]*@[\w.]+(?:\([^)\n]*\))?[ \t]*\n)*"
                        r"[ \t]*[^\n;{}()=]*\w[ \t]*\([^;{}]*\)[^;{}()\n]*\{)[ \t]*\n")
_CONTROL = re.compile(r"^\s*(if|for|while|switch|catch|return|else|do|try)\b")


@dataclass(frozen=True)
class Task:
    language: str
    name: str  # document name and position: stable, for dedup and reports
    prompt: str  # signature + docstring (doc comment + signature), ends with a newline
    body: str  # the real body (used only to filter: long enough, not too long)


def extract_tasks(doc: Document, language: str) -> list[Task]:
    """The documented functions of one document, as task prompts."""
    if language == "python":
        return _python_tasks(doc)
    if language in ("java", "cpp", "javascript"):
        return _brace_tasks(doc, language)
    return []


def sample_tasks(docs: list[Document], language: str, count: int, seed: int) -> list[Task]:
    """`count` tasks (or all there are) from `docs`, seeded, at most 2 per document so that one
    big file does not dominate."""
    rng = random.Random(seed)
    order = list(docs)
    rng.shuffle(order)
    picked: list[Task] = []
    for doc in order:
        found = extract_tasks(doc, language)
        rng.shuffle(found)
        picked += found[:2]
        if len(picked) >= count:
            break
    return picked[:count]


def _python_tasks(doc: Document) -> list[Task]:
    try:
        tree = ast.parse(doc.text)
    except (SyntaxError, ValueError):
        return []
    lines = doc.text.splitlines(keepends=True)
    tasks = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or node.decorator_list:
            continue
        doc_node = node.body[0] if node.body else None
        docstring = ast.get_docstring(node)
        if (docstring is None or len(docstring) < MIN_DOC_CHARS or len(node.body) < 2
                or doc_node.end_lineno is None or node.end_lineno is None):
            continue
        prompt = textwrap.dedent("".join(lines[node.lineno - 1:doc_node.end_lineno]))
        body = "".join(lines[doc_node.end_lineno:node.end_lineno])
        if _acceptable(prompt, body):
            tasks.append(Task("python", f"{doc.name}:{node.lineno}", prompt, body))
    return tasks


def _brace_tasks(doc: Document, language: str) -> list[Task]:
    text = doc.text
    tasks = []
    for m in _DOC_COMMENT.finditer(text):
        sig = _SIGNATURE.match(text, m.end())
        if (sig is None or _CONTROL.match(sig.group(1).splitlines()[-1])
                or len(_WORDS.findall(m.group())) < 5):  # banners and separators say nothing
            continue
        body_end = _matching_brace(text, sig.end(1) - 1)
        if body_end is None:
            continue
        line_start = text.rfind("\n", 0, m.start()) + 1
        indent = text[line_start:m.start()]
        if indent.strip():
            continue  # the comment shares its line with code
        prompt = textwrap.dedent(indent + text[m.start():sig.end()])
        body = text[sig.end():body_end + 1]
        if _acceptable(prompt, body):
            line = text.count("\n", 0, m.start()) + 1
            tasks.append(Task(language, f"{doc.name}:{line}", prompt, body))
    return tasks


def _matching_brace(text: str, open_at: int) -> int | None:
    """Index of the `}` closing the `{` at `open_at`, skipping strings and comments roughly."""
    depth, i, n = 0, open_at, len(text)
    while i < n:
        c = text[i]
        if c in "\"'`":
            end = text.find(c, i + 1)
            while end > 0 and text[end - 1] == "\\":
                end = text.find(c, end + 1)
            if end < 0 or "\n" in text[i:end] and c != "`":
                i += 1  # an apostrophe in a comment or a char literal we cannot parse
                continue
            i = end + 1
            continue
        if text.startswith("//", i):
            nl = text.find("\n", i)
            i = n if nl < 0 else nl
            continue
        if text.startswith("/*", i):
            close = text.find("*/", i + 2)
            i = n if close < 0 else close + 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def _acceptable(prompt: str, body: str) -> bool:
    lines = [x for x in body.splitlines() if x.strip()]
    return (len(prompt) <= MAX_PROMPT_CHARS
            and MIN_BODY_LINES <= len(lines) <= MAX_BODY_LINES)


def end_of_body(language: str, prompt: str, completion: str) -> str:
    """The completion cut where the function the prompt opened ends (Python: the first
    non-blank line indented no deeper than the `def`; braces: after the `}` that closes the
    prompt's last `{`), or whole if it never ends."""
    if language == "python":
        def_line = next((x for x in prompt.splitlines() if x.lstrip().startswith(
            ("def ", "async def "))), "")
        indent = len(def_line) - len(def_line.lstrip())
        out, pos = [], 0
        for line in completion.splitlines(keepends=True):
            if line.strip() and len(line) - len(line.lstrip()) <= indent and pos > 0:
                break
            out.append(line)
            pos += 1
        return "".join(out)
    end = _matching_brace("{" + completion, 0)  # an index in completion, one past its "}"
    return completion if end is None else completion[:end]
