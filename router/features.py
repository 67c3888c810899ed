"""Text -> sparse features for the content detector; the trainer and the router share this code.

A snippet becomes a bag of strings: raw tokens (identifiers, keywords, operators), a shape for
every identifier (snake_case, camelCase...), and bigrams/trigrams plus line-start and line-end
tokens over an abstract alphabet in which only the model's `keep` words stay themselves and every
other identifier becomes its shape. So `def parse_args(self):` yields `def ~snake`, `^def`, `$:`
and `( self )` whatever the function is called. The syntactic cues (`public class`, `#include`,
`std::`, `=>`, `console.log`, `self.`) are such n-grams, plus a few whole-line patterns (CUES);
all their weights are learned, none is hand-set. Each line also gives its indentation (tabs, 2 or
4 spaces) and its step from the line before: house styles differ by language (gofmt, PEP 8,
prettier), and they are all a one-line snippet has besides its few tokens.

String literals and comments are reduced to markers: their words are data and prose, alike in
every language, and would only teach the detector the vocabulary of its training corpora.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

# One line of code. Strings and comments first, each one token, then words, numbers, operators
# (longest first) and any other single character.
CODE = re.compile(
    r'"""(?:.*?""")?' r"|'''(?:.*?''')?"  # triple-quoted, closed on this line or not
    r'|"(?:[^"\\]|\\.)*"' r"|'(?:[^'\\]|\\.)*'" r"|`(?:[^`\\]|\\.)*`?"
    r"|/\*(?:.*?\*/)?|//.*|#(?=[\s#]|$).*"
    r"|[A-Za-z_$][A-Za-z0-9_$]*|\d[\w.]*|\.\.\.|===|!==|<<=|>>=|\*\*=|//=|::|->|=>|==|!="
    r"|<=|>=|&&|\|\||\+\+|--|<<|>>|\*\*|\*/|\+=|-=|\*=|/=|%=|&=|\|=|\^=|:=|\?\?|\?\.|[^\w\s]"
)
# What survives of comment and docstring text: doc tags (@param, {@code, \brief, :returns), HTML
# tags (javadoc's <p>) and doctest prompts.
TAG = re.compile(r"(?<![\w@\\:])[@\\:][A-Za-z]\w*|\{@\w*|</?[A-Za-z]\w*(?=[\s>/])|^\s*>>>")
COMMENT_MARKERS = frozenset(("//c", "///c", "#c", "/*c", "*c", '"""c', "`c"))
NON_CODE = COMMENT_MARKERS | {'"""', "'''"}
OPENERS = frozenset(("return", "yield", "print", "in", "else", "and", "or", "not"))
MAX_STRING_WORD = 16  # a string literal this short also shows its content ('use strict')
# Whole-text patterns that tokens see only in pieces; each match is one more feature `cue:NAME`
# whose weight is learned like any other. A header without `.h` (or with `++`) is C++ only.
CUES = tuple((name, re.compile(pattern, re.M)) for name, pattern in (
    ("cxx_header", r"^\s*#\s*include\s*<(?:[\w/]+|[^>\n]*\+\+[^>\n]*)>"),
    ("c_header", r"^\s*#\s*include\s*<[\w/]+\.h>"),
    ("local_header", r'^\s*#\s*include\s*"[^"\n]+"'),
    ("esm_import", r"^\s*import\s+(?:[\w$]+|\{[^}\n]*\}|\*\s+as\s+[\w$]+)"
                   r"(?:\s*,\s*(?:\{[^}\n]*\}|[\w$]+))?\s+from\s+['\"]"),
    ("esm_export", r"^\s*export\s+(?:default|const|let|var|function|class|async|\{)"),
    ("py_def", r"^\s*(?:async\s+)?def\s+\w+\s*\(.*\)\s*(?:->\s*[^:]+)?:\s*$"),
    ("py_block", r"^\s*(?:if|elif|else|for|while|try|except|finally|with)\b[^;{}]*:\s*$"),
    ("shebang_python", r"\A#!.*\bpython"),
    ("shebang_node", r"\A#!.*\bnode\b"),
    ("shebang_shell", r"\A#!.*\b(?:ba|da|k|z)?sh\b"),
))
SPECIAL = frozenset("\"'`/#")
BEFORE_LINE_COMMENT = frozenset((";", "{", "}", ","))  # `x // y` elsewhere is Python division
MAX_CHARS = 4096  # longer texts: the first and last half of this many characters


def shape(word: str) -> str:
    """A coarse class for an identifier or number: what naming convention it follows."""
    if word[0].isdigit():
        return "~num"
    if "$" in word:
        return "~dollar"
    if word.startswith("__") and word.endswith("__") and len(word) > 4:
        return "~dunder"
    core = word.strip("_")
    lead = "_" if word.startswith("_") else ""
    if not core:
        return "~under"
    if core.isupper() or core.isdigit():
        kind = "upper" if len(core) > 1 else "cap1"
    elif "_" in core:
        kind = "mixsnake" if any(c.isupper() for c in core) else "snake"
    elif core[0].isupper():
        kind = "pascal" if any(c.islower() for c in core) else "upper"
    elif any(c.isupper() for c in core):
        kind = "camel"
    else:
        kind = "lower" if len(core) > 1 else "low1"
    return f"~{lead}{kind}"


def _comment(marker: str, text: str) -> list[str]:
    return [marker, *(t.strip() for t in TAG.findall(text))]


def _code(line: str, tokens: list[str]) -> str | None:
    """Append the tokens of one code line; return the closing delimiter of a string or comment
    that the line leaves open, if any."""
    for tok in CODE.findall(line):
        if tok[0] not in SPECIAL or tok in ("/", "'", '"'):
            tokens.append(tok)
        elif tok[:3] in ('"""', "'''"):
            closed = len(tok) >= 6 and tok.endswith(tok[:3])
            tokens.append(tok[:3] + ("s" if closed else ""))
            if not closed:
                return tok[:3]
        elif tok[0] == "'" and len(tok) <= 4:
            tokens.append("'c")  # a character, or a one-character string
        elif tok[0] in "\"'":
            short = 2 < len(tok) <= MAX_STRING_WORD + 2
            tokens.append(tok[0] + ("s=" + tok[1:-1] if short else "s"))
        elif tok[0] == "`":
            closed = len(tok) >= 2 and tok.endswith("`")
            tokens.append("`s" if closed else "`")
            if not closed:
                return "`"
        elif tok[:2] == "/*":
            tokens += _comment("/*c", tok)
            if len(tok) < 4 or not tok.endswith("*/"):
                return "*/"
        elif tok[0] == "#":
            tokens += _comment("#c", tok)
        elif tok[:2] == "//" and (not tokens or tokens[-1] in BEFORE_LINE_COMMENT):
            tokens += _comment("///c" if tok[2:3] in ("/", "!") else "//c", tok)  # doc comment
        elif tok[:2] == "//":
            tokens.append("//")
            return _code(tok[2:], tokens)
        else:
            tokens.append(tok)
    return None


def _cap(text: str) -> str:
    if len(text) <= MAX_CHARS:
        return text
    half = MAX_CHARS // 2
    return text[:half] + "\n" + text[-half:]


def tokenize(text: str) -> list[list[str]]:
    """Tokens per non-blank line of `text` (capped at MAX_CHARS characters)."""
    return [tokens for tokens in scan(_cap(text))[0] if tokens]


def code_lines(text: str) -> list[bool]:
    """For each line of `text`: does it hold code (not only comment, docstring or blank)?"""
    return [any(t not in NON_CODE and not _is_tag(t) for t in tokens)
            for tokens in scan(text)[0]]


def _is_tag(token: str) -> bool:
    """Tags come only from comments: code yields `@`, `:`, `<` as tokens of their own."""
    return token == ">>>" or (len(token) > 1 and token[0] in "@\\:{<"
                              and (token[1].isalpha() or token[1] in "@/"))


def _find_closing(line: str, delimiter: str) -> int:
    """Where `delimiter` first occurs in `line` not escaped by a backslash, or -1."""
    at = line.find(delimiter)
    while at > 0 and line[at - 1] == "\\":
        at = line.find(delimiter, at + 1)
    return at


def _open_at_start(lines: list[str]) -> str | None:
    """The delimiter of a Python docstring or JavaScript template literal that `lines` begin
    inside of, if they seem to: a window cut from a file may start in the middle of one.

    Judged from the first line with an unbalanced triple quote or backtick: it closes one if
    prose stands before it (`the end.` then the quotes), if code punctuation follows it (`),`),
    or if it stands alone and the line before (comments aside) is neither absent nor a
    `def`/`class` header, an open bracket or an assignment.
    """
    for i, line in enumerate(lines):
        for quote in ('"""', "'''", "`"):
            if (line.count(quote) - line.count("\\" + quote)) % 2 == 0:
                continue
            at = _find_closing(line, quote)
            before, after = line[:at].strip(), line[at + len(quote):].strip()
            if before:
                opening = before[-1] in "=([{,:+%?" or before[-1].isalnum() and (
                    line[at - 1].isalnum() or before.split()[-1] in OPENERS)
                return None if opening else quote
            if after:
                return quote if after[0] in "),]};." else None
            previous = next((p for p in map(str.strip, reversed(lines[:i]))
                             if p and not p.startswith(("#", "//"))), "")
            return None if not previous or previous[-1] in ":([{,=" else quote
    return None


def scan(text: str) -> tuple[list[list[str]], list[bool]]:
    """Tokens of every line of `text` (empty for a blank one), and whether each line begins
    inside a comment, docstring or string left open by an earlier line.

    Strings become one token each (`"s`, `'s`, `'c` for a character, `` `s ``; a short one
    `'s=content`), and a comment or docstring line one marker (`//c`, `#c`, `/*c`, `*c`, `\"\"\"c`,
    `` `c ``) plus its tags.
    """
    lines, opened = [], []
    text_lines = text.splitlines()
    # the closing delimiter of an open comment or string
    state = _open_at_start(text_lines) if ('"""' in text or "'''" in text or "`" in text) else None
    for line in text_lines:
        tokens: list[str] = []
        opened.append(state is not None)
        stripped = line.lstrip()
        if state is None and stripped[:1] == "*" and stripped[1:2] in ("", " ", "\t", "/"):
            # `* text`: a line of a block comment whose opening is not in the text (just this
            # line: in Python it may be `* factor)` continuing an expression)
            end = line.find("*/")
            tokens += _comment("*c", line if end < 0 else line[:end])
            line = "" if end < 0 else line[end + 2:]
        elif state is not None:
            end = _find_closing(line, state)
            marker = {"*/": "*c", "`": "`c"}.get(state, '"""c')
            tokens += _comment(marker, line if end < 0 else line[:end])
            if end < 0:
                lines.append(tokens)
                continue
            line, state = line[end + len(state):], None
        state = _code(line, tokens)
        lines.append(tokens)
    return lines, opened


def indent(line: str, width: int) -> str:
    """How a line is indented: tabs (gofmt, the kernel), a multiple of 4 or of 2 spaces (PEP 8
    and Java versus prettier and Google C++ styles), or an odd width (continuation lines)."""
    if width == 0:
        return "ind:0"
    if line[0] == "\t":
        return "ind:tab"
    return "ind:4" if width % 4 == 0 else "ind:2" if width % 2 == 0 else "ind:odd"


def features(text: str, keep: frozenset[str], cache: dict[str, str]) -> list[str]:
    """The feature strings of `text`, with repeats (the caller counts them).

    `keep` is the set of words that stay themselves in n-grams; `cache` memoizes the abstract
    form of each token (pass the same dict on every call; it stops growing at 200,000 entries).
    """
    text = _cap(text)
    out = [f"cue:{name}" for name, pattern in CUES for _ in pattern.findall(text)]
    prev2 = prev1 = "\n"
    depth = None
    for line, tokens in zip(text.splitlines(), scan(text)[0], strict=True):
        if not tokens:
            continue
        width = len(line) - len(line.lstrip())
        out.append(indent(line, width))
        if depth is not None:
            out.append(f"dind:{max(-8, min(8, width - depth)):+d}")
        depth = width
        if tokens[0] in COMMENT_MARKERS and all(_is_tag(t) for t in tokens[1:]):
            # a comment line: its marker and tags, no n-grams (comment layout is house style)
            out += tokens
            out.append("^" + tokens[0])
            prev2 = prev1 = "\n"
            continue
        first = True
        for tok in tokens:
            sym = cache.get(tok)
            if sym is None:
                c = tok[0]
                if c.isalnum() or c in "_$":
                    sym = tok if tok in keep else shape(tok)
                else:  # `'s=use strict` is `'s` in n-grams
                    sym = tok[:2] if tok[1:3] == "s=" else tok
                if len(cache) < 200_000:
                    cache[tok] = sym
            out.append(tok)
            if sym != tok:
                out.append(sym)
            if first:
                out.append("^" + sym)
                first = False
            out.append(prev1 + " " + sym)
            out.append(prev2 + " " + prev1 + " " + sym)
            prev2, prev1 = prev1, sym
        out.append("$" + prev1)
        out.append(prev1 + " \n")
        prev2, prev1 = prev1, "\n"
    return out


def count(text: str, keep: frozenset[str], cache: dict[str, str]) -> Counter[str]:
    """How often each feature occurs in `text`."""
    return Counter(features(text, keep, cache))


def tf(counts: np.ndarray) -> np.ndarray:
    """A feature's input value from its count: sublinear, so one repeated token cannot dominate."""
    return np.log1p(counts)
