"""Read a HumanEval Python problem into a language-neutral spec: the function's name, typed
parameters and return type, its docstring, and its test cases as (arguments, expected) values.

Follows the MultiPL-E method: types come from the Python hints, completed from the values the tests
pass and expect; only `assert candidate(...) == value` style tests translate (plus the approximate
`abs(candidate(...) - value) < tol`); anything else makes the problem untranslatable, and it is
skipped and counted rather than faked. One check of our own: the canonical solution must still pass
every case after the values are converted to the inferred types (an int passed where the type is
float becomes a float); if it does not, the typed translation changed the problem's meaning.
"""

from __future__ import annotations

import ast
import copy
import inspect
import math
import random
from dataclasses import dataclass


class Untranslatable(Exception):
    """The problem cannot be expressed faithfully in a typed target language."""


@dataclass(frozen=True)
class Ty:
    """A value type: int, float, str, bool, list, dict, pair, optional; during inference also
    none, unknown and tuple (a fixed-length tuple not yet decided to be a pair or a list)."""

    kind: str
    args: tuple[Ty, ...] = ()

    def __str__(self) -> str:
        return self.kind + (f"[{', '.join(map(str, self.args))}]" if self.args else "")


INT, FLOAT, STR, BOOL = Ty("int"), Ty("float"), Ty("str"), Ty("bool")
NONE, UNKNOWN = Ty("none"), Ty("unknown")
SCALARS = {"int": INT, "float": FLOAT, "str": STR, "bool": BOOL}


def list_of(t: Ty) -> Ty:
    return Ty("list", (t,))


def optional(t: Ty) -> Ty:
    return t if t.kind in ("optional", "none") else Ty("optional", (t,))


@dataclass(frozen=True)
class Case:
    args: tuple
    expected: object
    tol: float | None = None  # approximate: abs(result - expected) < tol


@dataclass(frozen=True)
class Spec:
    task_id: str
    name: str
    params: tuple[tuple[str, Ty], ...]
    returns: Ty
    doc: str
    cases: tuple[Case, ...]


# --- types from hints ---------------------------------------------------------------------

_GENERIC = {"List": "list", "list": "list", "Dict": "dict", "dict": "dict",
            "Tuple": "tuple", "tuple": "tuple", "Optional": "optional"}


def hint_type(node: ast.expr | None) -> Ty:
    """The type a Python annotation names; UNKNOWN where there is none or it is bare (`list`)."""
    if node is None:
        return UNKNOWN
    if isinstance(node, ast.Name):
        if node.id in SCALARS:
            return SCALARS[node.id]
        if node.id in ("list", "List"):
            return list_of(UNKNOWN)
        if node.id in ("dict", "Dict"):
            return Ty("dict", (UNKNOWN, UNKNOWN))
        if node.id in ("tuple", "Tuple"):
            return UNKNOWN
        raise Untranslatable(f"type hint {node.id}")
    if isinstance(node, ast.Constant) and node.value is None:
        return NONE
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
        kind = _GENERIC.get(node.value.id)
        items = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        if kind == "list" and len(items) == 1:
            return list_of(hint_type(items[0]))
        if kind == "dict" and len(items) == 2:
            return Ty("dict", (hint_type(items[0]), hint_type(items[1])))
        if kind == "optional" and len(items) == 1:
            return optional(hint_type(items[0]))
        if kind == "tuple":
            if len(items) == 2 and isinstance(items[1], ast.Constant) and items[1].value is ...:
                return list_of(hint_type(items[0]))
            return Ty("tuple", tuple(hint_type(i) for i in items))
    raise Untranslatable(f"type hint {ast.unparse(node)}")


# --- types from values --------------------------------------------------------------------

def value_type(v: object) -> Ty:
    if isinstance(v, bool):
        return BOOL
    if isinstance(v, int):
        return INT
    if isinstance(v, float):
        if not math.isfinite(v):
            raise Untranslatable("non-finite float")
        return FLOAT
    if isinstance(v, str):
        return STR
    if v is None:
        return NONE
    if isinstance(v, list):
        return list_of(unify_all(value_type(x) for x in v))
    if isinstance(v, tuple):
        return Ty("tuple", tuple(value_type(x) for x in v))
    if isinstance(v, dict):
        return Ty("dict", (unify_all(value_type(k) for k in v),
                           unify_all(value_type(x) for x in v.values())))
    raise Untranslatable(f"value of type {type(v).__name__}")


def unify_all(types) -> Ty:
    out = UNKNOWN
    for t in types:
        out = unify(out, t)
    return out


def _elements(t: Ty) -> Ty:
    """The element type of a list, or of a tuple read as a list."""
    return t.args[0] if t.kind == "list" else unify_all(t.args)


def unify(a: Ty, b: Ty) -> Ty:
    """The least type holding both (int and float join to float, None makes an optional)."""
    if a == b or b == UNKNOWN:
        return a
    if a == UNKNOWN:
        return b
    if {a.kind, b.kind} == {"int", "float"}:
        return FLOAT
    if a.kind == "none" or b.kind == "none":
        return optional(b if a.kind == "none" else a)
    if a.kind == "optional" or b.kind == "optional":
        inner = [t.args[0] if t.kind == "optional" else t for t in (a, b)]
        return optional(unify(*inner))
    if a.kind == b.kind == "dict":
        return Ty("dict", (unify(a.args[0], b.args[0]), unify(a.args[1], b.args[1])))
    if a.kind == b.kind == "tuple" and len(a.args) == len(b.args):
        return Ty("tuple", tuple(unify(x, y) for x, y in zip(a.args, b.args, strict=True)))
    if {a.kind, b.kind} <= {"list", "tuple"}:
        return list_of(unify(_elements(a), _elements(b)))
    raise Untranslatable(f"no common type for {a} and {b}")


def finalize(t: Ty) -> Ty:
    """Settle inference leftovers: 2-tuples become pairs, other tuples lists; fail on unknowns."""
    if t.kind in ("unknown", "none"):
        raise Untranslatable("a type the tests never pin down")
    if t.kind == "tuple":
        if len(t.args) == 2:
            return Ty("pair", tuple(finalize(x) for x in t.args))
        return list_of(finalize(unify_all(t.args)))
    return Ty(t.kind, tuple(finalize(x) for x in t.args))


def resolve(hint: Ty, observed: Ty) -> Ty:
    """The declared type, its unknown parts filled in from the values; the values must fit it."""
    if hint == UNKNOWN:
        return observed
    if observed == UNKNOWN or hint == observed:
        return hint
    if hint == FLOAT and observed == INT:
        return hint
    if hint.kind == "optional":
        inner = observed.args[0] if observed.kind == "optional" else observed
        return hint if observed == NONE else optional(resolve(hint.args[0], inner))
    if hint.kind == "list" and observed.kind in ("list", "tuple"):
        return list_of(resolve(hint.args[0], _elements(observed)))
    if hint.kind == observed.kind and len(hint.args) == len(observed.args):
        return Ty(hint.kind, tuple(resolve(h, o)
                                   for h, o in zip(hint.args, observed.args, strict=True)))
    raise Untranslatable(f"values of type {observed} for a parameter declared {hint}")


def coerce(v: object, t: Ty) -> object:
    """v as a value of type t (ints widened to floats, tuples as lists or pairs), or fail."""
    k = t.kind
    ok = {"int": isinstance(v, int) and not isinstance(v, bool),
          "float": isinstance(v, (int, float)) and not isinstance(v, bool),
          "str": isinstance(v, str), "bool": isinstance(v, bool)}
    if k in ok:
        if not ok[k]:
            raise Untranslatable(f"{v!r} is not a {k}")
        return float(v) if k == "float" else v
    if k == "optional":
        return None if v is None else coerce(v, t.args[0])
    if k == "list" and isinstance(v, (list, tuple)):
        return [coerce(x, t.args[0]) for x in v]
    if k == "pair" and isinstance(v, (list, tuple)) and len(v) == 2:
        return (coerce(v[0], t.args[0]), coerce(v[1], t.args[1]))
    if k == "dict" and isinstance(v, dict):
        return {coerce(a, t.args[0]): coerce(b, t.args[1]) for a, b in v.items()}
    raise Untranslatable(f"{v!r} is not a {t}")


# --- test cases ---------------------------------------------------------------------------

class _CaseRecorder(ast.NodeTransformer):
    """Turns each recognised assert of check() into a call `__case__(args, expected, tol)`;
    the check function then runs and records concrete values (loops and locals included)."""

    def __init__(self, entry_point: str) -> None:
        self.entry_point = entry_point

    def visit_Assert(self, node: ast.Assert) -> ast.stmt:
        found = self._match(node.test)
        if found is None:
            if _mentions(node.test, {"candidate", self.entry_point}):
                raise Untranslatable(f"test `{ast.unparse(node.test)[:80]}`")
            return node
        call, expected, tol = found
        if _mentions(expected, {"candidate", self.entry_point}):
            return ast.copy_location(ast.Pass(), node)  # compares the function with itself
        record = ast.Call(ast.Name("__case__", ast.Load()),
                          [ast.Tuple(call.args, ast.Load()), expected, tol], [])
        return ast.copy_location(ast.Expr(record), node)

    def _match(self, test: ast.expr):
        none = ast.Constant(None)
        if _is_candidate_call(test):
            return test, ast.Constant(True), none
        if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not) \
                and _is_candidate_call(test.operand):
            return test.operand, ast.Constant(False), none
        if not (isinstance(test, ast.Compare) and len(test.ops) == 1):
            return None
        left, op, right = test.left, test.ops[0], test.comparators[0]
        if isinstance(op, ast.Is) and _is_candidate_call(left) \
                and isinstance(right, ast.Constant) and isinstance(right.value, bool):
            return left, right, none
        if isinstance(op, ast.Eq):
            left, right = _strip_tuple(left), _strip_tuple(right)
            if _is_candidate_call(left):
                return left, right, none
            if _is_candidate_call(right):
                return right, left, none
        if isinstance(op, ast.Lt) and isinstance(left, ast.Call) and len(left.args) == 1 \
                and ast.unparse(left.func) in ("abs", "math.fabs") \
                and isinstance(left.args[0], ast.BinOp) and isinstance(left.args[0].op, ast.Sub) \
                and _is_candidate_call(left.args[0].left):
            return left.args[0].left, left.args[0].right, right
        return None


def _is_candidate_call(node: ast.expr) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id == "candidate" and not node.keywords
            and not any(isinstance(a, ast.Starred) for a in node.args))


def _strip_tuple(node: ast.expr) -> ast.expr:
    """`tuple(x) == tuple(y)` compares like x == y once sequences are typed."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
            and node.func.id == "tuple" and len(node.args) == 1:
        return node.args[0]
    return node


def _mentions(node: ast.AST, names: set[str]) -> bool:
    return any(isinstance(n, ast.Name) and n.id in names for n in ast.walk(node))


def extract_cases(test_code: str, entry_point: str, seed: int) -> list[Case]:
    """Run the (trusted) HumanEval test code with its asserts turned into recorders."""
    tree = ast.parse(test_code)
    checks = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"]
    if len(checks) != 1:
        raise Untranslatable("no check(candidate) function")
    _CaseRecorder(entry_point).visit(checks[0])
    ast.fix_missing_locations(tree)
    cases: list[Case] = []

    def record(args: tuple, expected: object, tol: float | None) -> None:
        cases.append(Case(copy.deepcopy(args), copy.deepcopy(expected), tol))

    def candidate(*_args):
        raise Untranslatable("the tests call the function outside an assert")

    namespace = {"__name__": "humaneval_test", "__case__": record}
    state = random.getstate()
    random.seed(seed)  # some tests draw random inputs: make them the same every load
    try:
        exec(compile(tree, "<humaneval test>", "exec"), namespace)  # trusted: bundled dataset
        namespace["check"](candidate)
    except Untranslatable:
        raise
    except Exception as e:  # any failure means the tests do not translate
        raise Untranslatable(f"test code failed: {type(e).__name__}: {e}") from e
    finally:
        random.setstate(state)
    if not cases:
        raise Untranslatable("no translatable assertion")
    return cases


# --- the whole problem --------------------------------------------------------------------

def _function(prompt: str, entry_point: str) -> tuple[ast.FunctionDef, str]:
    """The prompt's one function and its docstring; imports and constants around it are fine."""
    tree = ast.parse(prompt)
    defs = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    others = [n for n in tree.body if not (isinstance(n, (ast.FunctionDef, *_IMPORTS))
                                           or _is_constant_statement(n))]
    if len(defs) != 1 or defs[0].name != entry_point or others:
        raise Untranslatable("the prompt defines more than the one function")
    fn = defs[0]
    a = fn.args
    if a.vararg or a.kwarg or a.kwonlyargs or a.posonlyargs or a.defaults:
        raise Untranslatable("variadic or default parameters")
    docs = [n.value.value for n in fn.body if _is_constant_statement(n)]
    if len(docs) != 1 or not isinstance(docs[0], str) \
            or not all(isinstance(n, _IMPORTS) or _is_constant_statement(n) for n in fn.body):
        raise Untranslatable("the prompt has code besides the docstring")
    return fn, inspect.cleandoc(docs[0])


_IMPORTS = (ast.Import, ast.ImportFrom)


def _is_constant_statement(node: ast.stmt) -> bool:
    """A docstring, or a module constant such as HumanEval/64's `FIX = \"\"\"...\"\"\"`."""
    value = node.value if isinstance(node, (ast.Expr, ast.Assign)) else None
    return isinstance(value, ast.Constant)


def analyze(problem: dict, seed: int = 0) -> Spec:
    """A HumanEval record (task_id, prompt, test, entry_point, canonical_solution) as a Spec."""
    entry = problem["entry_point"]
    fn, doc = _function(problem["prompt"], entry)
    cases = extract_cases(problem["test"], entry, seed)
    names = [a.arg for a in fn.args.args]
    if any(len(c.args) != len(names) for c in cases):
        raise Untranslatable("a test passes the wrong number of arguments")
    params = []
    for i, arg in enumerate(fn.args.args):
        observed = unify_all(value_type(c.args[i]) for c in cases)
        params.append((arg.arg, finalize(resolve(hint_type(arg.annotation), observed))))
    observed = unify_all(FLOAT if c.tol is not None else value_type(c.expected) for c in cases)
    returns = finalize(resolve(hint_type(fn.returns), observed))
    typed = tuple(Case(tuple(coerce(v, t) for v, (_, t) in zip(c.args, params, strict=True)),
                       coerce(c.expected, returns), c.tol) for c in cases)
    _check_canonical(problem, typed, returns)
    return Spec(problem["task_id"], entry, tuple(params), returns,
                doc, typed)


def _check_canonical(problem: dict, cases: tuple[Case, ...], returns: Ty) -> None:
    namespace: dict = {"__name__": "humaneval_solution"}
    exec(problem["prompt"] + problem["canonical_solution"], namespace)  # trusted: dataset
    solution = namespace[problem["entry_point"]]
    for case in cases:
        try:
            got = solution(*copy.deepcopy(case.args))
            ok = (abs(got - case.expected) < case.tol if case.tol is not None
                  else coerce(got, returns) == case.expected)
        except Exception as e:
            raise Untranslatable(f"the canonical solution fails on typed values: {e}") from e
        if not ok:
            raise Untranslatable("the canonical solution fails once values are typed")
