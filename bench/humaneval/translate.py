"""Render an analysed HumanEval problem (analyze.Spec) as a Java, C++ or JavaScript problem: the
prompt the model continues (imports, the docstring as comments with its `>>>` examples rewritten
in the language, the typed signature) and the tests (one assertion per case).

Types: int -> long, float -> double, str, bool, list -> ArrayList / std::vector / array,
dict -> HashMap / std::map / object, pair -> org.javatuples.Pair / std::tuple / array,
optional -> Optional / std::optional / undefined. A value the language cannot hold the same way
(an int beyond 64 bits, or 2**53 in JavaScript; text whose length differs there) makes the
problem untranslatable for that language.

A program is prompt + completion (cut at the first stop sequence) + tests; the tests start by
closing the function (and, for Java, the class) the prompt opened.
"""

from __future__ import annotations

import ast
import json
import re

from submodel.bench.humaneval.analyze import Spec, Ty, Untranslatable, coerce

INT64 = 2**63
JS_SAFE = 2**53


def camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(p[:1].upper() + p[1:] for p in rest)


def float_literal(v: float) -> str:
    text = repr(float(v))
    return text if any(c in text for c in ".en") else text + ".0"


class Target:
    """What each language defines: names, types, values, and the shape of prompt and tests."""

    language: str
    stop: tuple[str, ...]
    reserved: frozenset[str] = frozenset()

    def function_name(self, name: str) -> str:
        return name

    def param_name(self, name: str) -> str:
        return name + "_" if name in self.reserved else name

    def type(self, t: Ty) -> str:
        raise NotImplementedError

    def value(self, v: object, t: Ty) -> str:
        raise NotImplementedError

    def call(self, spec: Spec, args: tuple) -> str:
        rendered = (self.value(a, t) for a, (_, t) in zip(args, spec.params, strict=True))
        return f"{self.function_name(spec.name)}({', '.join(rendered)})"

    def prompt(self, spec: Spec) -> str:
        raise NotImplementedError

    def tests(self, spec: Spec) -> str:
        raise NotImplementedError

    def stub_body(self, spec: Spec) -> str:
        """A body that compiles and returns some value of the return type (for checking that
        the tests compile)."""
        raise NotImplementedError

    def _check_int(self, v: int) -> None:
        if not -INT64 < v < INT64:
            raise Untranslatable(f"{self.language}: {v} does not fit in 64 bits")

    def doc_comment(self, spec: Spec, prefix: str) -> str:
        lines = [prefix + line if line else prefix.rstrip() for line in self.doc_lines(spec)]
        return "\n".join(lines) + "\n"

    def doc_lines(self, spec: Spec) -> list[str]:
        """The docstring with the function's name as the language spells it and each `>>>`
        example (call, then expected output) written in the language where it parses."""
        lines = spec.doc.splitlines()
        name = self.function_name(spec.name)
        out: list[str] = []
        i = 0
        while i < len(lines):
            line = lines[i]
            body = line.lstrip()
            if body.startswith(">>>"):
                j = i + 1
                while j < len(lines) and lines[j].strip() \
                        and not lines[j].lstrip().startswith(">>>"):
                    j += 1
                example = self._doctest(spec, body[3:].strip(), " ".join(lines[i + 1:j]).strip())
                if example is not None:
                    indent = line[: len(line) - len(body)]
                    out += [f"{indent}>>> {example[0]}", indent + example[1]]
                    i = j
                    continue
            out.append(self._example_line(spec, line)
                       or re.sub(rf"\b{re.escape(spec.name)}\b", name, line))
            i += 1
        return out

    def _example_line(self, spec: Spec, line: str) -> str | None:
        """An inline example such as `f([1, 2]) == 3` or `f("a") ➞ "b"`, in the language."""
        m = re.match(rf"(\s*)({re.escape(spec.name)}\(.*\))\s*(==>|==|➞|->|=>)\s*(.+?)\s*$",
                     line)
        example = m and self._doctest(spec, m[2], m[4])
        return f"{m[1]}{example[0]} {m[3]} {example[1]}" if example else None

    def _doctest(self, spec: Spec, call: str, result: str) -> tuple[str, str] | None:
        try:
            node = ast.parse(call, mode="eval").body
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id == spec.name and len(node.args) == len(spec.params)
                    and not node.keywords):
                return None
            args = tuple(coerce(ast.literal_eval(a), t)
                         for a, (_, t) in zip(node.args, spec.params, strict=True))
            # doctest prints nothing for None
            expected = coerce(ast.literal_eval(result) if result else None, spec.returns)
            return self.call(spec, args), self.value(expected, spec.returns)
        except (Untranslatable, ValueError, SyntaxError, TypeError):
            return None

    def signature_params(self, spec: Spec) -> str:
        return ", ".join(f"{self.type(t)} {self.param_name(n)}" for n, t in spec.params)


def _escape(s: str, quote: str = '"') -> str:
    """C-family string body: named escapes, octal for other control characters (Java reads
    \\u escapes before lexing, so those must not be used for control characters)."""
    named = {"\\": "\\\\", quote: "\\" + quote, "\n": "\\n", "\t": "\\t", "\r": "\\r"}
    return "".join(named.get(c) or (f"\\{ord(c):03o}" if ord(c) < 32 or ord(c) == 127 else c)
                   for c in s)


class Java(Target):
    language = "java"
    stop = ("\n    }\n",)
    reserved = frozenset("""abstract assert boolean break byte case catch char class const continue
        default do double else enum extends final finally float for goto if implements import
        instanceof int interface long native new package private protected public return short
        static strictfp super switch synchronized this throw throws transient try void volatile
        while var record yield true false null""".split())
    _primitive = {"int": "long", "float": "double", "bool": "boolean", "str": "String"}
    _boxed = {"int": "Long", "float": "Double", "bool": "Boolean", "str": "String"}

    def function_name(self, name: str) -> str:
        return camel(name)

    def type(self, t: Ty, boxed: bool = False) -> str:
        if t.kind in self._primitive:
            return (self._boxed if boxed else self._primitive)[t.kind]
        inner = ", ".join(self.type(a, boxed=True) for a in t.args)
        return {"list": "ArrayList", "dict": "HashMap", "pair": "Pair",
                "optional": "Optional"}[t.kind] + f"<{inner}>"

    def value(self, v: object, t: Ty) -> str:
        k = t.kind
        if k == "int":
            self._check_int(v)
            return f"{v}L"
        if k == "float":
            return float_literal(v)
        if k == "bool":
            return "true" if v else "false"
        if k == "str":
            if any(ord(c) > 0xFFFF for c in v):
                raise Untranslatable("java: text outside the basic multilingual plane")
            return f'"{_escape(v)}"'
        if k == "list":
            items = ", ".join(self.value(x, t.args[0]) for x in v)
            args = f"Arrays.asList({items})" if v else ""
            return f"new {self.type(t)}({args})"
        if k == "dict":
            entries = ", ".join(f"Map.entry({self.value(a, t.args[0])}, {self.value(b, t.args[1])})"
                                for a, b in v.items())
            return f"new {self.type(t)}({f'Map.ofEntries({entries})' if v else ''})"
        if k == "pair":
            return f"Pair.with({self.value(v[0], t.args[0])}, {self.value(v[1], t.args[1])})"
        if k == "optional":
            return "Optional.empty()" if v is None else f"Optional.of({self.value(v, t.args[0])})"
        raise Untranslatable(f"java: type {t}")

    def _uses_pair(self, spec: Spec) -> bool:
        types = [t for _, t in spec.params] + [spec.returns]
        return any("pair" in str(t) for t in types)

    def prompt(self, spec: Spec) -> str:
        imports = ["java.util.*", "java.util.stream.*", "java.math.*", "java.security.*"]
        if self._uses_pair(spec):
            imports.append("org.javatuples.*")
        head = "".join(f"import {i};\n" for i in imports)
        return (f"{head}\nclass Problem {{\n{self.doc_comment(spec, '    // ')}"
                f"    public static {self.type(spec.returns)} {self.function_name(spec.name)}"
                f"({self.signature_params(spec)}) {{\n")

    def tests(self, spec: Spec) -> str:
        checks = []
        for n, case in enumerate(spec.cases, 1):
            got = "Problem." + self.call(spec, case.args)
            want = self.value(case.expected, spec.returns)
            if case.tol is not None:
                ok = f"Math.abs({got} - {want}) < {float_literal(case.tol)}"
            elif spec.returns.kind in self._primitive and spec.returns.kind != "str":
                ok = f"{got} == {want}"
            else:
                ok = f"Objects.equals({got}, {want})"
            checks.append(f'        if (!({ok})) throw new AssertionError("case {n}");\n')
        return ("\n    }\n}\n\nclass Main {\n    public static void main(String[] args) {\n"
                + "".join(checks) + "    }\n}\n")

    def stub_body(self, spec: Spec) -> str:
        default = {"int": "0L", "float": "0.0", "bool": "false"}.get(spec.returns.kind, "null")
        return f"        return {default};"


class Cpp(Target):
    language = "cpp"
    stop = ("\n}",)
    reserved = frozenset("""alignas alignof and and_eq asm auto bitand bitor bool break case catch
        char class compl const constexpr const_cast continue decltype default delete do double
        dynamic_cast else enum explicit export extern false float for friend goto if inline int
        long mutable namespace new noexcept not not_eq nullptr operator or or_eq private protected
        public register reinterpret_cast return short signed sizeof static static_assert
        static_cast struct switch template this thread_local throw true try typedef typeid
        typename union unsigned using virtual void volatile wchar_t while xor xor_eq""".split())
    _scalar = {"int": "long", "float": "double", "bool": "bool", "str": "std::string"}

    def type(self, t: Ty) -> str:
        if t.kind in self._scalar:
            return self._scalar[t.kind]
        inner = ", ".join(self.type(a) for a in t.args)
        return {"list": "std::vector", "dict": "std::map", "pair": "std::tuple",
                "optional": "std::optional"}[t.kind] + f"<{inner}>"

    def value(self, v: object, t: Ty) -> str:
        k = t.kind
        if k == "int":
            self._check_int(v)
            return str(v)
        if k == "float":
            return float_literal(v)
        if k == "bool":
            return "true" if v else "false"
        if k == "str":
            if not v.isascii():
                raise Untranslatable("cpp: non-ASCII text (std::string counts bytes)")
            return f'std::string("{_escape(v)}")'
        if k == "list":
            return f"{self.type(t)}({{{', '.join(self.value(x, t.args[0]) for x in v)}}})"
        if k == "dict":
            entries = ", ".join(f"{{{self.value(a, t.args[0])}, {self.value(b, t.args[1])}}}"
                                for a, b in v.items())
            return f"{self.type(t)}({{{entries}}})"
        if k == "pair":
            return f"{self.type(t)}({self.value(v[0], t.args[0])}, {self.value(v[1], t.args[1])})"
        if k == "optional":
            return "std::nullopt" if v is None else f"{self.type(t)}({self.value(v, t.args[0])})"
        raise Untranslatable(f"cpp: type {t}")

    def prompt(self, spec: Spec) -> str:
        return (f"#include <bits/stdc++.h>\n{self.doc_comment(spec, '// ')}"
                f"{self.type(spec.returns)} {spec.name}({self.signature_params(spec)}) {{\n")

    def tests(self, spec: Spec) -> str:
        checks = []
        for case in spec.cases:
            got = self.call(spec, case.args)  # called by name: C library functions may share it
            want = self.value(case.expected, spec.returns)
            ok = (f"std::abs({got} - {want}) < {float_literal(case.tol)}" if case.tol is not None
                  else f"{got} == {want}")
            checks.append(f"    assert(({ok}));\n")
        return "\n}\n\nint main() {\n" + "".join(checks) + "    return 0;\n}\n"

    def stub_body(self, spec: Spec) -> str:
        return "    return {};"


class JavaScript(Target):
    language = "javascript"
    stop = ("\n}",)
    reserved = frozenset("""await break case catch class const continue debugger default delete do
        else enum export extends false finally for function if implements import in instanceof
        interface let new null package private protected public return static super switch this
        throw true try typeof var void while with yield arguments eval""".split())
    # Deep equality where undefined and null both stand for Python's None.
    _same = ("  const same = (a, b) => {\n"
             "    if (a === b || (a == null && b == null)) return true;\n"
             "    if (Array.isArray(a) || Array.isArray(b)) {\n"
             "      return Array.isArray(a) && Array.isArray(b) && a.length === b.length &&\n"
             "        a.every((x, i) => same(x, b[i]));\n"
             "    }\n"
             "    if (a && b && typeof a === \"object\" && typeof b === \"object\") {\n"
             "      const ka = Object.keys(a);\n"
             "      return ka.length === Object.keys(b).length &&\n"
             "        ka.every((k) => Object.hasOwn(b, k) && same(a[k], b[k]));\n"
             "    }\n"
             "    return false;\n"
             "  };\n")

    def function_name(self, name: str) -> str:
        return camel(name)

    def type(self, t: Ty) -> str:
        return str(t)  # untyped: only used in messages

    def value(self, v: object, t: Ty) -> str:
        k = t.kind
        if k == "int":
            if not -JS_SAFE < v < JS_SAFE:
                raise Untranslatable(f"javascript: {v} is not a safe integer")
            return str(v)
        if k == "float":
            return float_literal(v)
        if k == "bool":
            return "true" if v else "false"
        if k == "str":
            if any(ord(c) > 0xFFFF for c in v):
                raise Untranslatable("javascript: text outside the basic multilingual plane")
            return json.dumps(v)
        if k in ("list", "pair"):
            types = t.args if k == "pair" else [t.args[0]] * len(v)
            return f"[{', '.join(self.value(x, s) for x, s in zip(v, types, strict=True))}]"
        if k == "dict":
            if t.args[0].kind != "str":
                raise Untranslatable("javascript: object keys must be strings")
            entries = ", ".join(f"{json.dumps(a)}: {self.value(b, t.args[1])}"
                                for a, b in v.items())
            return f"{{{entries}}}"
        if k == "optional":
            return "undefined" if v is None else self.value(v, t.args[0])
        raise Untranslatable(f"javascript: type {t}")

    def prompt(self, spec: Spec) -> str:
        params = ", ".join(self.param_name(n) for n, _ in spec.params)
        return (f"{self.doc_comment(spec, '// ')}"
                f"function {self.function_name(spec.name)}({params}){{\n")

    def tests(self, spec: Spec) -> str:
        checks = []
        for n, case in enumerate(spec.cases, 1):
            got = self.call(spec, case.args)
            want = self.value(case.expected, spec.returns)
            ok = (f"Math.abs({got} - {want}) < {float_literal(case.tol)}" if case.tol is not None
                  else f"same({got}, {want})")
            checks.append(f'  assert.ok({ok}, "case {n}");\n')
        return ("\n}\n\n(function () {\n  const assert = require(\"node:assert\");\n"
                + self._same + "".join(checks) + "})();\n")

    def stub_body(self, spec: Spec) -> str:
        return "  return undefined;"


TARGETS: dict[str, Target] = {t.language: t for t in (Java(), Cpp(), JavaScript())}
